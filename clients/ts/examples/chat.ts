// Sends one message and prints the streamed answer:
//   node dist/examples/chat.js [host:port] [message]      (ANTIPHON_API_KEY: the key, when auth is on)
import { Code, connect, ConnectError, TurnEnd_Reason } from "../src/index.js";

const [address = "127.0.0.1:50051", message = "Hello"] = process.argv.slice(2);
const client = connect(address, { apiKey: process.env.ANTIPHON_API_KEY });
try {
  for await (const ev of client.send(message)) {
    const { event } = ev;
    if (event.case === "agentText") process.stdout.write(event.value.delta);
    else if (event.case === "error") console.error(`\n[error ${event.value.code}] ${event.value.message}`);
    else if (event.case === "turnEnd") console.log(`\n[${TurnEnd_Reason[event.value.reason]}, ${event.value.usage?.outputTokens ?? 0} tokens]`);
  }
} catch (err) {
  const e = ConnectError.from(err);
  console.error(`${address}: ${Code[e.code]}: ${e.rawMessage}`);
  process.exitCode = 1;
} finally {
  client.close();
}

// Measures this client's round trips against a running server and prints them as JSON (µs): a Send's
// first event (session_started), and one message on an open Converse stream to the event it causes
// (an empty text, answered at once with an error event). bench/bench_clients.py runs it.
//   node dist/examples/bench.js [host:port] [n]
import { connect } from "../src/index.js";

const [address = "127.0.0.1:50051", count = "300"] = process.argv.slice(2);
const n = Number(count);
const warm = Math.floor(n / 10);
const client = connect(address);
const us = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1000;

const send: number[] = [];
for (let i = 0; i < warm + n; i++) {
  const t0 = process.hrtime.bigint();
  for await (const _ of client.send("Hello")) break; // the first event only: leaving the loop abandons the turn
  if (i >= warm) send.push(us(t0));
}

const conv = client.converse({});
const events = conv.events[Symbol.asyncIterator]();
await events.next(); // session_started
const stream: number[] = [];
for (let i = 0; i < warm + n; i++) {
  const t0 = process.hrtime.bigint();
  conv.say(" ");
  await events.next();
  if (i >= warm) stream.push(us(t0));
}
conv.end();
for (;;) if ((await events.next()).done) break;
client.close();
console.log(JSON.stringify({ send_first_event_us: send, converse_message_us: stream }));

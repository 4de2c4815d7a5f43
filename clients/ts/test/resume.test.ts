// The resuming conversation: the backoff's bounds, which failures it reconnects on, and its behaviour
// against a scripted in-process server (as the Python SDK's tests/unit/test_resume.py).
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";

import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import {
  Code,
  ConnectError,
  Conversation,
  DEFAULT_RECONNECT,
  TurnEnd_Reason,
  TurnLostError,
  connect,
  isReconnectable,
  reconnectDelayMs,
  resumingConversation,
  type AntiphonClient,
  type ResumingConversation,
  type ServerEvent,
} from "../src/index.js";

const FAST = { initialBackoffMs: 1, maxBackoffMs: 10, resumeWindowMs: 2000 };

test("the backoff is capped and jittered", () => {
  const policy = { ...DEFAULT_RECONNECT, initialBackoffMs: 100, maxBackoffMs: 1000, multiplier: 2, jitter: 0.5 };
  assert.equal(reconnectDelayMs(policy, 0, () => 0), 100);
  assert.equal(reconnectDelayMs(policy, 0, () => 1), 50);
  assert.equal(reconnectDelayMs(policy, 3, () => 0), 800);
  assert.equal(reconnectDelayMs(policy, 10, () => 0), 1000);
  assert.equal(reconnectDelayMs(policy, 10, () => 1), 500);
});

test("the default policy is the Python SDK's", () => {
  assert.deepEqual(
    { ...DEFAULT_RECONNECT },
    { maxAttempts: 8, initialBackoffMs: 50, maxBackoffMs: 1000, multiplier: 2, jitter: 0.5, resumeWindowMs: 5000 },
  );
});

test("which failures are reconnectable", () => {
  const yes = [
    new ConnectError("the server is shutting down", Code.Unavailable),
    new ConnectError("Received RST_STREAM with error code 2", Code.Internal),
    new ConnectError("http/2 stream closed with error code INTERNAL_ERROR (0x2)", Code.Internal),
    new ConnectError("Stream closed with error code NGHTTP2_INTERNAL_ERROR", Code.Internal),
    new ConnectError("Stream removed", Code.Unknown),
    new ConnectError("read ECONNRESET", Code.Unknown),
  ];
  const no = [
    new ConnectError("internal error in the turn", Code.Internal),
    new ConnectError("held", Code.FailedPrecondition),
    new ConnectError("deadline", Code.DeadlineExceeded),
    new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled),
  ];
  for (const err of yes) assert.ok(isReconnectable(err), err.message);
  for (const err of no) assert.ok(!isReconnectable(err), err.message);
  assert.ok(!isReconnectable(new Error("connection reset")), "not a ConnectError");
});

/**
 * Each Converse stream takes the next step: "ok" answers every text; "break:CODE" answers the first
 * text's start and then ends with CODE; "refuse:CODE" fails the session's start.
 */
class Scripted {
  steps: string[] = [];
  readonly sessionIds: string[] = [];
  lostTurn = "";

  routes = (router: ConnectRouter) =>
    router.service(Conversation, {
      converse: (requests) => this.converse(requests[Symbol.asyncIterator]()),
    });

  private async *converse(requests: AsyncIterator<{ event: { case: string | undefined; value?: unknown } }>) {
    const step = this.steps.shift() ?? "ok";
    const first = await requests.next();
    const config = first.done ? undefined : first.value.event;
    const sid = config?.case === "sessionConfig" ? (config.value as { sessionId: string }).sessionId : "";
    this.sessionIds.push(sid);
    const [kind, name = ""] = step.split(":");
    const code = Code[name as keyof typeof Code];
    if (kind === "refuse") throw new ConnectError("the session is held", code);
    const lostTurn = this.sessionIds.length > 1 ? this.lostTurn : "";
    yield { event: { case: "sessionStarted" as const, value: { sessionId: sid || "assigned", lostTurn } } };
    for (;;) {
      const next = await requests.next();
      if (next.done || next.value.event.case === "endOfInput") return;
      yield { turnId: "t", event: { case: "agentText" as const, value: { delta: "part" } } };
      if (kind === "break") throw new ConnectError("Received RST_STREAM with error code 2", code);
      yield { turnId: "t", event: { case: "turnEnd" as const, value: { reason: TurnEnd_Reason.COMPLETED } } };
    }
  }
}

async function drain(conv: ResumingConversation): Promise<ServerEvent[]> {
  const seen: ServerEvent[] = [];
  for await (const ev of conv.events()) seen.push(ev);
  return seen;
}

describe("a resuming conversation against a scripted server", () => {
  const scripted = new Scripted();
  let server: http2.Http2Server;
  let client: AntiphonClient;

  before(async () => {
    server = http2.createServer(connectNodeAdapter({ routes: scripted.routes }));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    client = connect(`127.0.0.1:${(server.address() as AddressInfo).port}`);
  });

  after(async () => {
    client.close();
    await new Promise((resolve) => server.close(resolve));
  });

  for (const code of ["Unavailable", "Internal"]) {
    test(`a break (${code}) resumes on the same session and reports the lost turn`, async () => {
      scripted.steps = [`break:${code}`];
      scripted.lostTurn = "tell me a story";
      scripted.sessionIds.length = 0;
      const conv = await resumingConversation(client, {}, { reconnect: FAST });
      assert.equal(conv.sessionId, "assigned");
      await assert.rejects(conv.turn("tell me a story"), (err: unknown) => {
        assert.ok(err instanceof TurnLostError, String(err));
        assert.equal(err.text, "tell me a story");
        assert.ok(err.reported);
        return true;
      });
      assert.equal(conv.reconnects, 1);
      assert.equal(conv.started.lostTurn, "tell me a story");
      assert.deepEqual(scripted.sessionIds, ["", "assigned"]); // the server's id, kept
      assert.deepEqual(conv.unanswered, []);
      const again = await conv.turn("again");
      assert.equal(again.text, "part");
      assert.equal(again.turnEnd?.reason, TurnEnd_Reason.COMPLETED);
      conv.end();
      assert.deepEqual(await drain(conv), []);
    });
  }

  test("other errors are not retried", async () => {
    scripted.steps = ["break:InvalidArgument"];
    const conv = await resumingConversation(client, { sessionId: "s" }, { reconnect: FAST });
    await assert.rejects(conv.turn("hello"), (err: unknown) => err instanceof ConnectError && err.code === Code.InvalidArgument);
    assert.equal(conv.reconnects, 0);
    assert.equal(conv.say("more"), false);
    await assert.rejects(conv.turn("more"), (err: unknown) => err instanceof ConnectError && err.code === Code.InvalidArgument);
  });

  test("a session held elsewhere fails at once, but is waited for after a break", async () => {
    scripted.steps = ["refuse:FailedPrecondition"];
    await assert.rejects(
      resumingConversation(client, { sessionId: "s" }, { reconnect: FAST }),
      (err: unknown) => err instanceof ConnectError && err.code === Code.FailedPrecondition,
    );
    scripted.steps = ["break:Unavailable", "refuse:FailedPrecondition", "refuse:FailedPrecondition"];
    scripted.lostTurn = "";
    scripted.sessionIds.length = 0;
    const conv = await resumingConversation(client, { sessionId: "s" }, { reconnect: FAST });
    await assert.rejects(conv.turn("hello"), (err: unknown) => err instanceof TurnLostError && !err.reported);
    assert.equal(conv.reconnects, 1);
    assert.deepEqual(scripted.sessionIds, ["s", "s", "s", "s"]);
    conv.end();
    await drain(conv);
  });

  test("resuming gives up after maxAttempts", async () => {
    scripted.steps = ["break:Unavailable", "refuse:Unavailable", "refuse:Unavailable", "refuse:Unavailable"];
    const conv = await resumingConversation(client, { sessionId: "s" }, { reconnect: { ...FAST, maxAttempts: 3 } });
    await assert.rejects(conv.turn("hello"), (err: unknown) => err instanceof ConnectError && err.code === Code.Unavailable);
    assert.equal(conv.reconnects, 0);
  });

  test("end after a break ends the resumed stream", async () => {
    scripted.steps = ["break:Unavailable"];
    const conv = await resumingConversation(client, { sessionId: "s" }, { reconnect: FAST });
    conv.say("hello");
    conv.end(); // written behind the text: the break comes after both
    const cases = (await drain(conv)).map((ev) => ev.event.case);
    assert.deepEqual(cases, ["agentText", "sessionStarted"]);
    assert.equal(conv.reconnects, 1);
  });

  test("cancel ends the conversation with Canceled", async () => {
    scripted.steps = [];
    const conv = await resumingConversation(client, { sessionId: "s" }, { reconnect: FAST });
    conv.cancel();
    await assert.rejects(drain(conv), (err: unknown) => err instanceof ConnectError && err.code === Code.Canceled);
    assert.equal(conv.reconnects, 0);
  });
});

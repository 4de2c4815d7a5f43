// The TypeScript side of tests/integration/test_client_resume.py, which starts workers behind Envoy and
// sets ANTIPHON_RESUME_ADDR (Envoy), _SESSION (the session id), _READY and _GO (two file names): one turn,
// then READY is created and the test kills the worker holding the session; once the session has moved it
// creates GO, and the next turn must be answered on the resumed stream.
import assert from "node:assert/strict";
import { existsSync, writeFileSync } from "node:fs";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { TurnEnd_Reason, connect, resumingConversation, type TurnResult } from "../src/index.js";

const ADDR = process.env.ANTIPHON_RESUME_ADDR;
const GO_BOUND_MS = 30_000;
const CALL_MS = 55_000;

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/integration/test_client_resume.py sets it)`);
  return value;
}

async function waitForFile(path: string): Promise<void> {
  const deadline = performance.now() + GO_BOUND_MS;
  while (!existsSync(path)) {
    if (performance.now() > deadline) throw new Error(`${path} did not appear within ${GO_BOUND_MS} ms`);
    await sleep(20);
  }
}

function assertAnswered(what: string, result: TurnResult): void {
  assert.deepEqual(result.errors, [], what);
  const reason = result.turnEnd?.reason;
  assert.ok(reason === TurnEnd_Reason.COMPLETED || reason === TurnEnd_Reason.MAX_TOKENS, `${what}: ${reason}`);
}

test(
  "a turn after the worker holding the session was killed is answered on the resumed stream",
  { skip: ADDR ? false : "run through pytest: tests/integration/test_client_resume.py starts the workers and Envoy", timeout: 60_000 },
  async () => {
    const session = env("ANTIPHON_RESUME_SESSION");
    const client = connect(env("ANTIPHON_RESUME_ADDR"));
    const signal = AbortSignal.timeout(CALL_MS);
    try {
      const conv = await resumingConversation(client, { sessionId: session, generation: { maxTokens: 8, temperature: 0 } }, { signal });
      assert.equal(conv.sessionId, session);
      assert.equal(conv.started.historyTurns, 0);
      assertAnswered("the first turn", await conv.turn("Say hello."));
      writeFileSync(env("ANTIPHON_RESUME_READY"), "");
      await waitForFile(env("ANTIPHON_RESUME_GO"));

      const began = performance.now();
      const second = await conv.turn("Say hello again.");
      const took = performance.now() - began;
      assertAnswered("the turn after the kill", second);
      assert.equal(conv.reconnects, 1);
      assert.equal(conv.started.sessionId, session);
      assert.equal(conv.started.lostTurn, "");
      assert.equal(conv.started.historyTurns, 2, "the first turn (question and answer) survived");
      const stored = await client.context.getSession({ sessionId: session }, { signal });
      const said = stored.turns.map((t) => `${t.role}: ${t.content}`);
      assert.equal(said.length, 4, said.join("\n"));
      assert.deepEqual([said[0], said[2]], ["user: Say hello.", "user: Say hello again."]);
      console.log(`# resumed in ${conv.resumeMs[0]?.toFixed(0)} ms (break seen to the new session_started); the next turn took ${took.toFixed(0)} ms`);
      conv.end();
      for await (const ev of conv.events()) assert.notEqual(ev.event.case, "sessionStarted");
    } finally {
      client.close();
    }
  },
);

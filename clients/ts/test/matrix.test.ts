// The client against real servers. tests/integration/test_client_matrix.py starts them and sets:
//   ANTIPHON_ADDR          auth off, voice on, real models
//   ANTIPHON_SECURED_ADDR  auth.mode = required, ANTIPHON_API_KEY limited to a few requests per second
//   ANTIPHON_SPEECH_WAV    16 kHz mono PCM16 WAV saying ANTIPHON_SPEECH_WORDS, then silence
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";

import {
  AudioEncoding,
  ClientEventSchema,
  Code,
  ConnectError,
  RetryInfoSchema,
  ServingStatus,
  TurnEnd_Reason,
  connect,
  retryDelayMs,
  type AntiphonClient,
  type ServerEvent,
} from "../src/index.js";

const CASE_MS = 60_000;
// Every call's deadline, inside the case's bound, so a stuck call ends with DEADLINE_EXCEEDED.
const CALL_MS = 55_000;
const PCM16_16K = { encoding: AudioEncoding.PCM16, sampleRateHz: 16000, channels: 1 };
const CHUNK_MS = 20;
const CHUNK_BYTES = (16000 * CHUNK_MS) / 1000 * 2; // 640
const RATE_LIMIT_TRIES = 20;
// Spoken answers are paced at real time: a short one keeps each voice case well inside its bound.
// A short answer, chosen greedily: a case that expects speech always gets words to speak.
const SHORT = { maxTokens: 24, greedy: true };

const ADDR = process.env.ANTIPHON_ADDR;
const SKIP = ADDR
  ? false
  : "ANTIPHON_ADDR is not set: run these tests through pytest (tests/integration/test_client_matrix.py), " +
    "which starts the servers and sets ANTIPHON_ADDR, ANTIPHON_SECURED_ADDR, ANTIPHON_API_KEY and ANTIPHON_SPEECH_WAV";
if (SKIP) console.log(`# skipped: ${SKIP}`);

function env(name: string, what: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: ${what} (the pytest harness sets it)`);
  return value;
}

async function collect(events: AsyncIterable<ServerEvent>): Promise<ServerEvent[]> {
  const seen: ServerEvent[] = [];
  for await (const ev of events) seen.push(ev);
  return seen;
}

function cases(events: ServerEvent[]): string[] {
  return events.map((ev) => ev.event.case ?? "(none)");
}

function isStatus(code: Code, names?: RegExp) {
  return (err: unknown): true => {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${Code[code]}, got ${Code[err.code]}: ${err.rawMessage}`);
    if (names) assert.match(err.rawMessage, names);
    return true;
  };
}

function assertTurnEnded(events: ServerEvent[]): void {
  const last = events.at(-1)?.event;
  assert.equal(last?.case, "turnEnd", `the stream should end with turn_end: ${cases(events).join(", ")}`);
  assert.ok(
    [TurnEnd_Reason.COMPLETED, TurnEnd_Reason.MAX_TOKENS].includes(last.value.reason),
    `turn_end reason ${TurnEnd_Reason[last.value.reason]}`,
  );
}

/** PCM16 samples of a 16 kHz mono WAV (the data chunk, wherever it starts). */
function readWavPcm(path: string): Uint8Array {
  const wav = readFileSync(path);
  assert.equal(wav.toString("latin1", 0, 4), "RIFF", `${path}: not a WAV file`);
  let format: { channels: number; rate: number; bits: number } | undefined;
  for (let at = 12; at + 8 <= wav.length; ) {
    const id = wav.toString("latin1", at, at + 4);
    const size = wav.readUInt32LE(at + 4);
    if (id === "fmt ") {
      format = { channels: wav.readUInt16LE(at + 10), rate: wav.readUInt32LE(at + 12), bits: wav.readUInt16LE(at + 22) };
    } else if (id === "data") {
      assert.deepEqual(format, { channels: 1, rate: 16000, bits: 16 }, `${path}: must be 16 kHz mono PCM16`);
      return new Uint8Array(wav.buffer, wav.byteOffset + at + 8, Math.min(size, wav.length - at - 8));
    }
    at += 8 + size + (size % 2);
  }
  throw new Error(`${path}: no data chunk`);
}

function words(text: string): string[] {
  return text.toLowerCase().replace(/[^a-z0-9' ]+/g, " ").split(/\s+/).filter(Boolean);
}

describe("Antiphon TypeScript client", { skip: SKIP }, () => {
  let client: AntiphonClient;

  before(() => {
    client = connect(ADDR ?? "", { timeoutMs: CALL_MS });
  });
  after(() => client?.close());

  test("(a) health is SERVING", { timeout: CASE_MS }, async () => {
    assert.equal(await client.health(), ServingStatus.SERVING);
  });

  test("(b) Send streams agent_text deltas and ends with turn_end", { timeout: CASE_MS }, async (t) => {
    const events = await collect(client.send("Hello", { generation: SHORT }));
    assert.equal(events[0]?.event.case, "sessionStarted", cases(events).join(", "));
    assert.deepEqual(
      events.map((ev) => ev.seq),
      events.map((_, i) => BigInt(i + 1)),
      "seq counts 1, 2, 3 …",
    );
    const deltas = events.flatMap((ev) => (ev.event.case === "agentText" ? [ev.event.value.delta] : []));
    assert.ok(deltas.length >= 1, `no agent_text: ${cases(events).join(", ")}`);
    assert.ok(deltas.join("").trim().length > 0, "the answer is empty");
    t.diagnostic(`answer: ${JSON.stringify(deltas.join(""))}`);
    assertTurnEnded(events);
  });

  test("(c) Send with empty text is INVALID_ARGUMENT naming text", { timeout: CASE_MS }, async () => {
    await assert.rejects(collect(client.send("")), isStatus(Code.InvalidArgument, /\btext\b/));
  });

  test("(d) Converse opened by a text event is INVALID_ARGUMENT naming session_config", { timeout: CASE_MS }, async () => {
    // The SDK always sends the SessionConfig first, so this goes through the generated client.
    async function* requests() {
      yield create(ClientEventSchema, { event: { case: "text", value: { content: "Hello" } } });
    }
    await assert.rejects(
      collect(client.conversation.converse(requests(), { timeoutMs: CALL_MS })),
      isStatus(Code.InvalidArgument, /session_config/),
    );
  });

  test("(e) Converse, text in, audio out", { timeout: CASE_MS }, async (t) => {
    const conv = client.converse({ inputAudio: PCM16_16K, outputAudio: PCM16_16K, generation: SHORT });
    assert.ok(conv.say("Hello"));
    const events: ServerEvent[] = [];
    for await (const ev of conv.events) {
      events.push(ev);
      if (ev.event.case === "turnEnd") conv.end();
    }
    assert.equal(events[0]?.event.case, "sessionStarted");
    const audio = events.flatMap((ev) => (ev.event.case === "audio" ? [ev.event.value] : []));
    assert.ok(audio.length > 0, `no audio events: ${cases(events).join(", ")}`);
    t.diagnostic(`${audio.length} audio events, ${audio.reduce((ms, a) => ms + a.durationMs, 0)} ms`);
    for (const chunk of audio) assert.ok(chunk.data.length > 0 && chunk.data.length % 2 === 0, "PCM16 audio data");
    const turnEnd = cases(events).indexOf("turnEnd");
    assert.ok(turnEnd > cases(events).indexOf("audio"), "audio arrives before turn_end");
    assertTurnEnded(events.slice(0, turnEnd + 1));
  });

  test("(f) Converse, audio in (real time), audio out", { timeout: CASE_MS }, async (t) => {
    const pcm = readWavPcm(env("ANTIPHON_SPEECH_WAV", "a 16 kHz mono PCM16 WAV of speech"));
    const expected = words(env("ANTIPHON_SPEECH_WORDS", "the words the WAV says, space-separated"));
    assert.ok(expected.length > 0, "ANTIPHON_SPEECH_WORDS names no word");

    const conv = client.converse({ inputAudio: PCM16_16K, outputAudio: PCM16_16K, generation: SHORT });
    const events: ServerEvent[] = [];
    let finalTranscript: string | undefined;
    let over = false;
    const reader = (async () => {
      try {
        for await (const ev of conv.events) {
          events.push(ev);
          if (ev.event.case === "transcript" && ev.event.value.isFinal && finalTranscript === undefined) {
            finalTranscript = ev.event.value.text;
          }
        }
      } finally {
        over = true;
      }
    })();

    // A microphone's pace: chunk k leaves at t0 + k * 20 ms (an absolute schedule does not drift).
    const t0 = performance.now();
    const deadline = t0 + CALL_MS - 15_000;
    let k = 0;
    const next = async (chunk: Uint8Array) => {
      const wait = t0 + k * CHUNK_MS - performance.now();
      if (wait > 0) await sleep(wait);
      k += 1;
      conv.audio(chunk);
    };
    for (let at = 0; at < pcm.length && !over; at += CHUNK_BYTES) {
      const chunk = new Uint8Array(CHUNK_BYTES); // a short last chunk is padded with silence
      chunk.set(pcm.subarray(at, at + CHUNK_BYTES));
      await next(chunk);
    }
    const silence = new Uint8Array(CHUNK_BYTES);
    while (finalTranscript === undefined && !over && performance.now() < deadline) await next(silence);
    conv.end();
    await reader;

    assert.ok(finalTranscript !== undefined, `no final transcript: ${cases(events).join(", ")}`);
    t.diagnostic(`final transcript: ${JSON.stringify(finalTranscript)} after ${k} chunks of ${CHUNK_MS} ms`);
    const heard = new Set(words(finalTranscript));
    const missing = expected.filter((w) => !heard.has(w));
    assert.deepEqual(missing, [], `final transcript ${JSON.stringify(finalTranscript)} lacks ${missing.join(", ")}`);
    const seen = cases(events);
    assert.ok(seen.includes("speechStarted"), `no speech_started: ${seen.join(", ")}`);
    const audio = events.flatMap((ev) => (ev.event.case === "audio" ? [ev.event.value] : []));
    assert.ok(audio.length > 0 && audio.every((a) => a.data.length > 0), `no audio answer: ${seen.join(", ")}`);
    t.diagnostic(`${audio.length} audio events, ${audio.reduce((ms, a) => ms + a.durationMs, 0)} ms`);
    assert.ok(seen.includes("turnEnd"), `no turn_end: ${seen.join(", ")}`);
  });

  describe("secured server", () => {
    let anonymous: AntiphonClient;
    let keyed: AntiphonClient;

    before(() => {
      const secured = env("ANTIPHON_SECURED_ADDR", "the address of the server with auth.mode = required");
      const apiKey = env("ANTIPHON_API_KEY", "a key for the secured server");
      anonymous = connect(secured, { timeoutMs: CALL_MS });
      keyed = connect(secured, { apiKey, timeoutMs: CALL_MS });
    });
    after(() => {
      anonymous?.close();
      keyed?.close();
    });

    test("(g) no credentials: UNAUTHENTICATED; with the key the call passes", { timeout: CASE_MS }, async () => {
      await assert.rejects(collect(anonymous.send("Hello", { generation: SHORT })), isStatus(Code.Unauthenticated));
      assertTurnEnded(await collect(keyed.send("Hello", { generation: SHORT })));
    });

    test("(h) over the key's rate: RESOURCE_EXHAUSTED with a retry delay", { timeout: CASE_MS }, async (t) => {
      let limited: ConnectError | undefined;
      let calls = 0;
      while (limited === undefined && calls < RATE_LIMIT_TRIES) {
        calls += 1;
        try {
          await keyed.admin.listModels({});
        } catch (err) {
          isStatus(Code.ResourceExhausted)(err);
          limited = err as ConnectError;
        }
      }
      assert.ok(limited, `${calls} calls in a row were never RESOURCE_EXHAUSTED`);
      const delay = retryDelayMs(limited);
      assert.ok(delay !== undefined && delay > 0, `retry delay ${delay}`);
      t.diagnostic(`RESOURCE_EXHAUSTED at call ${calls}, retry in ${delay} ms: ${limited.rawMessage}`);
      // Both carriers: google.rpc.RetryInfo in the status details, and the retry-after-ms trailer.
      const [info] = limited.findDetails(RetryInfoSchema);
      assert.ok(info?.retryDelay, "no google.rpc.RetryInfo in the status details");
      assert.equal(Number(limited.metadata.get("retry-after-ms")), delay);
    });
  });
});

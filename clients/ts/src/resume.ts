/**
 * A conversation that survives its worker: when its stream ends UNAVAILABLE (a draining worker, no
 * worker reachable) or is reset (a worker that died), a new stream is opened with the same session id,
 * with capped exponential backoff and jitter (the Python SDK's antiphon_client/resume.py).
 *
 * A turn in flight when the stream broke is never re-sent: the server's session_started names it
 * (`lostTurn`) when its worker died mid-turn, and `turn` throws `TurnLostError`; the texts said but not
 * answered are in `unanswered` for the caller to say again if it wants to.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { setTimeout as sleep } from "node:timers/promises";

import {
  ServerEventSchema,
  type Error as ErrorEvent,
  type ServerEvent,
  type SessionStarted,
  type TurnEnd,
} from "./gen/antiphon/v1/events_pb.js";
import type { AntiphonClient, ClientEventInit, ConverseStream, SessionConfigInit } from "./index.js";

/**
 * How a ResumingConversation reconnects. The delay before attempt n (from 0) is
 * `min(maxBackoffMs, initialBackoffMs * multiplier ** n)`, less up to `jitter` of itself, so clients cut
 * off together do not come back together.
 */
export interface Reconnect {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  jitter: number;
  /**
   * FAILED_PRECONDITION (the session is held) is retried this long after a break: a dead worker's lease
   * lasts until its heartbeat lapses (2 s). Opening a session held elsewhere fails at once.
   */
  resumeWindowMs: number;
}

export const DEFAULT_RECONNECT: Readonly<Reconnect> = Object.freeze({
  maxAttempts: 8,
  initialBackoffMs: 50,
  maxBackoffMs: 1000,
  multiplier: 2,
  jitter: 0.5,
  resumeWindowMs: 5000,
});

/** The wait before attempt `attempt`; `rand` returns a number in [0, 1). */
export function reconnectDelayMs(policy: Reconnect, attempt: number, rand: () => number = Math.random): number {
  const base = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** attempt);
  return base * (1 - policy.jitter * rand());
}

// What a worker that died looks like from the client: through Envoy, or on a direct connection. Node
// reports a received RST_STREAM as "Stream closed with error code NGHTTP2_INTERNAL_ERROR", connect-node as
// "http/2 stream closed with error code INTERNAL_ERROR" (a CANCEL is Code.Canceled, never resumed).
const RESET_WORDS = [
  "rst_stream",
  "reset",
  "stream removed",
  "socket closed",
  "connection termination",
  "stream closed with error code",
];

/** UNAVAILABLE, or a reset stream (INTERNAL / UNKNOWN naming a reset). */
export function isReconnectable(err: unknown): boolean {
  if (!(err instanceof ConnectError)) return false;
  if (err.code === Code.Unavailable) return true;
  const message = err.rawMessage.toLowerCase();
  return (err.code === Code.Internal || err.code === Code.Unknown) && RESET_WORDS.some((w) => message.includes(w));
}

/**
 * The stream broke before this turn's answer ended. `reported`: the resumed session named it as the turn
 * its dead worker was answering (not recorded, not re-run); otherwise it had not started, or it ended on
 * the old worker without its answer reaching here (GetSession tells).
 */
export class TurnLostError extends Error {
  override readonly name = "TurnLostError";

  constructor(
    readonly text: string,
    readonly reported: boolean,
  ) {
    const state = reported ? "was lost with its worker and not re-run" : "got no answer before the stream broke";
    super(`the turn ${JSON.stringify(text.slice(0, 60))} ${state}; say it again to have it answered`);
  }
}

/** One turn's answer as `turn` collected it. */
export interface TurnResult {
  turnId: string;
  /** The agentText deltas, joined. */
  text: string;
  turnEnd?: TurnEnd;
  /** Error events inside the turn (the stream went on). */
  errors: ErrorEvent[];
}

export interface ResumingOptions {
  reconnect?: Partial<Reconnect>;
  /** Aborting it ends the conversation at once. */
  signal?: AbortSignal;
}

interface Opened {
  stream: ConverseStream;
  reading: AsyncIterator<ServerEvent>;
  started: SessionStarted;
}

/** A server event and the stream it came from: 0 the first, n after n reconnects. */
interface Delivered {
  event: ServerEvent;
  gen: number;
}

/**
 * Opens Conversation.Converse with `config` and waits for session_started; later streams reuse the
 * session id it assigned. Rejects with FAILED_PRECONDITION if another live stream holds the session.
 */
export async function resumingConversation(
  client: AntiphonClient,
  config: SessionConfigInit = {},
  options: ResumingOptions = {},
): Promise<ResumingConversation> {
  const policy = { ...DEFAULT_RECONNECT, ...options.reconnect };
  const abort = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, abort.signal]) : abort.signal;
  const open = (sessionId: string) => openStream(client, { ...config, sessionId }, signal);
  return new ResumingConversation(open, await open(config.sessionId ?? ""), policy, abort);
}

async function openStream(client: AntiphonClient, config: SessionConfigInit, signal: AbortSignal): Promise<Opened> {
  const stream = client.converse(config, { signal });
  const reading = stream.events[Symbol.asyncIterator]();
  const first = await reading.next(); // a refused session throws its status here
  const event = first.done ? undefined : first.value.event;
  if (event?.case !== "sessionStarted") {
    stream.cancel();
    throw new ConnectError(`the session did not start (first event: ${event?.case ?? "none"})`, Code.Unknown);
  }
  return { stream, reading, started: event.value };
}

/**
 * `converse`'s interface (say, interrupt, end, events, turn) over streams that are replaced as they
 * break. One reader follows the current stream and replaces it, so a break is resumed once; what a broken
 * stream refuses to take is written to its replacement. `reconnects` counts the replacements; `started`
 * is the latest session_started (its `lostTurn` set after a worker died mid-turn).
 */
export class ResumingConversation {
  readonly sessionId: string;
  /** Per resume: milliseconds from the break seen here to the new session_started. */
  readonly resumeMs: number[] = [];
  /** Said, no turn_end yet. */
  readonly unanswered: string[] = [];
  private readonly queue = new EventQueue<Delivered>();
  private pending: ClientEventInit[] = []; // refused by a broken stream, for its replacement
  private ended = false;
  private resumed = 0;

  constructor(
    private readonly open: (sessionId: string) => Promise<Opened>,
    private current: Opened,
    private readonly policy: Reconnect,
    private readonly abort: AbortController,
  ) {
    this.sessionId = current.started.sessionId;
    void this.follow().catch((err: unknown) => this.queue.fail(ConnectError.from(err)));
  }

  /** The latest stream's session_started (`lostTurn` set after a worker died mid-turn). */
  get started(): SessionStarted {
    return this.current.started;
  }

  /** How many streams were replaced. */
  get reconnects(): number {
    return this.resumed;
  }

  private async follow(): Promise<void> {
    for (;;) {
      let next: IteratorResult<ServerEvent>;
      try {
        next = await this.current.reading.next();
      } catch (err) {
        const cause = ConnectError.from(err);
        if (this.abort.signal.aborted || !isReconnectable(cause)) return this.queue.fail(cause);
        await this.resume(cause);
        const event = create(ServerEventSchema, { event: { case: "sessionStarted", value: this.started } });
        this.queue.push({ event, gen: this.reconnects });
        continue;
      }
      if (next.done) return this.queue.close();
      if (next.value.event.case === "turnEnd") this.unanswered.shift();
      this.queue.push({ event: next.value, gen: this.reconnects });
    }
  }

  /** Replaces the broken stream, or throws why it could not. */
  private async resume(cause: ConnectError): Promise<void> {
    const began = performance.now();
    const deadline = began + this.policy.resumeWindowMs;
    let last = cause;
    for (let attempt = 0; attempt < this.policy.maxAttempts; attempt++) {
      await sleep(reconnectDelayMs(this.policy, attempt), undefined, { signal: this.abort.signal });
      try {
        this.current = await this.open(this.sessionId);
      } catch (err) {
        last = ConnectError.from(err);
        const held = last.code === Code.FailedPrecondition && performance.now() < deadline;
        if (held || isReconnectable(last)) continue;
        throw last;
      }
      this.resumed++;
      this.resumeMs.push(performance.now() - began);
      const pending = this.pending;
      this.pending = [];
      for (const event of pending) this.current.stream.send(event);
      if (this.ended) this.current.stream.end();
      return;
    }
    throw last;
  }

  /** The stream `event` goes to (a refused one waits for the next), or undefined once the input ended. */
  private write(event: ClientEventInit): number | undefined {
    if (this.ended || this.queue.over) return undefined;
    if (this.pending.length === 0 && this.current.stream.send(event)) return this.reconnects;
    this.pending.push(event);
    return this.reconnects + 1;
  }

  /** User text; listed in `unanswered` until its turn_end arrives. False once the input has ended. */
  say(text: string): boolean {
    return this.sayOn(text) !== undefined;
  }

  private sayOn(text: string): number | undefined {
    const gen = this.write({ event: { case: "text", value: { content: text } } });
    if (gen !== undefined) this.unanswered.push(text);
    return gen;
  }

  /** Any ClientEvent (a toolResult, say). */
  send(event: ClientEventInit): boolean {
    return this.write(event) !== undefined;
  }

  /** Cancels the turn in progress; the session goes on. */
  interrupt(): boolean {
    return this.send({ event: { case: "interrupt", value: {} } });
  }

  /** EndOfInput, then half-close (of a resumed stream too): pending turns still finish. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.pending.length === 0) this.current.stream.end();
  }

  /** Ends the conversation at once (events then throw a ConnectError with Code.Canceled). */
  cancel(): void {
    this.abort.abort();
    this.current.stream.cancel();
  }

  /** The events of every stream in order; after a resume, the new session_started first. Iterate once. */
  async *events(): AsyncGenerator<ServerEvent> {
    for (;;) {
      const next = await this.queue.next();
      if (next.done) return;
      yield next.value.event;
    }
  }

  /** Says `text` and collects its answer; `TurnLostError` if the stream broke before its turn_end. */
  async turn(text: string): Promise<TurnResult> {
    const sentOn = this.sayOn(text); // a resume before the write carried the text to the new stream
    if (sentOn === undefined) throw this.queue.error ?? new Error("the conversation has ended");
    const result: TurnResult = { turnId: "", text: "", errors: [] };
    for (;;) {
      const next = await this.queue.next();
      if (next.done) throw new Error("the conversation ended before the turn's answer");
      const { event, gen } = next.value;
      switch (event.event.case) {
        case "sessionStarted": {
          if (gen <= sentOn) break;
          const lost = event.event.value.lostTurn; // the server keeps its first 2000 characters
          this.unanswered.length = 0;
          throw new TurnLostError(text, lost !== "" && text.startsWith(lost));
        }
        case "agentText":
          result.text += event.event.value.delta;
          break;
        case "error":
          result.errors.push(event.event.value);
          break;
        case "turnEnd":
          result.turnId = event.turnId;
          result.turnEnd = event.event.value;
          return result;
      }
    }
  }
}

/** Events from the stream reader to whoever reads them; the failure comes after what was queued. */
class EventQueue<T> {
  private readonly items: T[] = [];
  private waiting: (() => void) | undefined;
  private failure: { error: unknown } | undefined;
  private closed = false;

  get over(): boolean {
    return this.closed;
  }

  /** Why it was closed, if by a failure. */
  get error(): unknown {
    return this.failure?.error;
  }

  push(item: T): void {
    this.items.push(item);
    this.wake();
  }

  close(): void {
    this.closed = true;
    this.wake();
  }

  fail(error: unknown): void {
    this.failure ??= { error };
    this.close();
  }

  async next(): Promise<IteratorResult<T, undefined>> {
    while (this.items.length === 0 && !this.closed) await new Promise<void>((resolve) => (this.waiting = resolve));
    if (this.items.length > 0) return { done: false, value: this.items.shift() as T };
    if (this.failure) throw this.failure.error;
    return { done: true, value: undefined };
  }

  private wake(): void {
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.();
  }
}

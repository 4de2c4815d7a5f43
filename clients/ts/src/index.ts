/**
 * Typed client for the Antiphon gRPC API (package antiphon.v1), over gRPC on HTTP/2.
 *
 *   const client = connect("127.0.0.1:50051", { apiKey: process.env.ANTIPHON_API_KEY });
 *   for await (const ev of client.send("Hello")) if (ev.event.case === "agentText") process.stdout.write(ev.event.value.delta);
 *
 * Messages and oneofs are protobuf-es types: `event.event` is a tagged union (`case` + `value`).
 * Failures are `ConnectError`s; `err.code` is a `Code` (Code.InvalidArgument, Code.ResourceExhausted …).
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { Admin } from "./gen/antiphon/v1/admin_pb.js";
import { Context } from "./gen/antiphon/v1/context_pb.js";
import { Conversation as ConversationService } from "./gen/antiphon/v1/conversation_pb.js";
import {
  ClientEventSchema,
  type ClientEvent,
  type GenerationOptionsSchema,
  type ServerEvent,
  type SessionConfigSchema,
} from "./gen/antiphon/v1/events_pb.js";
import { Tools } from "./gen/antiphon/v1/tools_pb.js";
import { RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";

export * from "./gen/antiphon/v1/events_pb.js";
export * from "./gen/antiphon/v1/conversation_pb.js";
export * as admin from "./gen/antiphon/v1/admin_pb.js";
export * as context from "./gen/antiphon/v1/context_pb.js";
export * as tools from "./gen/antiphon/v1/tools_pb.js";
export { RetryInfoSchema, type RetryInfo } from "./gen/google/rpc/error_details_pb.js";
export { HealthCheckResponse_ServingStatus as ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";
export * from "./resume.js";

export interface ConnectOptions {
  /** Sent as `x-api-key`. */
  apiKey?: string;
  /** A JWT, sent as `authorization: Bearer <token>`. */
  token?: string;
  /** Default deadline of every call in milliseconds (gRPC `grpc-timeout`); unset: none. */
  timeoutMs?: number;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Deadline of this call in milliseconds; overrides ConnectOptions.timeoutMs. */
  timeoutMs?: number;
}

export type GenerationOptionsInit = MessageInitShape<typeof GenerationOptionsSchema>;
export type SessionConfigInit = MessageInitShape<typeof SessionConfigSchema>;
export type ClientEventInit = MessageInitShape<typeof ClientEventSchema>;

export interface SendOptions extends CallOptions {
  /** Session to continue; empty: a new one (its id arrives in session_started). */
  sessionId?: string;
  agentProfile?: string;
  generation?: GenerationOptionsInit;
}

/** One open Converse stream. Input methods return false once the input has ended (end(), or the stream is over). */
export interface ConverseStream {
  /**
   * The server's events, in seq order; iterate once (the call starts then: events pushed before wait for it).
   * Ends when the server closes the stream, throws a ConnectError on a non-OK status; a `break` cancels the call.
   */
  readonly events: AsyncIterable<ServerEvent>;
  /** Any ClientEvent, e.g. `{ event: { case: "toolResult", value: { callId, result: { case: "outputJson", value: "{}" } } } }`. */
  send(event: ClientEventInit): boolean;
  /** A user message (TextInput): starts a turn. */
  say(text: string): boolean;
  /** 10–200 ms of audio in the session's input format; chunks are numbered 1, 2, 3 … */
  audio(data: Uint8Array): boolean;
  /** Cancels the turn in progress; the session goes on. */
  interrupt(): boolean;
  /** EndOfInput, then half-close: the server finishes the turn in progress and ends the stream. */
  end(): void;
  /** Cancels the whole call at once (events then throw a ConnectError with Code.Canceled). */
  cancel(): void;
}

export interface AntiphonClient {
  /** grpc.health.v1 status of `service` (empty: the whole server); never needs credentials. */
  health(service?: string, opts?: CallOptions): Promise<HealthCheckResponse_ServingStatus>;
  /** One text turn (Conversation.Send): session_started, agent_text deltas …, turn_end. */
  send(text: string, opts?: SendOptions): AsyncIterable<ServerEvent>;
  /** Opens Conversation.Converse with `config` as its first event. */
  converse(config?: SessionConfigInit, opts?: CallOptions): ConverseStream;
  /** The generated clients, for every RPC of the API. */
  readonly conversation: Client<typeof ConversationService>;
  readonly context: Client<typeof Context>;
  readonly tools: Client<typeof Tools>;
  readonly admin: Client<typeof Admin>;
  /** Closes the HTTP/2 connection; calls in flight fail. */
  close(): void;
}

/** `host:port` (plain text) or a URL (`http://…`, `https://…` for TLS). */
export function connect(address: string, options: ConnectOptions = {}): AntiphonClient {
  const baseUrl = /^[a-z][a-z0-9+.-]*:\/\//i.test(address) ? address : `http://${address}`;
  const sessionManager = new Http2SessionManager(baseUrl);
  const transport = createGrpcTransport({
    baseUrl,
    sessionManager,
    interceptors: [credentials(options)],
    ...(options.timeoutMs !== undefined ? { defaultTimeoutMs: options.timeoutMs } : {}),
  });
  const health = createClient(Health, transport);
  const conversation = createClient(ConversationService, transport);

  return {
    conversation,
    context: createClient(Context, transport),
    tools: createClient(Tools, transport),
    admin: createClient(Admin, transport),

    async health(service = "", opts = {}) {
      const response = await health.check({ service }, opts);
      return response.status;
    },

    send(text, opts = {}) {
      const { sessionId = "", agentProfile = "", generation, ...call } = opts;
      return cancelOnExit(call, (callOpts) =>
        conversation.send({ text, sessionId, agentProfile, generation }, callOpts),
      );
    },

    converse(config = {}, opts = {}) {
      const input = new PushQueue<ClientEvent>();
      input.push(create(ClientEventSchema, { event: { case: "sessionConfig", value: config } }));
      const abort = new AbortController();
      let iterated = false;
      let audioSeq = 0n;
      const push = (event: ClientEventInit) => input.push(create(ClientEventSchema, event));
      const events = cancelOnExit(
        { ...opts, abort },
        (callOpts) => conversation.converse(input, callOpts),
        () => input.close(),
      );
      return {
        events: {
          [Symbol.asyncIterator]() {
            if (iterated) throw new Error("ConverseStream.events can be iterated only once");
            iterated = true;
            return events[Symbol.asyncIterator]();
          },
        },
        send: push,
        say: (content) => push({ event: { case: "text", value: { content } } }),
        audio: (data) => push({ event: { case: "audio", value: { data, seq: ++audioSeq } } }),
        interrupt: () => push({ event: { case: "interrupt", value: {} } }),
        end() {
          push({ event: { case: "endOfInput", value: {} } });
          input.close();
        },
        cancel() {
          input.close();
          abort.abort();
        },
      };
    },

    close() {
      sessionManager.abort();
    },
  };
}

/**
 * How long the server asks the caller to wait before retrying, in milliseconds, or undefined when the
 * error carries no delay. Reads google.rpc.RetryInfo from the status details (grpc-status-details-bin),
 * falling back to the server's `retry-after-ms` trailer.
 */
export function retryDelayMs(err: unknown): number | undefined {
  if (!(err instanceof ConnectError)) return undefined;
  for (const info of err.findDetails(RetryInfoSchema)) {
    if (info.retryDelay !== undefined) {
      return Number(info.retryDelay.seconds) * 1000 + info.retryDelay.nanos / 1e6;
    }
  }
  const trailer = err.metadata.get("retry-after-ms");
  const ms = trailer === null ? NaN : Number(trailer);
  return Number.isFinite(ms) && ms >= 0 ? ms : undefined;
}

/** True for the statuses the API documents as safe to retry (UNAVAILABLE, RESOURCE_EXHAUSTED). */
export function isRetryable(err: unknown): boolean {
  return err instanceof ConnectError && (err.code === Code.Unavailable || err.code === Code.ResourceExhausted);
}

function credentials({ apiKey, token }: ConnectOptions): Interceptor {
  return (next) => (req) => {
    if (apiKey) req.header.set("x-api-key", apiKey);
    if (token) req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

interface StreamCallOptions {
  signal: AbortSignal;
  timeoutMs?: number;
}

/**
 * Starts a server-streaming call when first iterated and aborts it when the consumer stops early:
 * connect's response iterable has no return(), so a `break` alone would leave the call running.
 */
function cancelOnExit(
  opts: CallOptions & { abort?: AbortController },
  start: (callOpts: StreamCallOptions) => AsyncIterable<ServerEvent>,
  onEnd?: () => void,
): AsyncIterable<ServerEvent> {
  return {
    async *[Symbol.asyncIterator]() {
      const abort = opts.abort ?? new AbortController();
      const signal = opts.signal ? AbortSignal.any([opts.signal, abort.signal]) : abort.signal;
      try {
        yield* start({ signal, ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}) });
      } finally {
        onEnd?.();
        abort.abort();
      }
    },
  };
}

/** The request side of a bidirectional stream: pushed events wait here until the transport reads them. */
class PushQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private wake: (() => void) | undefined;
  private closed = false;

  push(item: T): boolean {
    if (this.closed) return false;
    this.items.push(item);
    this.signal();
    return true;
  }

  /** No more items; those already queued are still delivered. */
  close(): void {
    this.closed = true;
    this.signal();
  }

  private signal(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  // A generator, because connect drives request iterators with next/throw/return.
  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    try {
      for (;;) {
        if (this.items.length > 0) {
          yield this.items.shift() as T;
        } else if (this.closed) {
          return;
        } else {
          await new Promise<void>((resolve) => (this.wake = resolve));
        }
      }
    } finally {
      this.close();
    }
  }
}

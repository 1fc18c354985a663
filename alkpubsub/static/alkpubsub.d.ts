// Type declarations for alkpubsub.js, the JavaScript spoke of alkpubsub.

/** The one wire format (SPEC E1): the topic is `${type}:${id}`. */
export interface EventEnvelope<TType extends string = string, TPayload = unknown> {
  readonly type: TType;
  readonly id: string;
  readonly payload: TPayload;
}

/** What listeners receive: `type` is the topic, `detail` the envelope (as the Python `Event`). */
export interface SpokeEvent<TPayload = unknown> {
  readonly type: string;
  readonly detail: EventEnvelope<string, TPayload>;
}

export type SpokeListener<TPayload = unknown> =
  | ((event: SpokeEvent<TPayload>) => void | Promise<void>)
  | { handleEvent(event: SpokeEvent<TPayload>): void | Promise<void> };

/** Anything constructed like the WHATWG WebSocket: the browser's, Node 22's, or the `ws` package's. */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[]): WebSocketLike;
}

export interface WebSocketLike {
  readonly readyState: number;
  /** The subprotocol the server selected ('' for none). */
  readonly protocol?: string;
  readonly bufferedAmount: number;
  binaryType: string;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: 'close', listener: () => void): void;
}

export interface WebSocketSpokeOptions {
  /** The WebSocket class to use; default `globalThis.WebSocket` (Node 20 has none: pass `ws`'s). */
  WebSocket?: WebSocketConstructor;
  /**
   * The protocol's WebSocket subprotocol, offered first; the hub selects it. null offers
   * none (for a server that does not select it). Default 'alkpubsub.v1'.
   */
  subprotocol?: string | null;
  /**
   * A credential for the hub's `authenticate`, offered as the subprotocol `token.<token>`
   * (after `subprotocol`). A function is called at every (re)connection attempt, so a
   * short-lived token can be fetched afresh. A token must be a non-empty string of RFC 7230
   * token characters (letters, digits and !#$%&'*+-.^_`|~: JWTs, hex, base64url); any other
   * fails the attempt with a TypeError (a static token: at construction), as does a
   * function that throws, rejects, answers late (connectTimeoutMs) or answers no token.
   */
  token?: string | (() => string | Promise<string>);
  /** More subprotocols, offered after `subprotocol` and the token's. */
  protocols?: string | string[];
  /** First reconnect delay ceiling; each delay is between half and all of min(max, initial * 2^n). Default 100. */
  backoffInitialMs?: number;
  /** Cap of the reconnect delay. Default 10,000. */
  backoffMaxMs?: number;
  /** A connection attempt not open by then is abandoned (and retried). Default 10,000. */
  connectTimeoutMs?: number;
  /**
   * Events kept while offline (B7), counting those sent in the session and not yet confirmed;
   * past it dispatchEvent throws BackpressureError. Default 10,000.
   */
  outboxLimit?: number;
  /** Largest encoded envelope in UTF-8 bytes (E6), as the hub's max_frame_bytes. Default 1 MiB. */
  maxFrameBytes?: number;
  /**
   * While connected (B13): in a session, characters sent and not yet confirmed by the hub;
   * without one, bytes handed to the socket and not yet written. Default 1 MiB.
   */
  maxBufferedBytes?: number;
  /** Default timeout of flush() and ready(). Default 10,000. */
  timeoutMs?: number;
  /** How long close() waits for the hub to confirm what was accepted. Default 5,000. */
  closeTimeoutMs?: number;
  /** Ask the hub for a resumable session (docs/protocol.md §5). Default true. */
  session?: boolean;
  /**
   * Heartbeat: announced to the hub (in seconds), and a __ping when an interval passed with
   * nothing sent or nothing received. null: no heartbeat. Default 1,000.
   */
  heartbeatIntervalMs?: number | null;
  /** The link is declared lost (and the spoke reconnects) after this long without a frame from the hub. Default 3,000. */
  heartbeatTimeoutMs?: number;
  /** Close codes that mean "never come back": no retry, onError, the spoke closes. Default [4401, 4403]. */
  finalCloseCodes?: readonly number[];
  /** After every (re)connection, once the hub's __welcome arrived and the spoke sent its subscriptions. */
  onConnect?: (spokeId: string | null) => void;
  /**
   * Each welcome, before the spoke sends anything else: listeners added or removed here are
   * what the hub gets (move a `direct:` listener to a new spokeId here).
   */
  onSession?: (session: SessionInfo) => void;
  /** Events this spoke accepted that may not have reached the hub (a session that could not be resumed, a close that could not flush). */
  onUndelivered?: (envelopes: EventEnvelope[]) => void;
  /**
   * A connection that was welcomed ended: the close code and reason from the hub (its
   * `__close` when the close frame was lost), or 1006 from the network or the heartbeat.
   */
  onDisconnect?: (code: number, reason: string) => void;
  /** Failed attempts, refusals and hub __error frames; default: console.warn. */
  onError?: (error: AlkPubSubError) => void;
  /** A listener threw or its promise rejected; default: console.error. */
  onListenerError?: (error: unknown, event: SpokeEvent) => void;
}

/** What onSession receives at each welcome. */
export interface SessionInfo {
  /** The spoke id for `direct:`; the same as before when `resumed`. */
  readonly spokeId: string | null;
  /** The hub continued the previous session: same id, subscriptions, nothing lost. */
  readonly resumed: boolean;
  /** Events published while this spoke was away may be missing. */
  readonly gap: boolean;
  /** How many events were passed to onUndelivered. */
  readonly undelivered: number;
}

export interface SpokeStats {
  /** Connection attempts (each fetches the token, if a function, then creates a socket), and sockets that opened. */
  attempts: number;
  connections: number;
  /** Welcomes by the hub; how many resumed the session; events sent again after a resume. */
  welcomes: number;
  resumedSessions: number;
  resentEvents: number;
  /** Welcomes after which events may be missing; events that may not have reached the hub. */
  gaps: number;
  undeliveredEvents: number;
  sentEvents: number;
  receivedEvents: number;
  invalidFrames: number;
  unknownControl: number;
  hubErrors: number;
}

export declare const PROTOCOL_VERSION: 1;
/** The WebSocket subprotocol the spoke offers by default. */
export declare const SUBPROTOCOL: 'alkpubsub.v1';
/** A token is offered as the subprotocol `TOKEN_PREFIX + token`. */
export declare const TOKEN_PREFIX: 'token.';
/** An __ack is sent after this many data frames, or this many characters of them, received. */
export declare const ACK_EVERY_FRAMES: 64;
export declare const ACK_EVERY_CHARS: 65536;
export declare const DEFAULTS: Readonly<Required<Pick<WebSocketSpokeOptions,
  | 'backoffInitialMs' | 'backoffMaxMs' | 'connectTimeoutMs' | 'outboxLimit'
  | 'maxFrameBytes' | 'maxBufferedBytes' | 'timeoutMs' | 'closeTimeoutMs' | 'session' | 'subprotocol'
  | 'heartbeatIntervalMs' | 'heartbeatTimeoutMs' | 'finalCloseCodes'>>>;

export declare class WebSocketSpoke {
  constructor(url: string, options?: WebSocketSpokeOptions);
  /** The resolved ws:// or wss:// URL. */
  readonly url: string;
  /**
   * The id from the latest __welcome (for `direct:<spokeId>`): kept while offline and across
   * resumed sessions, new after a session that could not be resumed; null before the first
   * welcome and after close.
   */
  readonly spokeId: string | null;
  /** Welcomed by the hub: frames flow. */
  readonly connected: boolean;
  /** The subprotocol the hub selected on the open connection ('alkpubsub.v1'; '' for none); null while none is open. */
  readonly protocol: string | null;
  /** close() was called, or the hub refused the spoke for good. */
  readonly closed: boolean;
  /** Events waiting for the next connection. */
  readonly outboxSize: number;
  /** Events sent in the session and not yet confirmed by the hub. */
  readonly unconfirmedSize: number;
  /** The spoke holds a session the hub can resume. */
  readonly hasSession: boolean;
  readonly stats: SpokeStats;
  listenerCount(topic: string): number;
  /** Refcounted: `__subscribe` when a topic gets its first listener (B6). */
  addEventListener<TPayload = unknown>(topic: string, listener: SpokeListener<TPayload> | null): void;
  /** `__unsubscribe` when a topic loses its last listener (B6). */
  removeEventListener<TPayload = unknown>(topic: string, listener: SpokeListener<TPayload> | null): void;
  /** Send an envelope, or an event `{type: topic, detail: envelope}`; returns true. */
  dispatchEvent(event: { type: string; id: string; payload?: unknown } | SpokeEvent): boolean;
  publish(type: string, id: string, payload?: unknown): boolean;
  /** Resolves once the hub processed (and, in a session, confirmed) everything sent before (a __ping/__pong round trip, B4). */
  flush(timeoutMs?: number): Promise<void>;
  /** Resolves once the first connection is up and welcomed. */
  ready(timeoutMs?: number): Promise<void>;
  /**
   * Idempotent: delivers what was accepted (within closeTimeoutMs), closes with 1000 (the hub
   * ends the session), reports the rest to onUndelivered; resolves once the socket is closed (B11).
   */
  close(): Promise<void>;
}

export declare function createWebSocketSpoke(url: string, options?: WebSocketSpokeOptions): WebSocketSpoke;

export declare function validateType(type: string): string;
export declare function validateTopic(topic: string): string;
export declare function topicOf(envelope: { type: string; id: string }): string;
export declare function makeEnvelope<TPayload = unknown>(type: string, id: string, payload?: TPayload): EventEnvelope<string, TPayload>;
export declare function backoffDelay(failures: number, initialMs?: number, maxMs?: number): number;

export declare class AlkPubSubError extends Error {}
export declare class InvalidEnvelopeError extends AlkPubSubError {}
export declare class InvalidTopicError extends InvalidEnvelopeError {}
export declare class ReservedTypeError extends InvalidEnvelopeError {}
export declare class FrameTooLargeError extends AlkPubSubError {
  readonly size: number;
  readonly limit: number;
}
export declare class BackpressureError extends AlkPubSubError {}
export declare class TargetClosedError extends AlkPubSubError {}
export declare class WaitTimeoutError extends AlkPubSubError {}
export declare class ConnectionFailedError extends AlkPubSubError {
  /** The HTTP status of a refused upgrade where the WebSocket implementation tells it (`ws`), else null. */
  readonly status: number | null;
  /** The close code when the hub closed the link before welcoming it (e.g. 4409 session in use), else null. */
  readonly closeCode: number | null;
}
export declare class ConnectionRefusedByHubError extends ConnectionFailedError {
  /** 4401/4403 (or another final close code), or null for an HTTP 401/403 refusal. */
  readonly closeCode: number | null;
  /** True for a final close code: the spoke closed itself. HTTP refusals are retried. */
  readonly final: boolean;
}
export declare class HubRefusalError extends AlkPubSubError {
  readonly code: string;
  readonly topic: string | null;
}
/** `__error` `invalid_frame` or `invalid_control`: the hub dropped a frame of this spoke. */
export declare class ProtocolComplaintError extends HubRefusalError {}

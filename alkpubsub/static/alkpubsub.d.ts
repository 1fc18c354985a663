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
  /** WebSocket subprotocols, passed to the constructor. */
  protocols?: string | string[];
  /** First reconnect delay ceiling; each delay is between half and all of min(max, initial * 2^n). Default 100. */
  backoffInitialMs?: number;
  /** Cap of the reconnect delay. Default 10,000. */
  backoffMaxMs?: number;
  /** A connection attempt not open by then is abandoned (and retried). Default 10,000. */
  connectTimeoutMs?: number;
  /** Events kept while offline (B7); past it dispatchEvent throws BackpressureError. Default 10,000. */
  outboxLimit?: number;
  /** Largest encoded envelope in UTF-8 bytes (E6), as the hub's max_frame_bytes. Default 1 MiB. */
  maxFrameBytes?: number;
  /** While connected, bytes handed to the socket but not yet written (B13). Default 1 MiB. */
  maxBufferedBytes?: number;
  /** Default timeout of flush() and ready(). Default 10,000. */
  timeoutMs?: number;
  /** Close codes that mean "never come back": no retry, onError, the spoke closes. Default [4401, 4403]. */
  finalCloseCodes?: readonly number[];
  /** After every (re)connection, once the hub's __welcome arrived. */
  onConnect?: (spokeId: string | null) => void;
  /** A connection that was open ended (the close code and reason from the hub or the network). */
  onDisconnect?: (code: number, reason: string) => void;
  /** Failed attempts, refusals and hub __error frames; default: console.warn. */
  onError?: (error: AlkPubSubError) => void;
  /** A listener threw or its promise rejected; default: console.error. */
  onListenerError?: (error: unknown, event: SpokeEvent) => void;
}

export interface SpokeStats {
  attempts: number;
  connections: number;
  sentEvents: number;
  receivedEvents: number;
  invalidFrames: number;
  unknownControl: number;
  hubErrors: number;
}

export declare const PROTOCOL_VERSION: 1;
export declare const DEFAULTS: Readonly<Required<Pick<WebSocketSpokeOptions,
  | 'backoffInitialMs' | 'backoffMaxMs' | 'connectTimeoutMs' | 'outboxLimit'
  | 'maxFrameBytes' | 'maxBufferedBytes' | 'timeoutMs' | 'finalCloseCodes'>>>;

export declare class WebSocketSpoke {
  constructor(url: string, options?: WebSocketSpokeOptions);
  /** The resolved ws:// or wss:// URL. */
  readonly url: string;
  /** The id from the hub's __welcome (for `direct:<spokeId>`), or null while offline. */
  readonly spokeId: string | null;
  readonly connected: boolean;
  readonly closed: boolean;
  /** Events waiting for the next connection. */
  readonly outboxSize: number;
  readonly stats: SpokeStats;
  listenerCount(topic: string): number;
  /** Refcounted: `__subscribe` when a topic gets its first listener (B6). */
  addEventListener<TPayload = unknown>(topic: string, listener: SpokeListener<TPayload> | null): void;
  /** `__unsubscribe` when a topic loses its last listener (B6). */
  removeEventListener<TPayload = unknown>(topic: string, listener: SpokeListener<TPayload> | null): void;
  /** Send an envelope, or an event `{type: topic, detail: envelope}`; returns true. */
  dispatchEvent(event: { type: string; id: string; payload?: unknown } | SpokeEvent): boolean;
  publish(type: string, id: string, payload?: unknown): boolean;
  /** Resolves once the hub processed everything sent before (a __ping/__pong round trip, B4). */
  flush(timeoutMs?: number): Promise<void>;
  /** Resolves once the first connection is up and welcomed. */
  ready(timeoutMs?: number): Promise<void>;
  /** Idempotent; resolves once the socket is closed (B11). */
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

// alkpubsub.js: the JavaScript spoke of alkpubsub, for browsers and Node >= 20.
//
// One dependency-free ES module. It speaks the protocol of alkpubsub's WebSocket hub
// (SPEC §1-§3): one text message is one JSON envelope {type, id, payload}; the topic
// is "type:id"; types starting with "__" are control frames. The spoke forwards
// listener changes as refcounted __subscribe/__unsubscribe (B6), reconnects with
// capped, jittered exponential backoff, resubscribes and then sends what was
// dispatched while offline (B7), and answers flush() with a __ping/__pong round
// trip (B4). See docs/javascript.md.

export const PROTOCOL_VERSION = 1;

export const DEFAULTS = Object.freeze({
  backoffInitialMs: 100,
  backoffMaxMs: 10_000,
  connectTimeoutMs: 10_000,
  outboxLimit: 10_000,
  maxFrameBytes: 1024 * 1024,
  maxBufferedBytes: 1024 * 1024,
  timeoutMs: 10_000,
  // Close codes by which a hub says "never come back": no retry, the spoke closes.
  finalCloseCodes: Object.freeze([4401, 4403]),
});

const CONTROL_PREFIX = '__';
// E3: non-empty, no ':', no whitespace, no control characters (as the Python side).
const TYPE_PATTERN = /^[^\s:\x00-\x1f\x7f-\x9f]+$/u;
const OPEN = 1;
const CLOSED = 3;
const utf8 = new TextDecoder('utf-8', { fatal: true });

// -- errors (the names of the Python hierarchy) ----------------------------------------

export class AlkPubSubError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}
export class InvalidEnvelopeError extends AlkPubSubError {}
export class InvalidTopicError extends InvalidEnvelopeError {}
export class ReservedTypeError extends InvalidEnvelopeError {}
export class FrameTooLargeError extends AlkPubSubError {
  constructor(size, limit) {
    super(`encoded envelope is ${size} bytes, above maxFrameBytes=${limit}`);
    this.size = size;
    this.limit = limit;
  }
}
export class BackpressureError extends AlkPubSubError {}
export class TargetClosedError extends AlkPubSubError {}
export class WaitTimeoutError extends AlkPubSubError {}
/** A connection attempt that never opened (unreachable hub, timeout, HTTP error). */
export class ConnectionFailedError extends AlkPubSubError {
  constructor(message, { status = null, cause } = {}) {
    super(message, { cause });
    this.status = status;
  }
}
/** The hub refused this spoke: HTTP 401/403 (Node's `ws` reports it) or close code 4401/4403. */
export class ConnectionRefusedByHubError extends ConnectionFailedError {
  constructor(message, { status = null, closeCode = null } = {}) {
    super(message, { status });
    this.closeCode = closeCode;
    this.final = closeCode !== null;
  }
}
/** The hub answered with an `__error` frame (e.g. `forbidden`, B12). */
export class HubRefusalError extends AlkPubSubError {
  constructor(code, message, topic = null) {
    super(`hub refused (${code})${topic ? ` on ${JSON.stringify(topic)}` : ''}: ${message}`);
    this.code = code;
    this.topic = topic;
  }
}

// -- envelopes and topics (SPEC §1) -----------------------------------------------------

export function validateType(type) {
  if (typeof type !== 'string' || !TYPE_PATTERN.test(type)) {
    throw new InvalidTopicError(
      `invalid event type ${JSON.stringify(type)}: it must be a non-empty string without ':', ` +
        'whitespace or control characters',
    );
  }
  return type;
}

export function validateTopic(topic) {
  const colon = typeof topic === 'string' ? topic.indexOf(':') : -1;
  if (colon < 0) throw new InvalidTopicError(`invalid topic ${JSON.stringify(topic)}: expected "<type>:<id>"`);
  validateType(topic.slice(0, colon));
  return topic;
}

export function topicOf(envelope) {
  return `${envelope.type}:${envelope.id}`;
}

/** A validated user envelope (E3, E4); throws before anything could be sent. */
export function makeEnvelope(type, id, payload = null) {
  validateType(type);
  if (type.startsWith(CONTROL_PREFIX)) {
    const reason = "types starting with '__' are control frames";
    throw new ReservedTypeError(`event type ${JSON.stringify(type)} is reserved: ${reason}`);
  }
  if (typeof id !== 'string') throw new InvalidTopicError(`event id must be a string, not ${typeof id}`);
  return Object.freeze({ type, id, payload: payload === undefined ? null : payload });
}

function encode(envelope, maxFrameBytes) {
  let frame;
  try {
    frame = JSON.stringify({ type: envelope.type, id: envelope.id, payload: envelope.payload });
  } catch (error) {
    throw new InvalidEnvelopeError(`payload is not JSON-serializable: ${error.message}`, { cause: error });
  }
  // A UTF-16 unit is at most 3 UTF-8 bytes: only count bytes when it could matter.
  if (frame.length * 3 > maxFrameBytes) {
    const size = new TextEncoder().encode(frame).length;
    if (size > maxFrameBytes) throw new FrameTooLargeError(size, maxFrameBytes);
  }
  return frame;
}

/** The received envelope, or null when it is not one (B10). Unknown fields are dropped (E7). */
function decode(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return null;
  const { type, id, payload = null } = value;
  if (typeof type !== 'string' || !TYPE_PATTERN.test(type) || typeof id !== 'string') return null;
  return Object.freeze({ type, id, payload });
}

/** Exponential backoff with "equal jitter": between half and all of the capped ceiling. */
export function backoffDelay(failures, initialMs = DEFAULTS.backoffInitialMs, maxMs = DEFAULTS.backoffMaxMs) {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(failures, 32));
  return ceiling / 2 + (Math.random() * ceiling) / 2;
}

function withTimeout(promise, timeoutMs, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    const expire = () => reject(new WaitTimeoutError(`${what} did not complete within ${timeoutMs} ms`));
    timer = setTimeout(expire, timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function websocketUrl(url) {
  const base = globalThis.location?.href;
  let parsed;
  try {
    parsed = base ? new URL(url, base) : new URL(url);
  } catch {
    throw new TypeError(`not a WebSocket URL: ${JSON.stringify(url)}`);
  }
  // Relative and http(s) URLs (a page's own origin) become ws(s) URLs.
  if (parsed.protocol === 'http:') parsed.protocol = 'ws:';
  if (parsed.protocol === 'https:') parsed.protocol = 'wss:';
  if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') {
    throw new TypeError(`the spoke needs a ws:// or wss:// URL, not ${JSON.stringify(url)}`);
  }
  return parsed.href;
}

function closeSocket(socket, code = 1000, reason = 'spoke closed') {
  return new Promise((resolve) => {
    if (socket.readyState === CLOSED) return resolve();
    // A hub that never answers the close handshake must not keep us waiting.
    const timer = setTimeout(() => {
      if (typeof socket.terminate === 'function') socket.terminate();
      resolve();
    }, 2000);
    socket.addEventListener('close', () => {
      clearTimeout(timer);
      resolve();
    });
    try {
      socket.close(code, reason);
    } catch {
      clearTimeout(timer);
      resolve();
    }
  });
}

// -- the spoke ---------------------------------------------------------------------------

/**
 * A TypedEventTarget connected to an alkpubsub hub over WebSocket. It starts
 * connecting at once and reconnects by itself until close() (or a final refusal).
 */
export class WebSocketSpoke {
  #WebSocket;
  #protocols;
  #options;
  #listeners = new Map(); // topic -> Set of listeners, in registration order
  #outbox = []; // encoded events dispatched while offline (B7)
  #socket = null;
  #connected = false; // our socket is open and the offline outbox went out
  #closed = false;
  #closing = null;
  #spokeId = null;
  #failures = 0;
  #openedAt = 0;
  #retryTimer = null;
  #connectTimer = null;
  #pingCounter = 0;
  #pendingPings = new Map(); // nonce -> (answered: boolean) => void
  #openWaiters = new Set();
  #ready;
  #settleReady;
  #stats = { attempts: 0, connections: 0, sentEvents: 0, receivedEvents: 0,
             invalidFrames: 0, unknownControl: 0, hubErrors: 0 };

  constructor(url, options = {}) {
    this.url = websocketUrl(url);
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('no WebSocket implementation: pass options.WebSocket (in Node 20, the `ws` package)');
    }
    this.#protocols = options.protocols;
    this.#options = { ...DEFAULTS, ...options };
    const { backoffInitialMs, backoffMaxMs, outboxLimit } = this.#options;
    if (!(backoffInitialMs > 0 && backoffMaxMs >= backoffInitialMs)) {
      throw new RangeError('need 0 < backoffInitialMs <= backoffMaxMs');
    }
    if (!(outboxLimit > 0)) throw new RangeError('outboxLimit must be positive');
    this.#ready = new Promise((resolve, reject) => {
      this.#settleReady = (error) => {
        this.#settleReady = null;
        error ? reject(error) : resolve();
      };
    });
    this.#ready.catch(() => {}); // a spoke nobody awaits is no unhandled rejection
    this.#connect();
  }

  /** The id the hub gave this connection (for `direct:<spokeId>`), or null while offline. */
  get spokeId() { return this.#spokeId; }
  get connected() { return this.#connected; }
  get closed() { return this.#closed; }
  /** Events waiting for the next connection. */
  get outboxSize() { return this.#outbox.length; }
  get stats() { return { ...this.#stats }; }
  listenerCount(topic) { return this.#listeners.get(topic)?.size ?? 0; }

  // -- TypedEventTarget ------------------------------------------------------------------

  addEventListener(topic, listener) {
    if (this.#closed || listener == null) return;
    validateTopic(topic);
    if (typeof listener !== 'function' && typeof listener.handleEvent !== 'function') {
      throw new TypeError('a listener is a function or an object with handleEvent()');
    }
    let listeners = this.#listeners.get(topic);
    if (listeners === undefined) this.#listeners.set(topic, (listeners = new Set()));
    if (listeners.has(listener)) return;
    listeners.add(listener);
    if (listeners.size === 1) this.#sendControl('__subscribe', { topic });
  }

  removeEventListener(topic, listener) {
    if (this.#closed || listener == null) return;
    const listeners = this.#listeners.get(topic);
    if (listeners === undefined || !listeners.delete(listener)) return;
    if (listeners.size === 0) {
      this.#listeners.delete(topic);
      this.#sendControl('__unsubscribe', { topic });
    }
  }

  /**
   * Send an envelope `{type, id, payload}` (or an event `{type: topic, detail: envelope}`).
   * Never blocks; throws BackpressureError when the outbox or the socket buffer is full.
   */
  dispatchEvent(event) {
    if (this.#closed) throw new TargetClosedError('spoke is closed');
    const isObject = (value) => value !== null && typeof value === 'object';
    let envelope = event;
    if (isObject(event) && isObject(event.detail)) {
      envelope = event.detail;
      if (event.type !== topicOf(envelope)) {
        throw new InvalidTopicError(`event type ${JSON.stringify(event.type)} does not match its envelope's topic`);
      }
    }
    if (!isObject(envelope)) throw new TypeError('dispatchEvent expects {type, id, payload}');
    const { maxFrameBytes, maxBufferedBytes, outboxLimit } = this.#options;
    const frame = encode(makeEnvelope(envelope.type, envelope.id, envelope.payload), maxFrameBytes);
    const socket = this.#liveSocket();
    if (socket !== null) {
      const buffered = socket.bufferedAmount;
      if (buffered > 0 && buffered + frame.length > maxBufferedBytes) {
        const limit = `maxBufferedBytes=${maxBufferedBytes}`;
        throw new BackpressureError(`${buffered} bytes not yet written (${limit}); await spoke.flush()`);
      }
      socket.send(frame);
    } else {
      if (this.#outbox.length >= outboxLimit) {
        throw new BackpressureError(`offline outbox is full (${outboxLimit} events); await spoke.flush()`);
      }
      this.#outbox.push(frame);
    }
    this.#stats.sentEvents += 1;
    return true;
  }

  publish(type, id, payload = null) {
    return this.dispatchEvent({ type, id, payload });
  }

  /** Resolves once the hub processed everything sent before the call (B4), across reconnects. */
  flush(timeoutMs = this.#options.timeoutMs) {
    if (this.#closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      let nonce = null;
      const finish = () => {
        clearTimeout(timer);
        this.#openWaiters.delete(attempt);
        if (nonce !== null) this.#pendingPings.delete(nonce);
      };
      const done = () => {
        finish();
        resolve();
      };
      const attempt = () => {
        if (this.#closed) return done();
        if (!this.#connected) return this.#openWaiters.add(attempt);
        nonce = String(++this.#pingCounter);
        // Unanswered when the connection drops: ping again on the next one.
        this.#pendingPings.set(nonce, (answered) => (answered ? done() : attempt()));
        this.#sendControl('__ping', {}, nonce);
      };
      const timer = setTimeout(() => {
        finish();
        reject(new WaitTimeoutError(`flush did not complete within ${timeoutMs} ms`));
      }, timeoutMs);
      attempt();
    });
  }

  /** Resolves once the first connection is up and welcomed by the hub. */
  ready(timeoutMs = this.#options.timeoutMs) {
    return withTimeout(this.#ready, timeoutMs, 'ready');
  }

  /** Idempotent; afterwards dispatchEvent throws and add/remove are no-ops (B11). */
  close() {
    if (this.#closing === null) this.#shutdown(null);
    return this.#closing;
  }

  // -- connection life cycle ---------------------------------------------------------------

  #connect() {
    if (this.#closed) return;
    this.#stats.attempts += 1;
    let socket;
    try {
      socket = new this.#WebSocket(this.url, this.#protocols);
    } catch (error) {
      this.#report(new ConnectionFailedError(`cannot open ${this.url}: ${error.message}`, { cause: error }));
      return this.#scheduleReconnect(false);
    }
    socket.binaryType = 'arraybuffer';
    this.#socket = socket;
    let failure = '';
    // Handlers stay attached for the socket's life (`ws` throws on an 'error' nobody
    // hears); each one ignores a socket that is no longer ours.
    socket.onopen = () => socket === this.#socket && this.#opened(socket);
    socket.onmessage = (event) => socket === this.#socket && this.#receive(event.data);
    socket.onerror = (event) => {
      failure = event?.message || event?.error?.message || failure;
    };
    socket.onclose = (event) => this.#lost(socket, event.code, event.reason, failure);
    const { connectTimeoutMs } = this.#options;
    this.#connectTimer = setTimeout(() => {
      this.#lost(socket, 1006, '', `no connection within ${connectTimeoutMs} ms`);
      closeSocket(socket);
    }, connectTimeoutMs);
  }

  #opened(socket) {
    clearTimeout(this.#connectTimer);
    this.#connected = true;
    this.#openedAt = Date.now();
    this.#stats.connections += 1;
    // B7: hello, every live topic, then what was dispatched while offline.
    this.#sendControl('__hello', { protocol: PROTOCOL_VERSION });
    for (const topic of this.#listeners.keys()) this.#sendControl('__subscribe', { topic });
    for (const frame of this.#outbox) socket.send(frame);
    this.#outbox = [];
    const waiters = [...this.#openWaiters];
    this.#openWaiters.clear();
    for (const waiter of waiters) waiter();
  }

  #lost(socket, code, reason, failure) {
    if (socket !== this.#socket) return;
    this.#socket = null;
    clearTimeout(this.#connectTimer);
    const wasConnected = this.#connected;
    this.#connected = false;
    this.#spokeId = null;
    if (wasConnected) this.#callback('onDisconnect', code, reason);
    if (this.#closed) return; // onDisconnect closed the spoke
    if (this.#options.finalCloseCodes.includes(code)) {
      const refusal = new ConnectionRefusedByHubError(
        `hub refused this spoke with close code ${code}${reason ? `: ${reason}` : ''}; not reconnecting`,
        { closeCode: code },
      );
      this.#report(refusal);
      return this.#shutdown(refusal);
    }
    if (!wasConnected) {
      // Node's `ws` names the HTTP status of a refused upgrade; browsers hide it.
      const status = Number(/Unexpected server response: (\d{3})/.exec(failure)?.[1] ?? 0) || null;
      const message = `cannot connect to ${this.url}${failure ? `: ${failure}` : ''}`;
      const Failure = status === 401 || status === 403 ? ConnectionRefusedByHubError : ConnectionFailedError;
      this.#report(new Failure(message, { status }));
    }
    const pings = [...this.#pendingPings.values()];
    this.#pendingPings.clear();
    for (const ping of pings) ping(false);
    this.#scheduleReconnect(wasConnected);
  }

  #scheduleReconnect(wasConnected) {
    if (this.#closed) return;
    const { backoffInitialMs, backoffMaxMs } = this.#options;
    // Only a connection that lived longer than the cap resets the backoff: one that
    // dies at once counts as a failure, so nothing ever retries in a tight loop.
    if (wasConnected && Date.now() - this.#openedAt > backoffMaxMs) this.#failures = 0;
    const delay = backoffDelay(this.#failures, backoffInitialMs, backoffMaxMs);
    this.#failures += 1;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#connect();
    }, delay);
  }

  #shutdown(error) {
    this.#closed = true;
    this.#connected = false;
    this.#spokeId = null;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#connectTimer);
    this.#listeners.clear();
    this.#outbox = [];
    const socket = this.#socket;
    this.#socket = null;
    this.#closing = socket === null ? Promise.resolve() : closeSocket(socket);
    this.#settleReady?.(error ?? new TargetClosedError('spoke closed before the hub welcomed it'));
    const waiters = [...this.#pendingPings.values(), ...this.#openWaiters];
    this.#pendingPings.clear();
    this.#openWaiters.clear();
    for (const waiter of waiters) waiter(false);
  }

  // -- frames --------------------------------------------------------------------------------

  #liveSocket() {
    const socket = this.#socket;
    return this.#connected && socket !== null && socket.readyState === OPEN ? socket : null;
  }

  #sendControl(type, payload, id = '') {
    // Offline, nothing to do: hello and subscriptions are regenerated on connect.
    this.#liveSocket()?.send(JSON.stringify({ type, id, payload }));
  }

  #receive(data) {
    let text = data;
    if (typeof data !== 'string') {
      try {
        text = utf8.decode(data);
      } catch {
        this.#stats.invalidFrames += 1;
        return;
      }
    }
    const envelope = decode(text);
    if (envelope === null) {
      this.#stats.invalidFrames += 1;
      return;
    }
    if (envelope.type.startsWith(CONTROL_PREFIX)) return this.#receiveControl(envelope);
    this.#stats.receivedEvents += 1;
    const topic = topicOf(envelope);
    const listeners = this.#listeners.get(topic);
    if (listeners === undefined) return;
    const event = Object.freeze({ type: topic, detail: envelope });
    for (const listener of [...listeners]) {
      // A listener removed (or the spoke closed) by an earlier one is not called.
      if (!this.#closed && listeners.has(listener)) this.#invoke(listener, event);
    }
  }

  #receiveControl(envelope) {
    const payload = envelope.payload !== null && typeof envelope.payload === 'object' ? envelope.payload : {};
    switch (envelope.type) {
      case '__pong': {
        const pending = this.#pendingPings.get(envelope.id);
        if (pending !== undefined) {
          this.#pendingPings.delete(envelope.id);
          pending(true);
        }
        break;
      }
      case '__ping':
        this.#sendControl('__pong', {}, envelope.id);
        break;
      case '__welcome':
        this.#spokeId = typeof payload.spoke_id === 'string' && payload.spoke_id ? payload.spoke_id : null;
        this.#settleReady?.(null);
        this.#callback('onConnect', this.#spokeId);
        break;
      case '__error':
        this.#stats.hubErrors += 1;
        const topic = typeof payload.topic === 'string' ? payload.topic : null;
        this.#report(new HubRefusalError(String(payload.code ?? 'unknown'), String(payload.message ?? ''), topic));
        break;
      default:
        this.#stats.unknownControl += 1; // C2: forward compatibility
    }
  }

  // -- user code is isolated (B9) ---------------------------------------------------------------

  #invoke(listener, event) {
    try {
      const result = typeof listener === 'function' ? listener(event) : listener.handleEvent(event);
      if (typeof result?.then === 'function') result.then(undefined, (error) => this.#listenerError(error, event));
    } catch (error) {
      this.#listenerError(error, event);
    }
  }

  #listenerError(error, event) {
    if (typeof this.#options.onListenerError === 'function') {
      try {
        return this.#options.onListenerError(error, event);
      } catch (nested) {
        error = nested;
      }
    }
    console.error(`alkpubsub: a listener of ${event.type} failed`, error);
  }

  #report(error) {
    if (typeof this.#options.onError !== 'function') return console.warn(`alkpubsub: ${error.message}`);
    this.#callback('onError', error);
  }

  #callback(name, ...args) {
    const callback = this.#options[name];
    if (typeof callback !== 'function') return;
    try {
      callback(...args);
    } catch (error) {
      console.error(`alkpubsub: ${name} failed`, error);
    }
  }
}

/** Create a spoke connected to the hub at `url` (ws://, wss://, or relative to the page). */
export function createWebSocketSpoke(url, options = {}) {
  return new WebSocketSpoke(url, options);
}

// alkpubsub.js: the JavaScript spoke of alkpubsub, for browsers and Node >= 20.
//
// One dependency-free ES module. It speaks the protocol of alkpubsub's WebSocket hub
// (docs/protocol.md): one text message is one JSON envelope {type, id, payload}; the
// topic is "type:id"; types starting with "__" are control frames. The spoke greets the
// hub (__hello) and sends nothing else until its __welcome; it forwards listener
// changes as refcounted __subscribe/__unsubscribe (B6), answers flush() with a
// __ping/__pong round trip (B4), and reconnects with capped, jittered exponential
// backoff (B7). In a session (§5) it counts and acknowledges the data frames it
// receives, keeps those it sent until the hub acknowledged them, and resumes the
// session after a reconnect: same spoke id, nothing lost or delivered twice. Its
// heartbeat (§5) notices a dead or frozen hub within about 4 s. It offers the
// `alkpubsub.v1` WebSocket subprotocol, and a token in a second one when asked
// (`token.<value>`, for the hub's authenticate). See docs/javascript.md.

export const PROTOCOL_VERSION = 1;
/** The WebSocket subprotocol of docs/protocol.md; the hub selects it when offered. */
export const SUBPROTOCOL = 'alkpubsub.v1';
/** A token rides in the subprotocol `TOKEN_PREFIX + token`. */
export const TOKEN_PREFIX = 'token.';

// The close codes this spoke uses, named as in the Python enum (alkpubsub.core.close).
const CloseCode = Object.freeze({
  NORMAL: 1000,
  NO_STATUS: 1005,
  ABNORMAL: 1006,
  RECONNECTING: 4000, // we give up on a link and will resume its session
  UNAUTHORIZED: 4401, // final: never retried
  FORBIDDEN: 4403, // final: never retried
});

export const DEFAULTS = Object.freeze({
  backoffInitialMs: 100,
  backoffMaxMs: 10_000,
  connectTimeoutMs: 10_000,
  outboxLimit: 10_000,
  maxFrameBytes: 1024 * 1024,
  maxBufferedBytes: 1024 * 1024,
  timeoutMs: 10_000,
  closeTimeoutMs: 5_000,
  session: true,
  subprotocol: SUBPROTOCOL,
  heartbeatIntervalMs: 1_000,
  heartbeatTimeoutMs: 3_000,
  // Close codes by which a hub says "never come back": no retry, the spoke closes.
  finalCloseCodes: Object.freeze([CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN]),
});

/** An __ack is due after this many data frames, or this many characters of them, received. */
export const ACK_EVERY_FRAMES = 64;
export const ACK_EVERY_CHARS = 64 * 1024;

const CONTROL_PREFIX = '__';
// RFC 6455 §4.1: a subprotocol is an RFC 7230 token (what browsers and `ws` accept).
const SUBPROTOCOL_PATTERN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const TOKEN_CHARACTERS = "letters, digits and !#$%&'*+-.^_`|~";
// E3: non-empty, no ':', no whitespace, no control characters (as the Python side).
const TYPE_PATTERN = /^[^\s:\x00-\x1f\x7f-\x9f]+$/u;
// JSON.stringify writes a lone surrogate as a \udXXX escape (and nothing else so):
// an escape not itself escaped (preceded by an even number of backslashes).
const LONE_SURROGATE = /(?:^|[^\\])(?:\\\\)*\\ud[89a-f][0-9a-f]{2}/;
const OPEN = 1;
const CLOSED = 3;
// Close codes that say "the close frame never came": the hub's __close tells instead.
const NO_CLOSE_CODES = Object.freeze([CloseCode.NO_STATUS, CloseCode.ABNORMAL]);
const COMPLAINTS = Object.freeze(['invalid_frame', 'invalid_control']);
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
/**
 * A connection attempt that never got the hub's welcome (unreachable hub, timeout, HTTP
 * error, or a close before the welcome, such as 4409 "session in use").
 */
export class ConnectionFailedError extends AlkPubSubError {
  constructor(message, { status = null, closeCode = null, cause } = {}) {
    super(message, { cause });
    this.status = status;
    this.closeCode = closeCode;
  }
}
/** The hub refused this spoke: HTTP 401/403 (Node's `ws` reports it) or close code 4401/4403. */
export class ConnectionRefusedByHubError extends ConnectionFailedError {
  constructor(message, { status = null, closeCode = null } = {}) {
    super(message, { status, closeCode });
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
/** The hub dropped a frame of ours as malformed (`__error` `invalid_frame`/`invalid_control`). */
export class ProtocolComplaintError extends HubRefusalError {}

// -- envelopes and topics (docs/protocol.md §1) -----------------------------------------

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
  // Not Unicode, so not UTF-8: the hub would drop the frame (as the Python spoke refuses it).
  if (frame.includes('\\ud') && LONE_SURROGATE.test(frame)) {
    throw new InvalidEnvelopeError('the envelope contains a lone surrogate: it is not valid Unicode');
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

/** A non-negative integer count from the hub, or null. */
function countOf(value) {
  return Number.isSafeInteger(value) && value >= 0 ? value : null;
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

/** The extra subprotocols of the `protocols` option, validated. */
function extraProtocols(protocols) {
  const list = protocols == null ? [] : typeof protocols === 'string' ? [protocols] : [...protocols];
  for (const protocol of list) {
    if (typeof protocol !== 'string' || !SUBPROTOCOL_PATTERN.test(protocol)) {
      throw new TypeError(`${JSON.stringify(protocol)} is not a valid WebSocket subprotocol (only ${TOKEN_CHARACTERS})`);
    }
  }
  return list;
}

/** Throws unless `token` can ride in a subprotocol; never shows the token itself (a secret). */
function checkToken(token) {
  if (typeof token !== 'string' || token === '') {
    const got = token === '' ? 'an empty one' : token === null ? 'null' : typeof token;
    throw new TypeError(`the token must be a non-empty string, not ${got}`);
  }
  if (!SUBPROTOCOL_PATTERN.test(token)) {
    throw new TypeError(
      `the token has characters a WebSocket subprotocol cannot carry (only ${TOKEN_CHARACTERS}): ` +
        'encode it, e.g. as base64url',
    );
  }
  return token;
}

function closeSocket(socket, code = CloseCode.NORMAL, reason = 'spoke closed') {
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

/** Data frames written in this session and not yet acknowledged by the hub, in order. */
class SentLog {
  #frames = [];
  #head = 0;
  /** Data frames the hub confirmed in this session (its `received`). */
  acked;
  /** Characters of the unconfirmed frames. */
  size = 0;

  constructor(acked = 0) {
    this.acked = acked;
  }

  get length() { return this.#frames.length - this.#head; }

  record(frame) {
    this.#frames.push(frame);
    this.size += frame.length;
  }

  /** The hub received `received` data frames of this session: forget those. False if impossible. */
  ack(received) {
    if (received > this.acked + this.length) return false;
    while (this.acked < received) {
      this.size -= this.#frames[this.#head].length;
      this.#frames[this.#head] = undefined;
      this.#head += 1;
      this.acked += 1;
    }
    if (this.#head > 1024 && this.#head * 2 > this.#frames.length) {
      this.#frames = this.#frames.slice(this.#head);
      this.#head = 0;
    }
    return true;
  }

  /** Forget the unconfirmed frames (the count stays); returns them. */
  clear() {
    const frames = this.#frames.slice(this.#head);
    this.#frames = [];
    this.#head = 0;
    this.size = 0;
    return frames;
  }
}

// -- the spoke ---------------------------------------------------------------------------

/**
 * A TypedEventTarget connected to an alkpubsub hub over WebSocket. It starts
 * connecting at once and reconnects by itself until close() (or a final refusal).
 */
export class WebSocketSpoke {
  #WebSocket;
  #protocols; // offered after alkpubsub.v1 and the token (the `protocols` option)
  #attempt = 0; // the current connection attempt: late token answers of others are ignored
  #protocol = null; // the subprotocol the hub selected on the open socket
  #options;
  #listeners = new Map(); // topic -> Set of listeners, in registration order
  #hubTopics = new Set(); // topics the hub holds for us (our session's subscriptions)
  #outbox = []; // encoded events not yet handed to a socket (B7)
  #socket = null;
  #welcomed = false; // the hub welcomed our socket: frames flow
  #closeRequested = false; // close() was called: it is flushing
  #closed = false;
  #closing = null; // close()'s promise
  #socketClosed = Promise.resolve();
  #spokeId = null;
  #failures = 0;
  #openedAt = 0;
  #retryTimer = null;
  #linkTimer = null; // the socket must open, then be welcomed, within connectTimeoutMs
  #pingCounter = 0;
  #pendingPings = new Map(); // nonce -> (answered: boolean) => void
  #openWaiters = new Set();
  #announced = null; // the hub's __close {code, reason} on this socket
  // The session (docs/protocol.md §5): its resume token, what we sent and the hub did
  // not confirm, what we received and what of it we acknowledged.
  #token = null;
  #sent = new SentLog();
  #received = 0;
  #receivedChars = 0;
  #ackedCount = 0;
  #ackedChars = 0;
  #welcomedBefore = false;
  // The heartbeat: frames each way, as seen at the last tick.
  #framesReceived = 0;
  #framesSent = 0;
  #heartbeatTimer = null;
  #heartbeatDue = 0;
  #heartbeatChained = false; // the pending tick was armed by a tick (see #armHeartbeat)
  #lastReceived = -1;
  #lastSent = -1;
  #silentTicks = 0;
  #ready;
  #settleReady;
  #stats = { attempts: 0, connections: 0, welcomes: 0, resumedSessions: 0, resentEvents: 0,
             gaps: 0, undeliveredEvents: 0, sentEvents: 0, receivedEvents: 0, invalidFrames: 0,
             unknownControl: 0, hubErrors: 0 };

  constructor(url, options = {}) {
    this.url = websocketUrl(url);
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('no WebSocket implementation: pass options.WebSocket (in Node 20, the `ws` package)');
    }
    this.#options = { ...DEFAULTS, ...options };
    const { subprotocol, token } = this.#options;
    if (subprotocol != null && (typeof subprotocol !== 'string' || !SUBPROTOCOL_PATTERN.test(subprotocol))) {
      throw new TypeError(`${JSON.stringify(subprotocol)} is not a valid WebSocket subprotocol (only ${TOKEN_CHARACTERS})`);
    }
    this.#protocols = extraProtocols(options.protocols);
    if (token != null && typeof token !== 'function') checkToken(token);
    const { backoffInitialMs, backoffMaxMs, outboxLimit, heartbeatIntervalMs, heartbeatTimeoutMs } = this.#options;
    if (!(backoffInitialMs > 0 && backoffMaxMs >= backoffInitialMs)) {
      throw new RangeError('need 0 < backoffInitialMs <= backoffMaxMs');
    }
    if (!(outboxLimit > 0)) throw new RangeError('outboxLimit must be positive');
    if (heartbeatIntervalMs != null && !(heartbeatIntervalMs > 0 && heartbeatTimeoutMs >= heartbeatIntervalMs)) {
      throw new RangeError('need 0 < heartbeatIntervalMs <= heartbeatTimeoutMs (or heartbeatIntervalMs: null)');
    }
    this.#ready = new Promise((resolve, reject) => {
      this.#settleReady = (error) => {
        this.#settleReady = null;
        error ? reject(error) : resolve();
      };
    });
    this.#ready.catch(() => {}); // a spoke nobody awaits is no unhandled rejection
    this.#connect();
  }

  /**
   * The id the hub gave this spoke (for `direct:<spokeId>`): set by every welcome, kept
   * while offline and across resumed sessions; null before the first welcome and after close.
   */
  get spokeId() { return this.#spokeId; }
  /** Welcomed by the hub: frames flow. */
  get connected() { return this.#welcomed; }
  /**
   * The subprotocol the hub selected on the open connection (`alkpubsub.v1`; '' when it
   * selected none); null while no connection is open.
   */
  get protocol() { return this.#protocol; }
  /** close() was called (or the hub refused the spoke for good). */
  get closed() { return this.#closed || this.#closeRequested; }
  /** Events waiting for the next connection. */
  get outboxSize() { return this.#outbox.length; }
  /** Data frames sent in this session and not yet acknowledged by the hub. */
  get unconfirmedSize() { return this.#sent.length; }
  /** True while the spoke holds a session the hub can resume. */
  get hasSession() { return this.#token !== null; }
  get stats() { return { ...this.#stats }; }
  listenerCount(topic) { return this.#listeners.get(topic)?.size ?? 0; }

  // -- TypedEventTarget ------------------------------------------------------------------

  addEventListener(topic, listener) {
    if (this.closed || listener == null) return;
    validateTopic(topic);
    if (typeof listener !== 'function' && typeof listener.handleEvent !== 'function') {
      throw new TypeError('a listener is a function or an object with handleEvent()');
    }
    let listeners = this.#listeners.get(topic);
    if (listeners === undefined) this.#listeners.set(topic, (listeners = new Set()));
    if (listeners.has(listener)) return;
    listeners.add(listener);
    if (listeners.size === 1 && this.#sendControl('__subscribe', { topic })) this.#hubTopics.add(topic);
  }

  removeEventListener(topic, listener) {
    if (this.closed || listener == null) return;
    const listeners = this.#listeners.get(topic);
    if (listeners === undefined || !listeners.delete(listener)) return;
    if (listeners.size === 0) {
      this.#listeners.delete(topic);
      if (this.#sendControl('__unsubscribe', { topic })) this.#hubTopics.delete(topic);
    }
  }

  /**
   * Send an envelope `{type, id, payload}` (or an event `{type: topic, detail: envelope}`).
   * Never blocks; throws BackpressureError when too much is waiting (B7, B13).
   */
  dispatchEvent(event) {
    if (this.closed) throw new TargetClosedError('spoke is closed');
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
      // B13: in a session, sent and not yet confirmed; otherwise not yet written.
      const session = this.#token !== null;
      const pending = session ? this.#sent.size : socket.bufferedAmount;
      if (pending > 0 && pending + frame.length > maxBufferedBytes) {
        const what = session ? 'not yet confirmed by the hub' : 'not yet written';
        throw new BackpressureError(`${pending} bytes ${what} (maxBufferedBytes=${maxBufferedBytes}); await spoke.flush()`);
      }
      this.#sendData(socket, frame);
    } else {
      if (this.#outbox.length + this.#sent.length >= outboxLimit) {
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

  /**
   * Resolves once the hub processed everything sent before the call (B4), across
   * reconnects; in a session the hub's answer also confirms every event sent before.
   */
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
        if (!this.#welcomed) return this.#openWaiters.add(attempt);
        // Unanswered when the connection drops: ping again on the next one.
        nonce = this.#ping((answered) => (answered ? done() : attempt()));
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

  /**
   * Idempotent. First delivers what was accepted (sent and, in a session, confirmed by
   * the hub) within closeTimeoutMs, then closes the socket with 1000, which ends the
   * session on the hub; what could not be delivered goes to onUndelivered. Afterwards
   * dispatchEvent throws and add/remove are no-ops (B11).
   */
  close() {
    if (this.#closing === null) this.#closing = this.#closeGracefully();
    return this.#closing;
  }

  async #closeGracefully() {
    this.#closeRequested = true;
    if (!this.#closed && (this.#outbox.length > 0 || this.#sent.length > 0)) {
      try {
        await this.flush(this.#options.closeTimeoutMs);
      } catch {
        // Not delivered in time: reported below.
      }
    }
    this.#shutdown(null, 'the spoke closed before the hub confirmed them');
    await this.#socketClosed;
  }

  // -- connection life cycle ---------------------------------------------------------------

  #connect() {
    if (this.#closed) return;
    this.#stats.attempts += 1;
    const attempt = ++this.#attempt;
    const { token, connectTimeoutMs } = this.#options;
    if (typeof token !== 'function') return this.#dial(attempt, token ?? null);
    // A token function runs at every attempt, so short-lived tokens stay fresh.
    let value;
    try {
      value = token();
    } catch (error) {
      return this.#attemptFailed(attempt, 'the token function failed', error);
    }
    if (typeof value?.then !== 'function') return this.#dial(attempt, value, true);
    const late = () => this.#attemptFailed(attempt, `no token within ${connectTimeoutMs} ms`);
    this.#linkTimer = setTimeout(late, connectTimeoutMs);
    Promise.resolve(value).then(
      (resolved) => this.#dial(attempt, resolved, true),
      (error) => this.#attemptFailed(attempt, 'the token function failed', error),
    );
  }

  /** An attempt that failed before it had a socket: reported, retried with backoff. */
  #attemptFailed(attempt, why, cause) {
    if (attempt !== this.#attempt || this.#closed || this.#socket !== null) return;
    this.#attempt += 1; // whatever this attempt's token function still answers is ignored
    clearTimeout(this.#linkTimer);
    const detail = cause === undefined ? '' : `: ${cause?.message ?? cause}`;
    this.#report(new ConnectionFailedError(`cannot connect to ${this.url}: ${why}${detail}`, { cause }));
    this.#scheduleReconnect(false);
  }

  /**
   * The subprotocols to offer: alkpubsub.v1, the token's, then the `protocols` option's.
   * A token function must answer a token (a forgotten `return` is no anonymous attempt).
   */
  #offer(token, fromFunction) {
    const offered = [];
    if (this.#options.subprotocol != null) offered.push(this.#options.subprotocol);
    if (fromFunction || token !== null) offered.push(TOKEN_PREFIX + checkToken(token));
    for (const protocol of this.#protocols) if (!offered.includes(protocol)) offered.push(protocol);
    return offered;
  }

  #dial(attempt, token, fromFunction = false) {
    if (attempt !== this.#attempt || this.#closed) return;
    clearTimeout(this.#linkTimer);
    let offered;
    try {
      offered = this.#offer(token, fromFunction);
    } catch (error) {
      return this.#attemptFailed(attempt, 'unusable token', error);
    }
    let socket;
    try {
      socket = new this.#WebSocket(this.url, offered.length > 0 ? offered : undefined);
    } catch (error) {
      return this.#attemptFailed(attempt, 'cannot open a WebSocket', error);
    }
    socket.binaryType = 'arraybuffer';
    this.#socket = socket;
    this.#announced = null;
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
    this.#linkTimer = setTimeout(() => this.#abandon(socket, `no connection within ${connectTimeoutMs} ms`), connectTimeoutMs);
  }

  #opened(socket) {
    clearTimeout(this.#linkTimer);
    this.#openedAt = Date.now();
    this.#stats.connections += 1;
    this.#protocol = typeof socket.protocol === 'string' ? socket.protocol : '';
    // §5: the hello, then nothing until the hub's welcome.
    const { session, heartbeatIntervalMs, connectTimeoutMs } = this.#options;
    const hello = { protocol: PROTOCOL_VERSION };
    if (session) {
      hello.session = true;
      if (this.#token !== null) {
        hello.resume = this.#token;
        hello.received = this.#received;
      }
    }
    if (heartbeatIntervalMs != null) hello.heartbeat = heartbeatIntervalMs / 1000;
    this.#send(socket, JSON.stringify({ type: '__hello', id: '', payload: hello }));
    const abandon = () => this.#abandon(socket, `the hub did not welcome this spoke within ${connectTimeoutMs} ms`);
    this.#linkTimer = setTimeout(abandon, connectTimeoutMs);
  }

  #welcome(payload) {
    const socket = this.#socket;
    // Only a link's first frame welcomes. (`ws` may hand over frames that arrived just
    // before the connection ended, from a socket already CLOSING: #open copes.)
    if (this.#welcomed || socket === null) return;
    clearTimeout(this.#linkTimer);
    const token = typeof payload.token === 'string' && payload.token ? payload.token : null;
    const confirmed = countOf(payload.received) ?? 0;
    const resumed = token !== null && payload.resumed === true && this.#token !== null && this.#sent.ack(confirmed);
    let resend = [];
    let undelivered = [];
    let gap;
    if (resumed) {
      resend = this.#sent.clear(); // not confirmed: sent again, and counted again
      gap = payload.gap === true;
      this.#stats.resumedSessions += 1;
      this.#stats.resentEvents += resend.length;
    } else {
      gap = this.#welcomedBefore;
      undelivered = this.#sent.clear();
      this.#sent = new SentLog();
      this.#received = this.#receivedChars = this.#ackedCount = this.#ackedChars = 0;
      this.#hubTopics.clear();
    }
    this.#welcomedBefore = true;
    this.#token = this.#options.session ? token : null;
    this.#spokeId = typeof payload.spoke_id === 'string' && payload.spoke_id ? payload.spoke_id : null;
    this.#stats.welcomes += 1;
    this.#stats.gaps += gap ? 1 : 0;
    this.#stats.undeliveredEvents += undelivered.length;
    // Before anything goes out: listeners moved here (say, to the new `direct:` inbox)
    // are what the hub gets, and events dispatched here follow the outbox.
    if (undelivered.length > 0) this.#undelivered(undelivered);
    const spokeId = this.#spokeId;
    this.#callback('onSession', Object.freeze({ spokeId, resumed, gap, undelivered: undelivered.length }));
    if (this.#closed || socket !== this.#socket) return;
    this.#open(socket, resend);
    this.#settleReady?.(null);
    this.#callback('onConnect', spokeId);
    const waiters = [...this.#openWaiters];
    this.#openWaiters.clear();
    for (const waiter of waiters) waiter();
  }

  /** Welcomed: subscriptions first, then what the hub did not confirm, then the outbox (B7). */
  #open(socket, resend) {
    this.#welcomed = true;
    if (socket.readyState !== OPEN) {
      // Already closing: everything waits for the next link, in order.
      this.#outbox = [...resend, ...this.#outbox];
      return;
    }
    const topics = [...this.#listeners.keys()];
    for (const topic of this.#hubTopics) {
      if (!this.#listeners.has(topic)) this.#sendControl('__unsubscribe', { topic });
    }
    for (const topic of topics) this.#sendControl('__subscribe', { topic });
    this.#hubTopics = new Set(topics);
    for (const frame of resend) this.#sendData(socket, frame);
    const outbox = this.#outbox;
    this.#outbox = [];
    for (const frame of outbox) this.#sendData(socket, frame);
    this.#startHeartbeat();
  }

  /** We give up on a socket (timeouts, heartbeat): closed with 4000, so the hub keeps the session. */
  #abandon(socket, why) {
    this.#lost(socket, CloseCode.ABNORMAL, why, why);
    closeSocket(socket, CloseCode.RECONNECTING, 'reconnecting');
  }

  #lost(socket, code, reason, failure) {
    if (socket !== this.#socket) return;
    this.#socket = null;
    this.#protocol = null;
    clearTimeout(this.#linkTimer);
    this.#stopHeartbeat();
    const wasWelcomed = this.#welcomed;
    this.#welcomed = false;
    // A close frame lost behind the hub's __close: report what the hub announced.
    const announced = this.#announced;
    if (announced !== null && (code == null || NO_CLOSE_CODES.includes(code))) {
      ({ code, reason } = announced);
    }
    if (wasWelcomed) this.#callback('onDisconnect', code, reason);
    if (this.#closed) return; // onDisconnect closed the spoke
    if (this.#options.finalCloseCodes.includes(code)) {
      const refusal = new ConnectionRefusedByHubError(
        `hub refused this spoke with close code ${code}${reason ? `: ${reason}` : ''}; not reconnecting`,
        { closeCode: code },
      );
      this.#report(refusal);
      return this.#shutdown(refusal, 'the hub refused this spoke for good');
    }
    if (!wasWelcomed) {
      // Node's `ws` names the HTTP status of a refused upgrade; browsers hide it.
      const status = Number(/Unexpected server response: (\d{3})/.exec(failure)?.[1] ?? 0) || null;
      const closeCode = code == null || NO_CLOSE_CODES.includes(code) ? null : code;
      const closed = closeCode === null ? '' : ` (closed with ${closeCode}${reason ? `: ${reason}` : ''})`;
      const message = `cannot connect to ${this.url}${failure ? `: ${failure}` : ''}${closed}`;
      const Failure = status === 401 || status === 403 ? ConnectionRefusedByHubError : ConnectionFailedError;
      this.#report(new Failure(message, { status, closeCode: Failure === ConnectionFailedError ? closeCode : null }));
    }
    const pings = [...this.#pendingPings.values()];
    this.#pendingPings.clear();
    for (const ping of pings) ping(false);
    this.#scheduleReconnect(wasWelcomed);
  }

  #scheduleReconnect(wasWelcomed) {
    if (this.#closed) return;
    const { backoffInitialMs, backoffMaxMs } = this.#options;
    // Only a connection that lived longer than the cap resets the backoff: one that
    // dies at once counts as a failure, so nothing ever retries in a tight loop.
    if (wasWelcomed && Date.now() - this.#openedAt > backoffMaxMs) this.#failures = 0;
    const delay = backoffDelay(this.#failures, backoffInitialMs, backoffMaxMs);
    this.#failures += 1;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#connect();
    }, delay);
  }

  #shutdown(error, why) {
    if (this.#closed) return;
    this.#closed = true;
    this.#welcomed = false;
    this.#spokeId = null;
    this.#token = null;
    this.#protocol = null;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#linkTimer);
    this.#stopHeartbeat();
    this.#listeners.clear();
    const undelivered = [...this.#sent.clear(), ...this.#outbox];
    this.#outbox = [];
    this.#stats.undeliveredEvents += undelivered.length;
    const socket = this.#socket;
    this.#socket = null;
    // 1000 ends the session on the hub: this spoke is gone for good.
    if (socket !== null) this.#socketClosed = closeSocket(socket);
    if (this.#closing === null) this.#closing = this.#socketClosed;
    this.#settleReady?.(error ?? new TargetClosedError('spoke closed before the hub welcomed it'));
    const waiters = [...this.#pendingPings.values(), ...this.#openWaiters];
    this.#pendingPings.clear();
    this.#openWaiters.clear();
    for (const waiter of waiters) waiter(false);
    if (undelivered.length > 0) this.#undelivered(undelivered, why);
  }

  // -- heartbeat (docs/protocol.md §5) -------------------------------------------------------

  #startHeartbeat() {
    if (this.#options.heartbeatIntervalMs == null) return;
    this.#lastReceived = this.#lastSent = -1;
    this.#silentTicks = 0;
    this.#armHeartbeat(false);
  }

  #stopHeartbeat() {
    clearTimeout(this.#heartbeatTimer);
    this.#heartbeatTimer = null;
  }

  // Browsers throttle long chains of timers in hidden pages (each armed by the previous
  // one) far more than timers armed by network events; a tick armed by a tick is
  // re-armed, for the same moment, by the next frame that arrives.
  #armHeartbeat(chained, due = Date.now() + this.#options.heartbeatIntervalMs) {
    clearTimeout(this.#heartbeatTimer);
    this.#heartbeatDue = due;
    this.#heartbeatChained = chained;
    this.#heartbeatTimer = setTimeout(() => this.#tick(), Math.max(0, due - Date.now()));
  }

  /** One heartbeat interval passed: ping when it was silent either way; lost after the timeout. */
  #tick() {
    const socket = this.#socket;
    if (!this.#welcomed || socket === null) return;
    const { heartbeatIntervalMs, heartbeatTimeoutMs } = this.#options;
    const receivedNothing = this.#framesReceived === this.#lastReceived;
    const sentNothing = this.#framesSent === this.#lastSent;
    this.#lastReceived = this.#framesReceived;
    this.#lastSent = this.#framesSent;
    this.#silentTicks = receivedNothing ? this.#silentTicks + 1 : 0;
    if (this.#silentTicks >= Math.ceil(heartbeatTimeoutMs / heartbeatIntervalMs)) {
      return this.#abandon(socket, `nothing heard from the hub for ${heartbeatTimeoutMs} ms`);
    }
    if (receivedNothing || sentNothing) this.#ping(() => {});
    this.#armHeartbeat(true);
  }

  // -- frames --------------------------------------------------------------------------------

  #liveSocket() {
    const socket = this.#socket;
    return this.#welcomed && socket !== null && socket.readyState === OPEN ? socket : null;
  }

  #send(socket, frame) {
    socket.send(frame);
    this.#framesSent += 1;
  }

  #sendData(socket, frame) {
    this.#send(socket, frame);
    if (this.#token !== null) this.#sent.record(frame);
  }

  /** False while offline: nothing to do, subscriptions are brought up to date on welcome. */
  #sendControl(type, payload, id = '') {
    const socket = this.#liveSocket();
    if (socket === null) return false;
    this.#send(socket, JSON.stringify({ type, id, payload }));
    return true;
  }

  /** Sends a __ping (with our count, in a session); returns its nonce. */
  #ping(answered) {
    const nonce = String(++this.#pingCounter);
    this.#pendingPings.set(nonce, answered);
    this.#sendCounted('__ping', nonce);
    return nonce;
  }

  /** A control frame that carries, in a session, our count: an acknowledgement. */
  #sendCounted(type, id = '') {
    if (this.#liveSocket() === null) return;
    if (this.#token === null) {
      this.#sendControl(type, {}, id);
      return;
    }
    this.#ackedCount = this.#received;
    this.#ackedChars = this.#receivedChars;
    this.#sendControl(type, { received: this.#received }, id);
  }

  #receive(data) {
    this.#framesReceived += 1;
    if (this.#heartbeatChained && this.#heartbeatTimer !== null) this.#armHeartbeat(false, this.#heartbeatDue);
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
    if (this.#token !== null) {
      // §5: count it, and acknowledge every ACK_EVERY_FRAMES frames or ACK_EVERY_CHARS.
      this.#received += 1;
      this.#receivedChars += text.length;
      if (this.#received - this.#ackedCount >= ACK_EVERY_FRAMES || this.#receivedChars - this.#ackedChars >= ACK_EVERY_CHARS) {
        this.#sendCounted('__ack');
      }
    }
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
      case '__ack':
        this.#acked(payload);
        break;
      case '__pong': {
        this.#acked(payload);
        const pending = this.#pendingPings.get(envelope.id);
        if (pending !== undefined) {
          this.#pendingPings.delete(envelope.id);
          pending(true);
        }
        break;
      }
      case '__ping':
        this.#acked(payload);
        this.#sendCounted('__pong', envelope.id);
        break;
      case '__welcome':
        this.#welcome(payload);
        break;
      case '__error': {
        this.#stats.hubErrors += 1;
        const code = String(payload.code ?? 'unknown');
        const topic = typeof payload.topic === 'string' ? payload.topic : null;
        const Refusal = COMPLAINTS.includes(code) ? ProtocolComplaintError : HubRefusalError;
        this.#report(new Refusal(code, String(payload.message ?? ''), topic));
        break;
      }
      case '__close': {
        const { code, reason } = payload;
        if (Number.isInteger(code) && code >= 0 && code <= 4999) {
          this.#announced = { code, reason: typeof reason === 'string' ? reason : '' };
        } else {
          this.#stats.invalidFrames += 1;
        }
        break;
      }
      default:
        this.#stats.unknownControl += 1; // C2: forward compatibility
    }
  }

  /** The hub confirmed data frames (an __ack, or the count on a __ping/__pong). */
  #acked(payload) {
    if (this.#token === null) return;
    const received = countOf(payload.received);
    if (received !== null && !this.#sent.ack(received)) this.#stats.invalidFrames += 1; // more than we sent
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

  /** Events accepted by dispatchEvent that may not have reached the hub: never dropped silently. */
  #undelivered(frames, why = 'the hub could not resume the session') {
    const envelopes = frames.map((frame) => decode(frame));
    if (typeof this.#options.onUndelivered !== 'function') {
      return console.warn(`alkpubsub: ${frames.length} events may not have reached the hub: ${why}`);
    }
    this.#callback('onUndelivered', envelopes);
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

// Runs JS spokes on behalf of pytest, in Node (node_driver.mjs) or in a Chromium page
// (harness.html, driven by browser_driver.mjs). Commands come in as objects
// {op, spoke, ...}; every callback and received event goes out through `report`.
// The same code runs in both places, so every test exercises both runtimes.

export function createHarness({ alkpubsub, WebSocket, report }) {
  const spokes = new Map(); // name -> spoke
  const listeners = new Map(); // `${spoke}/${listener}` -> function (same name = same listener)
  const rawSockets = new Map(); // name -> raw WebSocket (B10 garbage senders)

  const describe = (error) => ({
    name: error?.name ?? typeof error,
    message: String(error?.message ?? error),
    code: error?.code ?? null,
    topic: error?.topic ?? null,
    status: error?.status ?? null,
    closeCode: error?.closeCode ?? null,
    final: error?.final ?? null,
  });

  function spokeNamed(name) {
    const spoke = spokes.get(name);
    if (spoke === undefined) throw new Error(`no spoke named ${name}`);
    return spoke;
  }

  function listenerNamed(spoke, name) {
    const key = `${spoke}/${name}`;
    if (!listeners.has(key)) {
      listeners.set(key, (event) => {
        report({ event: 'message', spoke, listener: name, topic: event.type, envelope: event.detail });
        if (name.startsWith('throwing')) throw new Error(`${name} fails on purpose`);
      });
    }
    return listeners.get(key);
  }

  const ops = {
    create({ spoke, url, options = {}, headers = null, helloPatch = null, followDirect = false, tokens = null }) {
      // HTTP headers on the upgrade: only the `ws` package can (a subclass, as in the docs).
      let Socket = headers === null ? WebSocket : class extends WebSocket {
        constructor(url, protocols) {
          super(url, protocols, { headers });
        }
      };
      // Fields added to every __hello this spoke sends (a stolen resume token, say).
      if (helloPatch !== null) {
        Socket = class extends Socket {
          send(data) {
            if (typeof data === 'string' && data.startsWith('{"type":"__hello"')) {
              const hello = JSON.parse(data);
              data = JSON.stringify({ ...hello, payload: { ...hello.payload, ...helloPatch } });
            }
            super.send(data);
          }
        };
      }
      // A token function (options.token), called at every connection attempt: the next
      // of `tokens` ({value} or {error}, after delayMs), the last one for ever after.
      let token = options.token;
      if (tokens !== null) {
        let calls = 0;
        token = async () => {
          const call = calls++;
          const { value = null, error = null, delayMs = 0 } = tokens[Math.min(call, tokens.length - 1)];
          report({ event: 'token', spoke, call, at: Date.now() });
          if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
          report({ event: 'token-answered', spoke, call, at: Date.now() });
          if (error !== null) throw new Error(error);
          return value;
        };
      }
      // The docs' way to keep a `direct:` inbox across sessions: move its listener to
      // the new spoke id in onSession, before the spoke subscribes.
      let inbox = null;
      const onDirect = listenerNamed(spoke, 'inbox');
      const created = alkpubsub.createWebSocketSpoke(url, {
        WebSocket: Socket,
        ...options,
        token,
        onConnect: (spokeId) => report({ event: 'connect', spoke, spokeId, at: Date.now() }),
        onDisconnect: (code, reason) => report({ event: 'disconnect', spoke, code, reason, at: Date.now() }),
        onSession: (session) => {
          report({ event: 'session', spoke, ...session, at: Date.now() });
          if (followDirect && inbox !== `direct:${session.spokeId}`) {
            if (inbox !== null) created.removeEventListener(inbox, onDirect);
            inbox = `direct:${session.spokeId}`;
            created.addEventListener(inbox, onDirect);
          }
        },
        onUndelivered: (envelopes) => report({ event: 'undelivered', spoke, envelopes }),
        onError: (error) => report({ event: 'error', spoke, error: describe(error), at: Date.now() }),
        onListenerError: (error, event) => report({ event: 'listener-error', spoke, topic: event.type, error: describe(error) }),
      });
      spokes.set(spoke, created);
      return { url: created.url };
    },
    ready: ({ spoke, timeoutMs }) => spokeNamed(spoke).ready(timeoutMs).then(() => spokeNamed(spoke).spokeId),
    listen({ spoke, topic, listener = 'main' }) {
      spokeNamed(spoke).addEventListener(topic, listener === null ? null : listenerNamed(spoke, listener));
    },
    unlisten({ spoke, topic, listener = 'main' }) {
      spokeNamed(spoke).removeEventListener(topic, listener === null ? null : listenerNamed(spoke, listener));
    },
    // payloadJson: a payload JSON can carry but a driver may not pass intact (lone surrogates).
    publish: ({ spoke, type, id, payload, payloadJson = null }) =>
      spokeNamed(spoke).publish(type, id, payloadJson === null ? payload : JSON.parse(payloadJson)),
    dispatch: ({ spoke, event }) => spokeNamed(spoke).dispatchEvent(event),
    // Many events in one command (order, outbox): stops at the first error and says where.
    publishMany({ spoke, type, id, count, payloadBytes = 0, start = 0 }) {
      const target = spokeNamed(spoke);
      const padding = 'x'.repeat(payloadBytes);
      for (let index = start; index < start + count; index += 1) {
        try {
          target.publish(type, id, payloadBytes ? { index, padding } : index);
        } catch (error) {
          return { published: index - start, error: describe(error) };
        }
      }
      return { published: count, error: null };
    },
    flush: ({ spoke, timeoutMs }) => spokeNamed(spoke).flush(timeoutMs),
    // Resolves once closed; closing (not awaited) runs concurrently with later commands.
    close: ({ spoke, wait = true }) => {
      const closing = spokeNamed(spoke).close();
      return wait ? closing : null;
    },
    state({ spoke, topic = null }) {
      const target = spokeNamed(spoke);
      return {
        connected: target.connected,
        closed: target.closed,
        protocol: target.protocol,
        spokeId: target.spokeId,
        outboxSize: target.outboxSize,
        unconfirmedSize: target.unconfirmedSize,
        hasSession: target.hasSession,
        stats: target.stats,
        listenerCount: topic === null ? null : target.listenerCount(topic),
      };
    },
    // B10: a raw WebSocket that sends whatever it is told, text or bytes.
    rawOpen({ name, url }) {
      return new Promise((resolve, reject) => {
        const socket = new WebSocket(url);
        socket.binaryType = 'arraybuffer';
        rawSockets.set(name, socket);
        socket.onopen = () => resolve(null);
        socket.onerror = () => reject(new Error(`raw socket ${name} failed to open`));
        socket.onmessage = (event) => {
          if (typeof event.data === 'string') report({ event: 'raw-message', name, data: event.data });
        };
        socket.onclose = (event) => report({ event: 'raw-close', name, code: event.code, reason: event.reason });
      });
    },
    rawSend({ name, text = null, bytes = null, envelopeOfBytes = 0 }) {
      const socket = rawSockets.get(name);
      if (envelopeOfBytes) text = JSON.stringify({ type: 'big', id: 'x', payload: 'x'.repeat(envelopeOfBytes) });
      socket.send(text !== null ? text : new Uint8Array(bytes));
    },
    async reset() {
      await Promise.all([...spokes.values()].map((spoke) => spoke.close()));
      for (const socket of rawSockets.values()) socket.close();
      spokes.clear();
      listeners.clear();
      rawSockets.clear();
    },
  };

  return async function handle(command) {
    const op = ops[command.op];
    if (op === undefined) throw new Error(`unknown op ${command.op}`);
    try {
      return { ok: true, result: (await op(command)) ?? null };
    } catch (error) {
      return { ok: false, error: describe(error) };
    }
  };
}

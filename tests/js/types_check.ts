// Compiled by tests/test_js_spoke.py with `tsc --noEmit --strict`: the declarations in
// alkpubsub/static/alkpubsub.d.ts describe the module as the docs use it.
import {
  BackpressureError,
  ConnectionFailedError,
  ConnectionRefusedByHubError,
  createWebSocketSpoke,
  HubRefusalError,
  ProtocolComplaintError,
  SUBPROTOCOL,
  TOKEN_PREFIX,
  type EventEnvelope,
  type SessionInfo,
  type SpokeEvent,
} from '../../alkpubsub/static/alkpubsub.js';

interface JobStatus {
  state: string;
  progress: number;
}

export async function example(): Promise<string | null> {
  // The docs' `direct:` inbox that follows the spoke id across sessions.
  let inbox: string | null = null;
  const onDirect = (event: SpokeEvent) => console.log('direct', event.detail.payload);
  const spoke = createWebSocketSpoke('ws://127.0.0.1:8765/', {
    session: true,
    heartbeatIntervalMs: 1_000,
    heartbeatTimeoutMs: 3_000,
    closeTimeoutMs: 2_000,
    onConnect: (spokeId) => console.log('welcomed as', spokeId?.toUpperCase()),
    onSession: ({ spokeId, resumed, gap, undelivered }: SessionInfo) => {
      if (gap) console.log('events may have been missed', resumed, undelivered + 1);
      if (inbox !== `direct:${spokeId}`) {
        if (inbox !== null) spoke.removeEventListener(inbox, onDirect);
        inbox = `direct:${spokeId}`;
        spoke.addEventListener(inbox, onDirect);
      }
    },
    onUndelivered: (envelopes: EventEnvelope[]) => console.log(envelopes.map((e) => e.type)),
    onDisconnect: (code, reason) => console.log(code + 1, reason.length),
    onError: (error) => {
      if (error instanceof ProtocolComplaintError) console.log('the hub dropped a frame', error.code);
      else if (error instanceof HubRefusalError) console.log(error.code, error.topic);
      if (error instanceof ConnectionRefusedByHubError && error.final) console.log(error.closeCode);
      else if (error instanceof ConnectionFailedError) console.log(error.status, error.closeCode);
    },
  });
  createWebSocketSpoke('ws://127.0.0.1:8765/', { session: false, heartbeatIntervalMs: null });
  // The docs' browser auth recipes: a fixed token, a token fetched at every connection.
  createWebSocketSpoke('/ws', { token: 'eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl', protocols: ['chat.v2'] });
  createWebSocketSpoke('/ws', {
    token: async () => (await (await fetch('/token', { method: 'POST' })).json()).token as string,
  });
  createWebSocketSpoke('/ws', { token: () => 'static.value', subprotocol: null, protocols: 'other' });
  await spoke.ready(5_000);
  const listener = (event: SpokeEvent<JobStatus>) => console.log(event.type, event.detail.payload.progress + 1);
  spoke.addEventListener<JobStatus>('job.status:42', listener);
  spoke.addEventListener('job.status:42', { handleEvent: (event) => console.log(event.detail.id) });
  try {
    spoke.publish('job.status', '42', { state: 'done', progress: 100 });
  } catch (error) {
    if (error instanceof BackpressureError) await spoke.flush();
  }
  spoke.dispatchEvent({ type: 'job.status', id: '42', payload: null });
  spoke.removeEventListener('job.status:42', listener);
  const sent: number = spoke.stats.sentEvents + spoke.outboxSize + spoke.listenerCount('job.status:42');
  const { resumedSessions, resentEvents, gaps, undeliveredEvents, welcomes } = spoke.stats;
  console.log(sent + spoke.unconfirmedSize, resumedSessions + resentEvents + gaps + undeliveredEvents + welcomes);
  console.log(spoke.connected, spoke.closed, spoke.hasSession, spoke.url);
  const negotiated: string | null = spoke.protocol;
  console.log(negotiated === SUBPROTOCOL, TOKEN_PREFIX.length);
  await spoke.close();
  return spoke.spokeId;
}

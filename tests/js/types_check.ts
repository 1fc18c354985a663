// Compiled by tests/test_js_spoke.py with `tsc --noEmit --strict`: the declarations in
// alkpubsub/static/alkpubsub.d.ts describe the module as the docs use it.
import {
  BackpressureError,
  ConnectionRefusedByHubError,
  createWebSocketSpoke,
  HubRefusalError,
  type SpokeEvent,
} from '../../alkpubsub/static/alkpubsub.js';

interface JobStatus {
  state: string;
  progress: number;
}

export async function example(): Promise<string | null> {
  const spoke = createWebSocketSpoke('ws://127.0.0.1:8765/', {
    onConnect: (spokeId) => console.log('welcomed as', spokeId?.toUpperCase()),
    onDisconnect: (code, reason) => console.log(code + 1, reason.length),
    onError: (error) => {
      if (error instanceof HubRefusalError) console.log(error.code, error.topic);
      if (error instanceof ConnectionRefusedByHubError && error.final) console.log(error.closeCode);
    },
  });
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
  console.log(sent, spoke.connected, spoke.closed, spoke.url);
  await spoke.close();
  return spoke.spokeId;
}

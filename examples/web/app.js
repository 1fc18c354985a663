// The live job dashboard: one JS spoke, topics per job, subscriptions that come and go.
import { createWebSocketSpoke } from '/static/alkpubsub.js';

const status = document.querySelector('#status');
const notice = document.querySelector('#notice');
const rows = document.querySelector('#jobs');
const jobs = new Map(); // job id -> its table row

function showStatus(text, online) {
  status.textContent = text;
  status.className = `badge ${online ? 'online' : 'offline'}`;
}

function showNotice(text) {
  notice.textContent = text;
  notice.hidden = false;
}

const spoke = createWebSocketSpoke('/ws', {
  onConnect: (spokeId) => showStatus(`online as ${spokeId}`, true),
  onDisconnect: (code) => showStatus(`offline (${code}), reconnecting…`, false),
  // A resumed session misses nothing; after a hub restart updates may be missing.
  onSession: ({ gap }) => gap && showNotice('Reconnected to a new hub session: updates may have been missed.'),
  // Requests the old session never confirmed: say so rather than wait for ever.
  onUndelivered: (envelopes) => {
    for (const { type, payload } of envelopes) {
      const row = type === 'job.request' ? jobs.get(payload?.job_id) : undefined;
      if (row !== undefined) row.querySelector('.state').textContent = 'maybe not sent: start it again';
    }
  },
  onError: (error) => console.warn(error.message),
});
window.spoke = spoke; // for the console (and the example's test)

// Follow one job: its status topic has a listener only while the job runs.
function follow(jobId, label) {
  if (jobs.has(jobId)) return;
  const row = rows.insertRow(0);
  row.innerHTML = '<td class="label"></td><td class="state">waiting</td><td><progress max="100" value="0"></progress> <span class="pct">0%</span></td>';
  row.querySelector('.label').textContent = label;
  row.dataset.job = jobId;
  jobs.set(jobId, row);
  const topic = `job.status:${jobId}`;
  const onStatus = ({ detail: { payload } }) => {
    row.querySelector('.state').textContent = payload.state;
    row.querySelector('progress').value = payload.progress;
    row.querySelector('.pct').textContent = `${payload.progress}%`;
    row.className = payload.state;
    if (payload.state === 'done') spoke.removeEventListener(topic, onStatus); // __unsubscribe
  };
  spoke.addEventListener(topic, onStatus); // __subscribe
}

spoke.addEventListener('job.created:dashboard', ({ detail }) => follow(detail.payload.job_id, detail.payload.label));
spoke.addEventListener('notice:dashboard', ({ detail }) => {
  showNotice(typeof detail.payload === 'string' ? detail.payload : JSON.stringify(detail.payload));
});

document.querySelector('#new-job').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = document.querySelector('#label');
  const label = input.value.trim() || 'unnamed job';
  const jobId = Math.random().toString(36).slice(2, 10);
  follow(jobId, label);
  input.value = '';
  try {
    await spoke.flush(); // our job.status subscription is live on the hub: no update is missed
    spoke.publish('job.request', 'dashboard', { job_id: jobId, label });
  } catch (error) {
    jobs.get(jobId).querySelector('.state').textContent = `not sent: ${error.message}`;
  }
});

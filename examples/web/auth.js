// Three ways to authenticate a JS spoke to the hub (examples/browser_auth.py).
import { createWebSocketSpoke } from '/static/alkpubsub.js';

const { hub } = await (await fetch('/config')).json(); // ws://<this host>:<hub port>/
const spokes = {};
window.spokes = spokes; // for the console (and the example's test)

/** A short-lived token from the web app, which knows us by our session cookie. */
async function newToken() {
  const response = await fetch('/token', { method: 'POST' });
  if (!response.ok) throw new Error(`no token (HTTP ${response.status}): sign in first`);
  return (await response.json()).token;
}

const recipes = {
  // 1. The session cookie: nothing to do, the browser sends it (same host, any port).
  cookie: async () => createWebSocketSpoke(hub, callbacks('cookie')),
  // 2. A token in the URL. The URL, and so the token, is fixed for the spoke's life:
  //    a reconnection after the token expired is refused (4401, final).
  query: async () => {
    const url = new URL(hub);
    url.searchParams.set('token', await newToken());
    return createWebSocketSpoke(url.href, callbacks('query'));
  },
  // 3. A token in a second subprotocol ("token." + token), fetched at every (re)connection.
  subprotocol: async () => createWebSocketSpoke(hub, { ...callbacks('subprotocol'), token: newToken }),
  // A token the web app never signed: the hub refuses it, cookie or not.
  forged: async () => createWebSocketSpoke(hub, { ...callbacks('forged'), token: 'bob.4102444800.x.forged' }),
};

function callbacks(recipe) {
  const status = document.querySelector(`#${recipe} .status`);
  let connections = 0;
  return {
    onConnect: (spokeId) => {
      connections += 1;
      status.textContent = `online (#${connections}) as ${spokeId}, subprotocol ${spokes[recipe].protocol}`;
    },
    onDisconnect: (code) => (status.textContent = `offline (${code}), reconnecting…`),
    onError: (error) => {
      // 4401/4403 are final: the spoke closed itself. Anything else is retried.
      status.textContent = error.final ? `refused (${error.closeCode}): not reconnecting` : `retrying: ${error.message}`;
    },
  };
}

document.querySelector('#sign-in').addEventListener('submit', async (event) => {
  event.preventDefault();
  const user = document.querySelector('#user').value.trim();
  const response = await fetch('/login', { method: 'POST', body: JSON.stringify({ user }) });
  const who = document.querySelector('#who');
  who.textContent = response.ok ? `signed in as ${(await response.json()).user}` : 'sign-in failed';
  who.className = `badge ${response.ok ? 'online' : 'offline'}`;
});

for (const button of document.querySelectorAll('button[data-recipe]')) {
  button.addEventListener('click', async () => {
    const { recipe } = button.dataset;
    button.disabled = true;
    try {
      spokes[recipe] = await recipes[recipe]();
    } catch (error) {
      document.querySelector(`#${recipe} .status`).textContent = `not connected: ${error.message}`;
      button.disabled = false;
    }
  });
}

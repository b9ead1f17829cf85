// The console: one page, hash routes. Each page module exports render(root, params, ctx) and may return a
// cleanup function (stop polling, drop key handlers) called when the route changes.

import { session, revokeImages } from './api.js';
import { h, clear } from './dom.js';
import * as signin from './pages/signin.js';
import * as datasets from './pages/datasets.js';
import * as dataset from './pages/dataset.js';
import * as items from './pages/items.js';
import * as queue from './pages/queue.js';
import * as tryit from './pages/tryit.js';

const ROUTES = [
  [/^#\/signin$/, signin, 'Sign in'],
  [/^#\/datasets$/, datasets, 'Datasets'],
  [/^#\/d\/([^/]+)$/, dataset, 'Dataset'],
  [/^#\/d\/([^/]+)\/items$/, items, 'Items'],
  [/^#\/d\/([^/]+)\/queue$/, queue, 'Label queue'],
  [/^#\/d\/([^/]+)\/try$/, tryit, 'Try it'],
];

const main = document.getElementById('main');
const status = document.getElementById('status');
let cleanup = null;
let pending = '';
let flash = ''; // a message for the next page (the route change clears the status line)

export function announce(text) {
  status.textContent = text;
}

export function datasetLink(name, page = '') {
  return `#/d/${encodeURIComponent(name)}${page ? `/${page}` : ''}`;
}

function renderChrome(name, current) {
  const nav = clear(document.getElementById('nav'));
  const sessionBox = clear(document.getElementById('session'));
  if (!session.token) return;
  const links = [['#/datasets', 'Datasets']];
  if (name) {
    links.push([datasetLink(name), 'Dataset'], [datasetLink(name, 'items'), 'Items'],
      [datasetLink(name, 'queue'), 'Label queue'], [datasetLink(name, 'try'), 'Try it']);
  }
  nav.append(h('ul', {}, links.map(([href, label]) => h('li', {},
    h('a', { href, 'aria-current': label === current ? 'page' : false }, label)))));
  if (name) sessionBox.append(h('span', { class: 'current', dir: 'auto' }, name));
  sessionBox.append(h('button', {
    type: 'button',
    class: 'link',
    onclick: () => {
      session.signOut();
      location.hash = '#/signin';
    },
  }, 'Sign out'));
}

async function route() {
  const hash = location.hash || '#/datasets';
  if (cleanup) {
    try {
      cleanup();
    } catch {
      // a page's cleanup never blocks the next page
    }
    cleanup = null;
  }
  revokeImages();
  if (!session.token && hash !== '#/signin') {
    pending = hash;
    location.replace('#/signin');
    return;
  }
  let match = null;
  let found = null;
  for (const [pattern, page, title] of ROUTES) {
    match = hash.match(pattern);
    if (match) {
      found = { page, title };
      break;
    }
  }
  if (!found) {
    location.replace('#/datasets');
    return;
  }
  const params = match.slice(1).map(decodeURIComponent);
  renderChrome(params[0], found.title);
  document.title = `${found.title}${params[0] ? ` · ${params[0]}` : ''} · Kashf`;
  clear(main);
  announce(flash);
  flash = '';
  const ctx = {
    announce,
    datasetLink,
    signedIn: () => {
      const next = pending && pending !== '#/signin' ? pending : '#/datasets';
      pending = '';
      location.hash = next;
    },
  };
  // Each page renders into its own element: a page still loading when the route changes writes into a
  // detached element, never into the next page.
  const view = h('div', { class: 'view' });
  main.append(view);
  try {
    const done = (await found.page.render(view, params, ctx)) || null;
    if (view.isConnected) cleanup = done;
    else if (done) done();
  } catch (error) {
    view.append(h('div', { class: 'notice error', role: 'alert' }, error.text || String(error.message || error)));
  }
  main.focus({ preventScroll: true });
}

window.addEventListener('kashf:unauthorized', () => {
  if (location.hash === '#/signin') return;
  session.signOut();
  pending = location.hash;
  flash = 'The token was refused: sign in again.';
  location.hash = '#/signin';
});
window.addEventListener('hashchange', route);
route();

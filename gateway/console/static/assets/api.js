// The public API, called with the token of this browser tab. The token lives in sessionStorage only: it is
// sent in the Authorization header, never put in a URL, and never logged.

const KEY = 'kashf.token';

export const session = {
  get token() {
    return sessionStorage.getItem(KEY);
  },
  signIn(token) {
    sessionStorage.setItem(KEY, token);
  },
  signOut() {
    sessionStorage.removeItem(KEY);
    revokeImages();
  },
};

export class ApiError extends Error {
  constructor(status, code, detail, endpoint) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.endpoint = endpoint;
  }

  /** The server has no such endpoint (yet): an older gateway. */
  get missing() {
    return this.status === 405 || (this.status === 404 && this.detail === 'no such endpoint');
  }

  /** A sentence for the page. */
  get text() {
    if (this.missing) return `This server does not offer ${this.endpoint} yet.`;
    if (this.status === 0) return 'The server could not be reached. Is the stack running?';
    return `${this.endpoint}: ${this.detail} (${this.status} ${this.code})`;
  }
}

// Answers worth asking again, up to RETRIES times: a refusal for rate (429, before the endpoint ran; its
// Retry-After says when, at most MAX_WAIT_MS), and for a read (GET) the passing ones (502, 503, 504, the server
// unreachable). A POST that may have done its work is never sent twice.
const RETRIES = 3;
const MAX_WAIT_MS = 10_000;
const TRANSIENT = new Set([502, 503, 504]);

function retryDelay(response, attempt) {
  const after = Number(response ? response.headers.get('Retry-After') : NaN);
  const ms = Number.isFinite(after) && after > 0 ? after * 1000 : 250 * 2 ** attempt;
  return Math.min(ms, MAX_WAIT_MS);
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function request(endpoint, path, init) {
  const headers = new Headers(init.headers || {});
  if (session.token) headers.set('Authorization', `Token ${session.token}`);
  const read = (init.method || 'GET') === 'GET';
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await fetch(path, { ...init, headers, credentials: 'omit', cache: 'no-store' });
    } catch {
      if (read && attempt < RETRIES) {
        await sleep(retryDelay(null, attempt));
        continue;
      }
      throw new ApiError(0, 'network', 'unreachable', endpoint);
    }
    if (response.ok) return response;
    if (attempt < RETRIES && (response.status === 429 || (read && TRANSIENT.has(response.status)))) {
      await sleep(retryDelay(response, attempt));
      continue;
    }
    let code = 'error';
    let detail = response.statusText || 'request failed';
    try {
      const body = await response.json();
      code = body.error || code;
      detail = body.detail || detail;
    } catch {
      // not JSON: keep the status text
    }
    const error = new ApiError(response.status, code, detail, endpoint);
    if (response.status === 401) window.dispatchEvent(new CustomEvent('kashf:unauthorized', { detail: error }));
    throw error;
  }
}

/** POST /api/<name>/ with a JSON body; returns the parsed answer. */
export async function call(name, body = {}) {
  const response = await request(name, `/api/${name}/`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return response.json();
}

/** POST /api/<name>/ as multipart/form-data: fields is [[name, value or File], ...]. */
export async function upload(name, fields) {
  const form = new FormData();
  for (const [key, value] of fields) {
    if (value instanceof File) form.append(key, value, value.name);
    else form.append(key, String(value));
  }
  const response = await request(name, `/api/${name}/`, { method: 'POST', body: form });
  return response.json();
}

// Kept images need the token too, so an <img src> cannot load them: they are fetched here and shown
// through blob: URLs, revoked when the page changes or the user signs out.
const images = new Map();

export async function imageUrl(path) {
  if (!path.startsWith('/api/')) throw new Error('not an API path');
  if (!images.has(path)) {
    images.set(path, request('item image', path, { method: 'GET' })
      .then((r) => r.blob())
      .then((blob) => URL.createObjectURL(blob))
      .catch((error) => {
        images.delete(path);
        throw error;
      }));
  }
  return images.get(path);
}

export async function imageBlob(path) {
  const response = await request('item image', path, { method: 'GET' });
  return response.blob();
}

export function revokeImages() {
  for (const pending of images.values()) pending.then((url) => URL.revokeObjectURL(url), () => {});
  images.clear();
}

/** dataset_info, with a fallback for a server without it. */
export function datasetInfo(dataset, tags = true) {
  return call('dataset_info', { dataset, tags });
}

/** All pages of list_items (up to max items). */
export async function listItems(dataset, { tagId, limit = 50, cursor } = {}) {
  const body = { dataset, limit };
  if (tagId) body.tag_id = tagId;
  if (cursor) body.cursor = cursor;
  return call('list_items', body);
}

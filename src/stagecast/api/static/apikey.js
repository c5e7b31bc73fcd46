// The gateway API key, when the gateway requires one. It lives in this browser's
// localStorage (or, where storage is unavailable, in this page only) and goes out as
// `Authorization: Bearer <key>` on every API call made through `apiFetch`. A 401 from any
// call is reported to the `onUnauthorized` listeners, so the page can ask for a key.

export const STORAGE_KEY = "stagecast.apiKey";

let memoryKey = null; // used when localStorage throws (blocked storage, private modes)
let storageWorks = true;
const listeners = new Set();

export function getKey() {
  if (storageWorks) {
    try {
      return localStorage.getItem(STORAGE_KEY) || null;
    } catch {
      storageWorks = false;
    }
  }
  return memoryKey;
}

/** Store `key` (null or "" forgets it). Returns false if it could only be kept in memory. */
export function setKey(key) {
  memoryKey = key || null;
  try {
    if (memoryKey) localStorage.setItem(STORAGE_KEY, memoryKey);
    else localStorage.removeItem(STORAGE_KEY);
    storageWorks = true;
  } catch {
    storageWorks = false;
  }
  return storageWorks;
}

/**
 * What the user typed, as a key: trimmed, a pasted "Bearer " prefix dropped. Throws with a
 * readable message when it cannot be sent in a header.
 */
export function normalizeKey(text) {
  const key = String(text || "")
    .trim()
    .replace(/^bearer\s+/i, "")
    .trim();
  if (!key) throw new Error("enter a key");
  if (!/^[\x20-\x7e]+$/.test(key)) {
    throw new Error("an API key is plain ASCII text (no line breaks or special characters)");
  }
  return key;
}

/** `headers` plus Authorization when a key is set. */
export function authHeaders(headers = {}) {
  const key = getKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : { ...headers };
}

/**
 * Call `fn({status, message, code, keySent, stale, url})` whenever an API call answers 401;
 * `stale` is true when the key has changed since that request was sent.
 */
export function onUnauthorized(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** `fetch` with the key; a 401 also notifies the listeners (the caller still gets it). */
export async function apiFetch(url, options = {}) {
  const key = getKey();
  const response = await fetch(url, { ...options, headers: authHeaders(options.headers) });
  if (response.status === 401) reportUnauthorized(response.clone(), url, key);
  return response;
}

async function reportUnauthorized(response, url, key) {
  let message = "";
  let code = null;
  try {
    const body = await response.json();
    message = String(body?.message || "");
    code = body?.code || null;
  } catch {
    // not JSON: no details
  }
  for (const fn of listeners) {
    try {
      const stale = getKey() !== key;
      fn({ status: 401, message, code, keySent: Boolean(key), stale, url: String(url) });
    } catch {
      // one listener failing must not stop the others
    }
  }
}

/**
 * Cancel a stage while the page goes away. `sendBeacon` cannot carry headers, so with a key
 * this is a keepalive `fetch` (which outlives the page like a beacon does).
 */
export function cancelOnLeave(url) {
  const key = getKey();
  if (!key) return navigator.sendBeacon(url);
  fetch(url, {
    method: "POST",
    keepalive: true,
    headers: { Authorization: `Bearer ${key}` },
    cache: "no-store",
  }).catch(() => {});
  return true;
}

/** Whether `cancelOnLeave` can work right now (see the on_disconnect note in app.js). */
export function canCancelOnLeave() {
  if (getKey()) return typeof Request !== "undefined" && "keepalive" in Request.prototype;
  return typeof navigator.sendBeacon === "function";
}

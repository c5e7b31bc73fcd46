// One streamed stage over HTTP: POST it, read its Server-Sent Events with fetch and a
// ReadableStream (EventSource cannot POST), and resume it after a network drop.
//
// Resume: every frame carries an increasing `id:`. When the connection fails before a
// terminal event (done / cancel / error), the stage is still running on the gateway (see
// the on_disconnect note in app.js), so we GET /stream/v1/stages/{id} with
// `Last-Event-ID: <last id we dispatched>`, which replays exactly what we missed. Retries are
// bounded; the first waits the server's `retry:` delay, later ones back off from it. Events
// whose id is not above the last one seen are dropped, so a replay can never duplicate text.
// Every call goes through `apiFetch`, which adds the gateway API key when one is set.

import { SSEParser } from "./sse.js";
import { apiFetch } from "./apikey.js";

export const TERMINAL = new Set(["done", "cancel", "error"]);

const DEFAULT_RETRY_MS = 1000;
const MAX_DELAY_MS = 15000;

/** A fresh stage id, made here so a stage can be resumed even if the POST's answer is lost. */
export function newStageId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes); // available outside secure contexts, unlike randomUUID
  return `ui-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

export function stageUrl(stageId) {
  return `/stream/v1/stages/${encodeURIComponent(stageId)}`;
}

export function cancelUrl(stageId) {
  return `${stageUrl(stageId)}/cancel`;
}

/** Error message of a JSON error answer (`{"type":"error","code","message"}`), or a fallback. */
async function describeFailure(response) {
  let message = `HTTP ${response.status} ${response.statusText || ""}`.trim();
  let code = null;
  try {
    const body = await response.json();
    if (body && typeof body === "object") {
      message = body.message || body.error?.message || body.detail || message;
      code = body.code || null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return { message: String(message), code };
}

/**
 * Runs a stage and reports what happens through callbacks:
 *   onOpen({stageId, resumed})            a response started streaming
 *   onEvent({event, data, id})            one protocol event (parsed JSON data), never twice
 *   onReconnecting({attempt, max, delay}) the connection dropped; waiting before a retry
 *   onFailure({message, code})            gave up (HTTP error, stage gone, retries exhausted)
 * `run()` resolves when the stage is over for this client (terminal event or failure).
 */
export class StageStream {
  constructor({ path, body, maxRetries = 6, ...callbacks }) {
    this.path = path;
    this.body = body;
    this.stageId = body.stage_id;
    this.maxRetries = maxRetries;
    this.callbacks = callbacks;
    this.lastId = 0;
    this.retryMs = null;
    this.terminal = null;
    this.failure = null;
    this.connected = false;
    this.closed = false;
    this.abort = new AbortController();
  }

  #emit(name, arg) {
    const fn = this.callbacks[name];
    if (fn) fn(arg);
  }

  async run() {
    let response = null;
    try {
      response = await apiFetch(this.path, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(this.body),
        signal: this.abort.signal,
        cache: "no-store",
      });
    } catch {
      if (this.closed) return;
      // No answer at all: the request may or may not have reached the gateway. Resuming
      // finds out (404 means it never started).
      response = null;
    }
    if (response && !response.ok) {
      this.#fail(await describeFailure(response));
      return;
    }
    if (response) {
      this.stageId = response.headers.get("X-Stage-Id") || this.stageId;
      await this.#read(response, false);
    }
    await this.#resumeLoop(response !== null);
  }

  async #resumeLoop(started) {
    let attempt = 0;
    while (!this.terminal && !this.closed) {
      if (attempt >= this.maxRetries) {
        this.#fail({
          message: `lost the connection to the gateway (gave up after ${attempt} retries)`,
          code: "connection_lost",
        });
        return;
      }
      attempt += 1;
      const base = this.retryMs ?? DEFAULT_RETRY_MS;
      const delay = Math.min(base * 2 ** (attempt - 1), Math.max(MAX_DELAY_MS, base));
      this.#emit("onReconnecting", { attempt, max: this.maxRetries, delay });
      await this.#sleep(delay);
      if (this.closed || this.terminal) return;
      let response;
      try {
        const headers = { Accept: "text/event-stream" };
        if (this.lastId > 0) headers["Last-Event-ID"] = String(this.lastId);
        response = await apiFetch(stageUrl(this.stageId), {
          headers,
          signal: this.abort.signal,
          cache: "no-store",
        });
      } catch {
        if (this.closed) return;
        continue;
      }
      if (response.status === 404) {
        const gone = started || this.lastId > 0;
        this.#fail({
          message: gone
            ? "the stage is no longer available on the gateway (it expired or the server restarted)"
            : "could not reach the gateway to start the stage",
          code: "stage_not_found",
        });
        return;
      }
      if (response.status === 401 || response.status === 403) {
        // Retrying cannot help: the key is missing, wrong, or not this stage's.
        this.#fail(await describeFailure(response));
        return;
      }
      if (!response.ok) continue;
      started = true;
      const before = this.lastId;
      await this.#read(response, true);
      // A connection that delivered something resets the budget: only consecutive failures
      // count against it.
      if (this.lastId > before) attempt = 0;
    }
  }

  async #read(response, resumed) {
    this.connected = true;
    this.#emit("onOpen", { stageId: this.stageId, resumed });
    const parser = new SSEParser();
    const decoder = new TextDecoder();
    const reader = response.body.getReader();
    try {
      while (!this.terminal) {
        const { value, done } = await reader.read();
        if (done) break;
        const events = parser.feed(decoder.decode(value, { stream: true }));
        if (parser.retry !== null) this.retryMs = parser.retry;
        for (const raw of events) this.#dispatch(raw);
      }
    } catch {
      // A network error mid-body: fall through to the resume loop.
    } finally {
      this.connected = false;
      if (this.terminal) reader.cancel().catch(() => {});
    }
  }

  #dispatch(raw) {
    if (this.terminal) return;
    const id = Number(raw.id);
    if (Number.isFinite(id) && raw.id !== null) {
      if (id <= this.lastId) return; // already shown: a replay overlap
      this.lastId = id;
    }
    let data;
    try {
      data = JSON.parse(raw.data);
    } catch {
      data = { raw: raw.data };
    }
    if (data && data.stage_id) this.stageId = data.stage_id;
    if (TERMINAL.has(raw.event)) this.terminal = raw.event;
    this.#emit("onEvent", { event: raw.event, data, id });
  }

  #fail(failure) {
    if (this.terminal) return;
    this.terminal = "failure";
    this.failure = failure;
    this.#emit("onFailure", failure);
  }

  #sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const wake = () => {
        // Back online: retry now rather than after the rest of the back-off.
        if (navigator.onLine) done();
      };
      function done() {
        clearTimeout(timer);
        window.removeEventListener("online", wake);
        resolve();
      }
      window.addEventListener("online", wake);
      this.wakeUp = done;
    });
  }

  /** Ask the gateway to cancel the stage; resolves to its receipt (or null). */
  async cancel() {
    if (!this.stageId) return null;
    let receipt = null;
    try {
      const response = await apiFetch(cancelUrl(this.stageId), {
        method: "POST",
        keepalive: true,
      });
      if (response.ok) receipt = await response.json();
    } catch {
      receipt = null;
    }
    // Between connections the cancel event cannot reach us: retry now instead of after the
    // back-off, and the replay brings the missed chunks and the cancel event.
    if (receipt && !this.connected && this.wakeUp) this.wakeUp();
    return receipt;
  }

  /** Stop reading for good (page teardown, or a new conversation); does not cancel. */
  close() {
    this.closed = true;
    this.abort.abort();
    if (this.wakeUp) this.wakeUp();
  }
}

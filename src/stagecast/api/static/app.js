// The stagecast web chat: role and mode pickers, a multi-turn conversation, and one streamed
// stage per turn (answer, reasoning, tool calls, timeline), with Stop and automatic resume.

import { renderMarkdown } from "./markdown.js";
import { StageStream, cancelUrl, newStageId } from "./stage.js";
import { el, formatMs } from "./dom.js";
import {
  STORAGE_KEY,
  apiFetch,
  canCancelOnLeave,
  cancelOnLeave,
  getKey,
  normalizeKey,
  onUnauthorized,
  setKey,
} from "./apikey.js";

const MODES = {
  chat: { path: "/stream/v1/chat", label: "chat", synthesis: false, tools: false },
  tools: { path: "/stream/v1/toolchain", label: "tools", synthesis: false, tools: true },
  synthesis: {
    path: "/stream/v1/toolchain",
    label: "tools + synthesis",
    synthesis: true,
    tools: true,
  },
};

// Disconnect policy. The gateway's default, on_disconnect "cancel", stops a stage as soon as
// its last reader leaves, which would turn every network blip into a cancelled answer. This
// page can resume (it reads the stream itself and knows the last event id), so while a
// resume is possible it asks for "continue" and takes over the job "cancel" did: the Stop
// button and Escape cancel explicitly, closing or reloading the page sends a cancel beacon
// on `pagehide` (a keepalive fetch when an API key is set: beacons cannot carry headers), and
// giving up on reconnecting sends a (best-effort) cancel too. Without fetch streaming, or
// without a way to cancel on leaving, none of that works, so such a browser keeps "cancel".
const CAN_STREAM = typeof ReadableStream !== "undefined" && typeof TextDecoder !== "undefined";

function canResume() {
  return CAN_STREAM && canCancelOnLeave();
}

const ui = {
  role: document.getElementById("role"),
  mode: document.getElementById("mode"),
  toolsField: document.getElementById("tools-field"),
  toolsPicker: document.getElementById("tools-picker"),
  toolsSummary: document.getElementById("tools-summary"),
  toolsList: document.getElementById("tools-list"),
  newChat: document.getElementById("new-chat"),
  conversation: document.getElementById("conversation"),
  log: document.getElementById("log"),
  empty: document.getElementById("empty"),
  composer: document.getElementById("composer"),
  prompt: document.getElementById("prompt"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  settings: document.getElementById("settings"),
  keyButton: document.getElementById("key-button"),
  keyState: document.getElementById("key-state"),
  keyPanel: document.getElementById("key-panel"),
  keyMessage: document.getElementById("key-message"),
  keyInput: document.getElementById("api-key"),
  keyStatus: document.getElementById("key-status"),
  forgetKey: document.getElementById("forget-key"),
};

const state = {
  history: [], // OpenAI chat messages of finished turns: user, assistant, user, ...
  turn: null, // the running Turn, if any
  tools: null, // [{name, description}] once loaded; [] when the gateway offers none
  stickToBottom: true, // follow the answer unless the reader scrolled up
  keyNeeded: false, // the gateway answered 401 and no accepted key has been entered since
};

// --- the pickers -------------------------------------------------------------------------

/** Fill the role picker; resolves to "ok", "unauthorized" or "error". */
async function loadModels() {
  try {
    const response = await apiFetch("/v1/models", { cache: "no-store" });
    if (response.status === 401) {
      ui.role.replaceChildren(el("option", { value: "" }, "API key needed"));
      ui.role.disabled = true;
      return "unauthorized";
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const { data } = await response.json();
    ui.role.replaceChildren();
    for (const model of data || []) {
      const text = model.model && model.model !== model.id ? `${model.id} · ${model.model}` : model.id;
      const option = el("option", { value: model.id }, text);
      if (model.default) option.selected = true;
      ui.role.append(option);
    }
    if (!ui.role.options.length) ui.role.append(el("option", { value: "" }, "default"));
  } catch {
    ui.role.replaceChildren(el("option", { value: "" }, "default role"));
    ui.role.disabled = false;
    return "error";
  }
  ui.role.disabled = false;
  return "ok";
}

async function loadTools() {
  let tools = [];
  try {
    const response = await apiFetch("/v1/tools", { cache: "no-store" });
    if (response.status === 401) {
      state.tools = null;
      ui.toolsList.replaceChildren(
        el("legend", { class: "visually-hidden" }, "Tools the model may call"),
        el("p", { class: "muted" }, "API key needed"),
      );
      ui.toolsSummary.textContent = "key needed";
      return "unauthorized";
    }
    if (response.ok) {
      const body = await response.json();
      tools = Array.isArray(body?.data) ? body.data : [];
    }
  } catch {
    tools = [];
  }
  state.tools = tools;
  const legend = el("legend", { class: "visually-hidden" }, "Tools the model may call");
  if (!tools.length) {
    ui.toolsList.replaceChildren(legend, el("p", { class: "muted" }, "no tools"));
  } else {
    ui.toolsList.replaceChildren(
      legend,
      ...tools.map((tool) =>
        el(
          "label",
          { class: "tool-option", title: tool.description || "" },
          el("input", { type: "checkbox", name: "tool", value: tool.name, checked: true }),
          el("span", { class: "tool-option-name" }, tool.name),
          tool.description ? el("span", { class: "tool-option-desc" }, tool.description) : null,
        ),
      ),
    );
  }
  updateToolsSummary();
  return "ok";
}

function selectedTools() {
  return [...ui.toolsList.querySelectorAll("input[name=tool]:checked")].map((i) => i.value);
}

function updateToolsSummary() {
  const all = state.tools ? state.tools.length : 0;
  ui.toolsSummary.textContent = all
    ? `${selectedTools().length} of ${all}`
    : state.tools
      ? "none"
      : "loading…";
}

function updateMode() {
  const mode = MODES[ui.mode.value] || MODES.chat;
  ui.toolsField.hidden = !mode.tools;
}

/** Reload roles and tools (after the key changed); "unauthorized" if the gateway said 401. */
async function reloadPickers() {
  ui.role.disabled = true;
  ui.role.replaceChildren(el("option", { value: "" }, "loading…"));
  state.tools = null;
  updateToolsSummary();
  const results = await Promise.all([loadModels(), loadTools()]);
  if (results.includes("unauthorized")) return "unauthorized";
  state.keyNeeded = false;
  updateKeyButton();
  return "ok";
}

// --- the API key ------------------------------------------------------------------------

function updateKeyButton() {
  const has = Boolean(getKey());
  const keyState = state.keyNeeded ? "needed" : has ? "set" : "none";
  ui.keyButton.dataset.state = keyState;
  ui.keyState.textContent = keyState === "none" ? "" : ` (${keyState})`;
  ui.keyInput.placeholder = has ? "a key is saved; paste a new one" : "paste the gateway key";
  ui.forgetKey.disabled = !has;
}

function keyPanelOpen() {
  return !ui.keyPanel.hidden;
}

function openKeyPanel({ focus = true } = {}) {
  ui.keyPanel.hidden = false;
  ui.keyButton.setAttribute("aria-expanded", "true");
  if (focus) ui.keyInput.focus();
}

function closeKeyPanel({ restoreFocus = false } = {}) {
  if (!keyPanelOpen()) return;
  ui.keyPanel.hidden = true;
  ui.keyButton.setAttribute("aria-expanded", "false");
  ui.keyStatus.textContent = "";
  if (restoreFocus) ui.keyButton.focus();
}

function showKeyMessage(text) {
  ui.keyMessage.textContent = text;
  ui.keyMessage.hidden = !text;
}

onUnauthorized(({ message, keySent, stale }) => {
  if (stale) return; // answered for a key that has been replaced since
  state.keyNeeded = true;
  updateKeyButton();
  showKeyMessage(
    keySent
      ? `The gateway did not accept the saved key${message ? ` (${message})` : ""}. Enter another one.`
      : "This gateway needs an API key. Enter it here to load the model roles and chat.",
  );
  ui.keyStatus.textContent = "";
  openKeyPanel();
});

async function saveKey(event) {
  event.preventDefault();
  let key;
  try {
    key = normalizeKey(ui.keyInput.value);
  } catch (err) {
    showKeyMessage(`Cannot use that key: ${err.message}.`);
    ui.keyInput.focus();
    return;
  }
  const persisted = setKey(key);
  ui.keyInput.value = "";
  showKeyMessage("");
  ui.keyStatus.textContent = "checking the key…";
  updateKeyButton();
  if ((await reloadPickers()) === "unauthorized") {
    ui.keyStatus.textContent = ""; // the 401 listener says why
    ui.keyInput.focus();
    return;
  }
  if (!persisted) {
    ui.keyStatus.textContent = "saved for this page only: this browser's storage is unavailable";
    return;
  }
  closeKeyPanel();
  if (!state.turn) ui.prompt.focus();
}

function forgetKey() {
  setKey(null);
  ui.keyInput.value = "";
  showKeyMessage("");
  state.keyNeeded = false;
  updateKeyButton();
  ui.keyStatus.textContent = "key forgotten";
  ui.keyInput.focus();
  reloadPickers(); // on a gateway that needs keys, this asks for one again
}

// --- one turn ------------------------------------------------------------------------------

class ToolCard {
  constructor({ id, name, index }) {
    this.id = id || null;
    this.index = index;
    this.name = name || "";
    this.args = "";
    this.result = undefined;
    this.nameEl = el("span", { class: "tool-name" }, this.name || "tool");
    this.stateEl = el("span", { class: "tool-state" }, "calling…");
    this.timeEl = el("span", { class: "tool-time" });
    this.argsEl = el("pre", { class: "tool-args" });
    this.resultEl = el("pre", { class: "tool-result" });
    this.resultBox = el(
      "div",
      { class: "tool-section tool-result-box", hidden: true },
      el("div", { class: "tool-label" }, "Result"),
      this.resultEl,
    );
    this.root = el(
      "div",
      { class: "tool-card", "data-state": "calling" },
      el(
        "div",
        { class: "tool-head" },
        el("span", { class: "tool-icon", "aria-hidden": "true" }, "ƒ"),
        this.nameEl,
        this.stateEl,
        this.timeEl,
      ),
      el(
        "div",
        { class: "tool-section" },
        el("div", { class: "tool-label" }, "Arguments"),
        this.argsEl,
      ),
      this.resultBox,
    );
    if (this.id) this.root.dataset.callId = this.id;
  }

  setName(name) {
    this.name = name;
    this.nameEl.textContent = name;
  }

  appendArgs(fragment) {
    this.args += fragment;
    this.argsEl.textContent = this.args;
  }

  finishArgs() {
    this.argsEl.textContent = pretty(this.args) || "{}";
    if (this.root.dataset.state === "calling") this.setState("running", "running…");
  }

  setState(stateName, label) {
    this.root.dataset.state = stateName;
    this.stateEl.textContent = label;
  }

  setResult({ result, error, durationMs, arguments: args }) {
    if (!this.args && args) this.args = args;
    this.argsEl.textContent = pretty(this.args) || "{}";
    this.result = error ? { error } : result;
    this.resultBox.hidden = false;
    this.resultEl.textContent = error ? String(error) : pretty(result);
    this.setState(error ? "error" : "ok", error ? "failed" : "ok");
    if (typeof durationMs === "number") this.timeEl.textContent = formatMs(durationMs);
  }
}

/** JSON (or a JSON string) for display: on one line when short, indented when not. */
function pretty(value) {
  let parsed = value;
  if (typeof value === "string") {
    try {
      parsed = JSON.parse(value);
    } catch {
      return value; // arguments still streaming, or a plain-text result
    }
  }
  if (parsed === undefined) return "";
  const short = oneLine(parsed);
  return short.length <= 80 ? short : JSON.stringify(parsed, null, 2);
}

function oneLine(value) {
  if (Array.isArray(value)) return `[${value.map(oneLine).join(", ")}]`;
  if (value && typeof value === "object") {
    const items = Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${oneLine(v)}`);
    return `{${items.join(", ")}}`;
  }
  return JSON.stringify(value) ?? String(value);
}

class Turn {
  constructor({ prompt, role, mode }) {
    this.mode = mode;
    this.role = role;
    this.t0 = performance.now();
    this.text = "";
    this.reasoning = "";
    this.calls = [];
    this.callsByKey = new Map();
    this.callsById = new Map();
    this.round = 0;
    this.firstToken = null;
    this.sawToolResults = false;
    this.synthesisStarted = false;
    this.finished = false;
    this.outcome = null;
    this.stopRequested = false;
    this.renderQueued = false;

    this.statusEl = el("span", { class: "status", "data-status": "connecting" }, "connecting…");
    this.stageEl = el("span", { class: "stage-id" });
    this.reasoningBody = el("div", { class: "reasoning-body" });
    this.reasoningSummary = el("summary", {}, "Thinking…");
    this.reasoningEl = el(
      "details",
      { class: "reasoning", hidden: true },
      this.reasoningSummary,
      this.reasoningBody,
    );
    this.toolsEl = el("div", { class: "tool-cards", hidden: true });
    this.answerEl = el("div", { class: "answer md" });
    this.typingEl = el(
      "div",
      { class: "typing", "aria-hidden": "true" },
      el("span"),
      el("span"),
      el("span"),
    );
    this.errorEl = el("div", { class: "stage-error", role: "alert", hidden: true });
    this.timelineList = el("ol", { class: "timeline-list" });
    this.timelineSummary = el("summary", {}, "Timeline");
    this.timelineEl = el(
      "details",
      { class: "timeline" },
      this.timelineSummary,
      this.timelineList,
    );
    this.answerBox = el(
      "section",
      // Busy while streaming, so screen readers announce the answer once, not per chunk.
      { class: "msg assistant", "aria-label": "Answer", "aria-busy": "true" },
      el(
        "header",
        { class: "meta" },
        el("span", { class: "chip" }, role || "default role"),
        el("span", { class: "chip" }, mode.label),
        this.statusEl,
        this.stageEl,
      ),
      this.reasoningEl,
      this.toolsEl,
      this.typingEl,
      this.answerEl,
      this.errorEl,
      this.timelineEl,
    );
    this.root = el(
      "article",
      { class: "turn", "data-mode": mode.label },
      el("div", { class: "msg user" }, el("div", { class: "bubble" }, prompt)),
      this.answerBox,
    );
    this.mark("started", `POST ${mode.path}`);
  }

  elapsed() {
    return performance.now() - this.t0;
  }

  mark(what, detail = "", kind = what) {
    this.timelineList.append(
      el(
        "li",
        { "data-kind": kind.split(" ")[0] },
        el("span", { class: "t" }, `+${formatMs(this.elapsed())}`),
        el("span", { class: "what" }, what),
        detail ? el("span", { class: "detail" }, detail) : null,
      ),
    );
    this.updateSummary();
  }

  updateSummary(extra = "") {
    const parts = [this.statusEl.textContent];
    if (this.finished) parts.push(formatMs(this.totalMs));
    if (this.firstToken !== null) parts.push(`first token ${formatMs(this.firstToken)}`);
    if (extra) parts.push(extra);
    this.timelineSummary.textContent = `Timeline · ${parts.join(" · ")}`;
  }

  setStatus(status, label = status) {
    this.statusEl.dataset.status = status;
    this.statusEl.textContent = label;
    this.updateSummary(this.summaryExtra);
  }

  setStageId(stageId) {
    if (stageId && this.stageEl.textContent !== stageId) {
      this.stageEl.textContent = stageId;
      this.stageEl.title = `stage ${stageId}`;
    }
  }

  // --- protocol events ---------------------------------------------------------------

  onOpen({ stageId, resumed }) {
    this.setStageId(stageId);
    if (resumed) {
      this.mark("resumed", this.lastId ? `after event ${this.lastId}` : "from the start");
    } else {
      this.mark("connected", stageId ? `stage ${stageId}` : "");
    }
    if (!this.finished) this.setStatus("streaming", this.stopRequested ? "stopping…" : "streaming");
  }

  onReconnecting({ attempt, max, delay }) {
    if (this.finished) return;
    this.setStatus("reconnecting", "reconnecting…");
    this.mark("reconnecting…", `attempt ${attempt} of ${max} in ${formatMs(delay)}`, "reconnecting");
  }

  onEvent({ event, data, id }) {
    if (id) this.lastId = id;
    if (data?.stage_id) this.setStageId(data.stage_id);
    switch (event) {
      case "chat_completion_chunk":
        this.onChunk(data.chunk);
        break;
      case "tool_completion_chunk":
        this.onChunk(data.tool_results);
        break;
      case "tool_summary":
        this.onToolSummary(data);
        break;
      case "done":
        this.finish("done", "done", doneDetail(data));
        break;
      case "cancel":
        this.finish("cancelled", "cancelled", data?.reason ? `reason: ${data.reason}` : "");
        break;
      case "error":
        this.showError(data?.error || "the stage failed", data?.code);
        this.finish("error", "error", data?.code || "");
        break;
      default:
        break; // unknown events are additive: ignore them
    }
  }

  onFailure({ message, code }) {
    this.showError(message, code);
    this.finish("error", "error", code || "");
  }

  onChunk(chunk) {
    if (!chunk) return;
    for (const choice of chunk.choices || []) {
      const delta = choice.delta || {};
      if (delta.reasoning_content) this.addReasoning(delta.reasoning_content);
      if (delta.tool_calls) this.addToolDeltas(delta.tool_calls);
      if (typeof delta.content === "string" && delta.content) this.addText(delta.content);
    }
  }

  noteFirstToken(what) {
    if (this.firstToken !== null) return;
    this.typingEl.hidden = true;
    this.firstToken = this.elapsed();
    this.mark("first token", what, "first");
  }

  addReasoning(text) {
    this.noteFirstToken("reasoning");
    this.reasoning += text;
    this.reasoningEl.hidden = false;
    this.reasoningBody.textContent = this.reasoning;
    if (!this.text) this.setStatus("thinking", "thinking…");
  }

  addText(text) {
    this.noteFirstToken("answer");
    if (this.sawToolResults && !this.synthesisStarted) {
      this.synthesisStarted = true;
      this.mark("synthesis", "first token of the answer");
    }
    if (!this.text && !this.reasoningEl.hidden) this.reasoningSummary.textContent = "Reasoning";
    this.text += text;
    if (this.statusEl.dataset.status !== "streaming" && !this.stopRequested) {
      this.setStatus("streaming", "streaming");
    }
    this.scheduleRender();
  }

  addToolDeltas(deltas) {
    this.toolsEl.hidden = false;
    for (const delta of deltas) {
      const index = typeof delta.index === "number" ? delta.index : 0;
      const key = `${this.round}:${index}`;
      let card = (delta.id && this.callsById.get(delta.id)) || this.callsByKey.get(key);
      const name = delta.function?.name;
      if (!card) {
        this.noteFirstToken("tool call");
        card = new ToolCard({ id: delta.id, name, index });
        this.calls.push(card);
        this.callsByKey.set(key, card);
        this.toolsEl.append(card.root);
        if (name) this.mark(`tool call ${name}`, `#${index + 1}`, "tool");
        this.setStatus("tools", "calling tools…");
      } else if (name && !card.name) {
        card.setName(name);
        this.mark(`tool call ${name}`, `#${index + 1}`, "tool");
      }
      if (delta.id && !card.id) {
        card.id = delta.id;
        card.root.dataset.callId = delta.id;
      }
      if (card.id) this.callsById.set(card.id, card);
      if (delta.function?.arguments) card.appendArgs(delta.function.arguments);
    }
    this.autoscroll();
  }

  cardFor(id, name) {
    let card = this.callsById.get(id);
    if (!card) {
      // The server reported a call whose deltas we never saw: show it anyway.
      card = new ToolCard({ id, name, index: this.calls.length });
      this.calls.push(card);
      this.callsById.set(id, card);
      this.toolsEl.append(card.root);
      this.toolsEl.hidden = false;
    }
    return card;
  }

  onToolSummary(data) {
    const summary = data.tool_summary || {};
    const details = Array.isArray(data.tool_calls) ? data.tool_calls : [];
    const seen = new Set();
    for (const detail of details) {
      const card = this.cardFor(detail.id, detail.name);
      if (detail.name && !card.name) card.setName(detail.name);
      card.setResult({
        result: detail.id in summary ? summary[detail.id] : detail.result,
        error: detail.error,
        durationMs: detail.duration_ms,
        arguments: detail.arguments,
      });
      seen.add(detail.id);
    }
    for (const [id, result] of Object.entries(summary)) {
      if (!seen.has(id)) this.cardFor(id).setResult({ result });
    }
    for (const card of this.calls) if (card.result === undefined) card.finishArgs();
    const n = Object.keys(summary).length || details.length;
    this.mark("tool results", `${n} ${n === 1 ? "call" : "calls"}`, "tool");
    this.sawToolResults = true;
    this.round += 1;
    this.callsByKey.clear();
    if (!this.stopRequested) this.setStatus("streaming", "streaming");
    this.autoscroll();
  }

  showError(message, code) {
    this.errorEl.hidden = false;
    this.errorEl.replaceChildren(
      el("strong", {}, "Error"),
      el("span", { class: "error-message" }, ` ${message}`),
      code ? el("code", { class: "error-code" }, code) : null,
    );
  }

  finish(status, label, detail) {
    if (this.finished) return;
    this.finished = true;
    this.outcome = status;
    this.totalMs = this.elapsed();
    this.typingEl.hidden = true;
    for (const card of this.calls) if (card.result === undefined) card.finishArgs();
    this.renderNow();
    this.setStatus(status, label);
    this.mark(label, detail, status);
    this.root.dataset.outcome = status;
    this.answerBox.setAttribute("aria-busy", "false");
    this.autoscroll();
  }

  // --- rendering ----------------------------------------------------------------------

  scheduleRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    // One render per frame however many chunks arrived; a hidden tab gets none until the
    // final render, which is synchronous.
    requestAnimationFrame(() => this.renderNow());
  }

  renderNow() {
    this.renderQueued = false;
    this.answerEl.innerHTML = renderMarkdown(this.text); // escaped by renderMarkdown
    this.autoscroll();
  }

  autoscroll() {
    if (state.stickToBottom) ui.conversation.scrollTop = ui.conversation.scrollHeight;
  }

  /** What this turn adds to the conversation history, or null. */
  assistantMessage() {
    const text = this.text.trim();
    if (text) return text;
    if (this.calls.some((c) => c.result !== undefined)) {
      // A tools-only turn has no prose; the model sees the calls and results as text.
      return this.calls
        .map((c) => `${c.name}(${c.args || "{}"}) -> ${JSON.stringify(c.result)}`)
        .join("\n");
    }
    return null;
  }
}

function doneDetail(data) {
  const usage = data?.usage;
  const parts = [];
  if (usage?.completion_tokens) parts.push(`${usage.completion_tokens} tokens`);
  if (data?.finish_reason) parts.push(`finish: ${data.finish_reason}`);
  return parts.join(", ");
}

// --- sending, stopping ------------------------------------------------------------------

function setRunning(running) {
  ui.stop.hidden = !running;
  ui.send.hidden = running;
  document.body.classList.toggle("running", running);
}

async function send() {
  const prompt = ui.prompt.value.trim();
  if (!prompt || state.turn) return;
  const mode = MODES[ui.mode.value] || MODES.chat;
  const role = ui.role.value || null;
  const stageId = newStageId();
  const messages = [...state.history, { role: "user", content: prompt }];
  const body = {
    stage_id: stageId,
    messages,
    stream: true,
    on_disconnect: canResume() ? "continue" : "cancel",
  };
  if (role) body.model_container = role;
  if (mode.tools) {
    body.synthesis = mode.synthesis;
    if (state.tools && state.tools.length) {
      const chosen = selectedTools();
      if (!chosen.length) {
        ui.toolsPicker.open = true;
        ui.toolsSummary.textContent = "pick at least one";
        return;
      }
      body.tools = chosen;
    }
  }

  ui.empty.hidden = true;
  const turn = new Turn({ prompt, role, mode });
  turn.onDisconnect = body.on_disconnect;
  ui.log.append(turn.root);
  turn.setStageId(stageId);
  ui.prompt.value = "";
  autosize();
  state.turn = turn;
  setRunning(true);
  state.stickToBottom = true;
  turn.autoscroll();

  const stream = new StageStream({
    path: mode.path,
    body,
    onOpen: (info) => {
      turn.onOpen(info);
      // A Stop pressed while we were disconnected may not have reached the gateway.
      if (turn.stopRequested && !turn.finished) stream.cancel();
    },
    onEvent: (ev) => turn.onEvent(ev),
    onReconnecting: (info) => turn.onReconnecting(info),
    onFailure: (failure) => turn.onFailure(failure),
  });
  turn.stream = stream;
  try {
    await stream.run();
  } catch (err) {
    turn.onFailure({ message: String(err?.message || err), code: "client_error" });
  }
  if (!turn.finished) turn.finish("error", "error", "");
  if (stream.failure?.code === "connection_lost" && body.on_disconnect === "continue") {
    // We gave up following it; do not leave it running for nobody (best effort).
    stream.cancel();
  }
  if (state.turn !== turn) return; // "New chat" dropped this turn while it ran
  const answer = turn.assistantMessage();
  if (answer !== null) {
    state.history.push({ role: "user", content: prompt }, { role: "assistant", content: answer });
  }
  state.turn = null;
  setRunning(false);
  if (!document.activeElement || document.activeElement === document.body) ui.prompt.focus();
}

function stop() {
  const turn = state.turn;
  if (!turn || turn.finished || !turn.stream) return;
  if (!turn.stopRequested) {
    turn.stopRequested = true;
    turn.setStatus("stopping", "stopping…");
    turn.mark("stop requested", "POST …/cancel", "stop");
  }
  turn.stream.cancel();
}

function newChat() {
  const turn = state.turn;
  if (turn && !turn.finished && turn.stream) {
    turn.stream.cancel();
    turn.stream.close();
    turn.finish("cancelled", "cancelled", "new chat");
  }
  state.turn = null;
  state.history = [];
  ui.log.replaceChildren(ui.empty);
  ui.empty.hidden = false;
  setRunning(false);
  ui.prompt.focus();
}

function autosize() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 200)}px`;
}

// --- wiring -----------------------------------------------------------------------------

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey) {
    event.preventDefault();
    if (!state.turn) send();
  }
});
ui.prompt.addEventListener("input", autosize);
ui.conversation.addEventListener(
  "scroll",
  () => {
    const box = ui.conversation;
    state.stickToBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  },
  { passive: true },
);
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  if (keyPanelOpen() && ui.keyPanel.contains(document.activeElement)) {
    event.preventDefault();
    closeKeyPanel({ restoreFocus: true });
  } else if (state.turn) {
    event.preventDefault();
    stop();
  } else if (keyPanelOpen()) {
    closeKeyPanel({ restoreFocus: true });
  } else if (ui.toolsPicker.open) {
    ui.toolsPicker.open = false;
    ui.toolsPicker.querySelector("summary").focus();
  }
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", newChat);
ui.mode.addEventListener("change", updateMode);
ui.toolsList.addEventListener("change", updateToolsSummary);
ui.settings.addEventListener("submit", (event) => event.preventDefault());
ui.keyButton.addEventListener("click", () => {
  if (keyPanelOpen()) closeKeyPanel();
  else openKeyPanel();
});
ui.keyPanel.addEventListener("submit", saveKey);
ui.forgetKey.addEventListener("click", forgetKey);
document.addEventListener("pointerdown", (event) => {
  if (keyPanelOpen() && !ui.keyPanel.parentElement.contains(event.target)) closeKeyPanel();
});
window.addEventListener("storage", (event) => {
  // Another tab saved or forgot the key.
  if (event.key !== STORAGE_KEY && event.key !== null) return;
  state.keyNeeded = false;
  updateKeyButton();
  reloadPickers();
});
window.addEventListener("pagehide", () => {
  const turn = state.turn;
  if (turn && !turn.finished && turn.stream?.stageId && turn.onDisconnect === "continue") {
    // The stage runs with on_disconnect "continue": leaving the page must cancel it.
    cancelOnLeave(cancelUrl(turn.stream.stageId));
  }
});

updateMode();
updateKeyButton();
autosize();
loadModels();
loadTools();
ui.prompt.focus();

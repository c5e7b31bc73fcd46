// Tiny DOM helpers. Text is always set as text (never parsed as HTML).

const BOOLEAN_PROPS = new Set(["hidden", "checked", "disabled", "selected", "open"]);

/** el("div", {class: "x", hidden: true}, "text", childNode, null) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (BOOLEAN_PROPS.has(key)) node[key] = Boolean(value);
    else if (key === "value") node.value = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** 42 -> "42 ms", 1530 -> "1.53 s", 95000 -> "1 min 35 s" */
export function formatMs(ms) {
  if (!Number.isFinite(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const minutes = Math.floor(ms / 60000);
  const seconds = Math.round((ms % 60000) / 1000);
  return `${minutes} min ${seconds} s`;
}

// A small Markdown renderer for model answers: paragraphs, line breaks, headings, **bold**,
// *italic*, ~~strike~~, `code`, fenced code blocks, lists (nested by indent), block quotes,
// rules, [links](https://...) and bare URLs.
//
// Safety: model text is never treated as HTML. Every piece of source text goes through
// escapeHtml before it reaches the output, and links only get http(s) or mailto targets, so
// "<script>" or "javascript:" in an answer is shown as text. It renders unfinished input
// (an answer that is still streaming) sensibly: an unclosed fence is a code block so far,
// an unclosed "**" is shown as typed.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Text -> HTML text (also safe inside double- or single-quoted attributes). */
export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const BULLET = /^(\s*)([-*+])\s+(.*)$/;
const ORDERED = /^(\s*)(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const BLANK = /^\s*$/;

/** Render Markdown source to an HTML string. */
export function renderMarkdown(source) {
  const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let para = [];
  let items = [];

  const flushPara = () => {
    if (para.length) out.push(`<p>${inline(para.join("\n"))}</p>`);
    para = [];
  };
  const flushList = () => {
    if (items.length) out.push(renderList(items));
    items = [];
  };
  const flush = () => {
    flushPara();
    flushList();
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      flush();
      const marker = fence[1];
      const lang = fence[2];
      const body = [];
      i++;
      while (i < lines.length && !isClosingFence(lines[i], marker)) body.push(lines[i++]);
      const label = lang ? ` data-lang="${escapeHtml(lang)}"` : "";
      out.push(`<pre class="code"${label}><code>${escapeHtml(body.join("\n"))}</code></pre>`);
      continue;
    }
    if (BLANK.test(line)) {
      flush();
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      flush();
      const level = Math.min(heading[1].length + 2, 6);
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
      continue;
    }
    if (RULE.test(line)) {
      flush();
      out.push("<hr>");
      continue;
    }
    const quote = line.match(QUOTE);
    if (quote) {
      flush();
      const inner = [quote[1]];
      while (i + 1 < lines.length && QUOTE.test(lines[i + 1])) {
        inner.push(lines[++i].match(QUOTE)[1]);
      }
      out.push(`<blockquote>${renderMarkdown(inner.join("\n"))}</blockquote>`);
      continue;
    }
    const bullet = line.match(BULLET);
    const ordered = bullet ? null : line.match(ORDERED);
    if (bullet || ordered) {
      flushPara();
      const m = bullet || ordered;
      items.push({
        indent: m[1].replace(/\t/g, "    ").length,
        ordered: Boolean(ordered),
        start: ordered ? Number(ordered[2]) : 1,
        text: m[3],
      });
      continue;
    }
    if (items.length && /^\s+\S/.test(line)) {
      // An indented line continues the last list item.
      items[items.length - 1].text += `\n${line.trim()}`;
      continue;
    }
    flushList();
    para.push(line);
  }
  flush();
  return out.join("\n");
}

function isClosingFence(line, marker) {
  const trimmed = line.trim();
  return trimmed.length >= marker.length && trimmed === marker[0].repeat(trimmed.length);
}

function renderList(items) {
  let html = "";
  const stack = [];
  for (const item of items) {
    while (stack.length > 1 && item.indent < stack[stack.length - 1].indent) {
      html += `</li></${stack.pop().tag}>`;
    }
    const top = stack[stack.length - 1];
    if (!top || item.indent > top.indent) {
      const tag = item.ordered ? "ol" : "ul";
      const start = item.ordered && item.start !== 1 ? ` start="${item.start}"` : "";
      stack.push({ indent: item.indent, tag });
      html += `<${tag}${start}>`;
    } else {
      html += "</li>";
    }
    html += `<li>${inline(item.text)}`;
  }
  while (stack.length) html += `</li></${stack.pop().tag}>`;
  return html;
}

const CODE_SPAN = /(`+)([\s\S]*?[^`])\1(?!`)/g;
const LINK =
  /\[([^\]\n]+)\]\(\s*<?((?:https?:\/\/|mailto:)[^\s()<>]*(?:\([^\s()<>]*\)[^\s()<>]*)*)>?(?:\s+"[^"\n]*")?\s*\)/gi;
const BARE_URL = /\bhttps?:\/\/[^\s<>()"'`\u0000]*[^\s<>()"'`\u0000.,:;!?*_~]/gi;
const SLOT = /\u0000(\d+)\u0000/g;

function link(url, labelHtml) {
  return `<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer nofollow">${labelHtml}</a>`;
}

/** Inline Markdown of one block's raw text. */
function inline(raw) {
  const slots = [];
  const put = (html) => `\u0000${slots.push(html) - 1}\u0000`;
  // NUL is our slot marker, so it may not come from the source.
  let text = String(raw).replace(/\u0000/g, "\uFFFD");
  text = text.replace(CODE_SPAN, (_m, _ticks, code) => {
    const body = /^ .* $/.test(code) && code.trim() ? code.slice(1, -1) : code;
    return put(`<code>${escapeHtml(body)}</code>`);
  });
  text = text.replace(LINK, (_m, label, url) => put(link(url, emphasis(escapeHtml(label)))));
  text = text.replace(BARE_URL, (url) => put(link(url, escapeHtml(url))));
  text = emphasis(escapeHtml(text)).replace(/\n/g, "<br>");
  // Slots may hold slots (a code span inside a link label): restore until none are left.
  for (let n = 0; n < 3 && text.includes("\u0000"); n++) {
    text = text.replace(SLOT, (_m, k) => slots[Number(k)]);
  }
  return text;
}

/** Bold, italic and strike-through on text that is already escaped. */
function emphasis(html) {
  return html
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
}

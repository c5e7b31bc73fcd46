// Incremental Server-Sent Events parser (WHATWG "event stream interpretation").
//
// EventSource cannot POST, so the UI reads the response body itself and feeds decoded text in
// here as it arrives. Lines may end in CRLF, LF or CR, also when a CRLF pair is split between
// two reads; a leading BOM is dropped; ":" starts a comment (keep-alives); one space after the
// colon is removed; an `id` containing NUL is ignored; `retry` takes digits only; an event is
// dispatched at a blank line only if it has data.

export class SSEParser {
  constructor() {
    this.buffer = "";
    this.started = false;
    this.sawCR = false;
    this.data = [];
    this.eventType = "";
    this.lastEventId = null;
    this.retry = null;
  }

  /** Consume text and return the events it completes: [{event, data, id}]. */
  feed(text) {
    if (!text) return [];
    if (this.sawCR) {
      // The CR that ended the previous read already ended a line; its LF is not a new one.
      this.sawCR = false;
      if (text[0] === "\n") text = text.slice(1);
    }
    let buf = this.buffer + text;
    if (!this.started) {
      if (buf.length === 0) return [];
      this.started = true;
      if (buf[0] === "\uFEFF") buf = buf.slice(1);
    }
    const events = [];
    let start = 0;
    const n = buf.length;
    while (start < n) {
      const lf = buf.indexOf("\n", start);
      const cr = buf.indexOf("\r", start);
      if (lf === -1 && cr === -1) break;
      let end;
      let next;
      if (cr === -1 || (lf !== -1 && lf < cr)) {
        end = lf;
        next = lf + 1;
      } else if (cr + 1 < n) {
        end = cr;
        next = buf[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else {
        end = cr;
        next = cr + 1;
        this.sawCR = true;
      }
      const event = this.#line(buf.slice(start, end));
      if (event) events.push(event);
      start = next;
    }
    this.buffer = buf.slice(start);
    return events;
  }

  #line(line) {
    if (line === "") return this.#dispatch();
    if (line[0] === ":") return null;
    const colon = line.indexOf(":");
    let name = line;
    let value = "";
    if (colon !== -1) {
      name = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
    }
    if (name === "data") this.data.push(value);
    else if (name === "event") this.eventType = value;
    else if (name === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (name === "retry" && /^[0-9]+$/.test(value)) this.retry = Number(value);
    return null;
  }

  #dispatch() {
    const data = this.data;
    const event = this.eventType || "message";
    this.data = [];
    this.eventType = "";
    if (data.length === 0) return null;
    return { event, data: data.join("\n"), id: this.lastEventId };
  }
}

// Showing entries by their content (the stream view and the camera grid): images through Blob URLs,
// JSON and text as text, anything else as a hex dump; and following a stream's newest entry.
import { el, formatAge } from "./dashboard-format.js";
import { serverNow, sleep, store } from "./dashboard-state.js";

const JPEG = [0xff, 0xd8, 0xff];
const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const startsWith = (bytes, prefix) => prefix.every((b, i) => bytes[i] === b);
const decoder = new TextDecoder("utf-8", { fatal: true });

/** What an entry is: {kind: image|json|text|binary, ...}. */
export function describe(bytes) {
  if (startsWith(bytes, JPEG)) return { kind: "image", type: "image/jpeg" };
  if (startsWith(bytes, PNG)) return { kind: "image", type: "image/png" };
  let text = null;
  try {
    text = decoder.decode(bytes);
  } catch {
    text = null;
  }
  if (text !== null) {
    const trimmed = text.trim();
    if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
      try {
        return { kind: "json", text: JSON.stringify(JSON.parse(trimmed), null, 2) };
      } catch {
        // not JSON after all: shown as text
      }
    }
    // eslint-disable-next-line no-control-regex
    if (!/[\u0000-\u0008\u000e-\u001f]/.test(text)) return { kind: "text", text };
  }
  const hex = Array.from(bytes.subarray(0, 64), (b) => b.toString(16).padStart(2, "0")).join(" ");
  return { kind: "binary", text: `${bytes.length} bytes\n${hex}${bytes.length > 64 ? " …" : ""}` };
}

/** A preview area showing one entry at a time; images through a Blob URL revoked once replaced. */
export class Preview {
  constructor(container) {
    this.container = container;
    this.url = null;
    this.img = null;
  }

  show(bytes) {
    const what = describe(bytes);
    if (what.kind === "image") {
      const url = URL.createObjectURL(new Blob([bytes], { type: what.type }));
      if (!this.img) {
        this.img = el("img", { attrs: { alt: "newest entry" } });
        this.container.replaceChildren(this.img);
      }
      const previous = this.url;
      this.url = url;
      this.img.src = url;
      if (previous) URL.revokeObjectURL(previous);
      return what;
    }
    this.clear();
    this.container.replaceChildren(el("pre", { text: what.text }));
    return what;
  }

  clear() {
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = null;
    this.img = null;
    this.container.replaceChildren();
  }
}

/**
 * Follow a stream's newest entry with a `latest=true` pull, acknowledged at most `hz` times a second:
 * the server sends nothing more until then, so a preview costs at most `hz` deliveries a second.
 * `onEntry(entry, latency)`: `latency` is the time from the entry's id to its arrival here (server
 * clock) for an entry added while followed, and null for the entry that was the newest already when
 * the pull opened (its age is no latency: see `timing`).
 */
export function follow(sid, hz, onEntry, onError) {
  let stopped = false;
  let first = true;
  const opened = serverNow();
  const pull = store.pull(sid, { lastEntryId: "*", latest: true, ack: true });
  (async () => {
    try {
      for await (const entry of pull) {
        const started = performance.now();
        const arrived = serverNow();
        // only the first delivery can be an entry stored before (`*`: the newest one, if any)
        const before = first && entry.time < opened;
        first = false;
        onEntry(entry, before ? null : arrived - entry.time);
        const wait = 1000 / hz - (performance.now() - started);
        if (wait > 0) await sleep(wait);
        if (stopped) break;
      }
    } catch (error) {
      if (!stopped) onError(error);
    }
  })();
  return () => { stopped = true; pull.close(); };
}

/**
 * How an entry's timing reads: `latency 35 ms` (added while followed: the time it took to arrive), or
 * `last entry 3 min ago` (the age of an entry stored before, which grows: call again to refresh it).
 */
export function timing(entry, latency) {
  if (latency !== null && latency !== undefined) return `latency ${formatAge(latency)}`;
  return `last entry ${formatAge(serverNow() - entry.time)} ago`;
}

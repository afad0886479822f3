// Shared formatting and DOM helpers of the dashboard's views (no state: pure functions of their arguments).
// Nothing from a stream is inserted as HTML: `el` and `setText` write textContent only.

export const $ = (id) => document.getElementById(id);

/** A new element with its text, class, attributes and children. */
export function el(tag, { text, className, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

/** Set a node's text (untouched when it already reads so: no needless layout). */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** An error's message in `node`, or nothing when `error` is null. */
export function showError(node, error) {
  setText(node, error ? String(error.message || error) : "");
}

/** A `<dl>` of `[name, value]` rows. */
export function fillList(node, rows) {
  node.replaceChildren(...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: String(value) })]));
}

export function formatRate(perSecond) {
  if (perSecond === null || perSecond === undefined || Number.isNaN(perSecond)) return "–";
  if (perSecond === 0) return "0";
  if (perSecond < 10) return perSecond.toFixed(1);
  return Math.round(perSecond).toLocaleString("en");
}

export function formatBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

/** A recording's length as people read it: `4.2 s`, `3 min 07 s`, `2 h 05 min`. */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const whole = Math.floor(seconds);
  if (whole < 3600) return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
  return `${Math.floor(whole / 3600)} h ${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")} min`;
}

/** A duration in milliseconds, rounded to what matters: `35 ms`, `4.2 s`, `3 min`, `1.5 h`, `2 d`. */
export function formatAge(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)} min`;
  if (ms < 86_400_000) return `${(ms / 3_600_000).toFixed(1)} h`;
  return `${Math.round(ms / 86_400_000)} d`;
}

/** Bytes per second of a summary, estimated as entries per second times the newest entry's size. */
export function bytesRate(summary) {
  if (summary.rate === null || summary.rate === undefined) return "–";
  if (summary.rate === 0) return "0";
  return `≈ ${formatBytes(summary.rate * summary["last-entry-size"])}`;
}

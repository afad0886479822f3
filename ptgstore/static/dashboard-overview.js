// The streams overview: one row per stream with its length, rates, newest entry's age, max_len and
// metadata, filtered by name; checked rows open side by side in the camera grid.
import { entryTime } from "./ptgstore.js";
import { $, bytesRate, el, formatAge, formatRate, setText } from "./dashboard-format.js";
import { state } from "./dashboard-state.js";

const RATE_WINDOW = 4; // samples (polls) a rate is computed over
const rows = new Map(); // sid -> {row, cells, samples, sid, key}: this view's own

function rateOf(samples) {
  // samples: [{t, added, length}] oldest first; entries-added is exact (Redis 7+); else length growth
  if (samples.length < 2) return null;
  const first = samples[0];
  const last = samples[samples.length - 1];
  const seconds = (last.t - first.t) / 1000;
  if (seconds <= 0) return null;
  if (last.added !== null && first.added !== null) return Math.max(0, last.added - first.added) / seconds;
  return Math.max(0, last.length - first.length) / seconds;
}

function makeRow(sid) {
  const check = el("input", { attrs: { type: "checkbox", "aria-label": `choose ${sid} for the grid` } });
  check.checked = state.checked.has(sid);
  check.addEventListener("change", () => {
    if (check.checked) state.checked.add(sid); else state.checked.delete(sid);
  });
  const link = el("a", { text: sid, attrs: { href: `#/stream/${encodeURIComponent(sid)}` } });
  const cells = {
    length: el("td", { className: "num" }), rate: el("td", { className: "num" }),
    bytes: el("td", { className: "num" }), age: el("td", { className: "num" }),
    maxLen: el("td", { className: "num" }), meta: el("td", { className: "meta" }),
  };
  const row = el("tr", { attrs: { "data-sid": sid } }, [
    el("td", { className: "check" }, [check]), el("td", {}, [link]),
    cells.length, cells.rate, cells.bytes, cells.age, cells.maxLen, cells.meta,
  ]);
  return { row, cells, samples: [], sid, key: sid.toLowerCase() };
}

/** Show a `/status/streams` answer: rows added, updated (with rates over the last polls) and removed. */
export function updateOverview(reply) {
  const body = $("streams").tBodies[0];
  const seen = new Set();
  const filter = $("filter").value.trim().toLowerCase();
  let shown = 0;
  let previous = null;
  for (const summary of reply.streams) {
    const { sid } = summary;
    // a snapshot taken before this page deleted the stream still lists it: skip it
    if (state.deleted.has(sid)) {
      if (reply.now <= state.deleted.get(sid)) continue;
      state.deleted.delete(sid);
    }
    seen.add(sid);
    state.summaries.set(sid, summary);
    let entry = rows.get(sid);
    if (!entry) {
      entry = makeRow(sid);
      rows.set(sid, entry);
      // keep the server's sorted order
      if (previous) previous.row.after(entry.row); else body.prepend(entry.row);
    }
    previous = entry;
    const newest = entry.samples[entry.samples.length - 1];
    if (!newest || newest.t !== reply.now) { // the server shares one snapshot a second between callers
      entry.samples.push({ t: reply.now, added: summary["entries-added"], length: summary.length });
    }
    if (entry.samples.length > RATE_WINDOW) entry.samples.shift();
    const rate = rateOf(entry.samples);
    summary.rate = rate;
    const { cells } = entry;
    setText(cells.length, summary.length.toLocaleString("en"));
    setText(cells.rate, formatRate(rate));
    setText(cells.bytes, bytesRate(summary));
    const age = summary["last-entry"] ? reply.now - entryTime(summary["last-entry"]) : null;
    setText(cells.age, age === null ? "empty" : `${formatAge(age)} ago`);
    cells.age.classList.toggle("stale", age !== null && age > 5000);
    setText(cells.maxLen, String(summary.max_len));
    setText(cells.meta, Object.keys(summary.meta).length ? JSON.stringify(summary.meta) : "");
    const visible = !filter || entry.key.includes(filter);
    if (entry.row.hidden === visible) entry.row.hidden = !visible;
    if (visible) shown += 1;
  }
  for (const sid of rows.keys()) {
    if (!seen.has(sid)) forget(sid);
  }
  setText($("stream-count"), filter ? `${shown} of ${seen.size} streams` : `${seen.size} streams`);
  $("no-streams").hidden = seen.size > 0;
}

/** Drop a stream's row and what is known of it (gone from the server, or deleted by this page). */
export function forget(sid) {
  rows.get(sid)?.row.remove();
  rows.delete(sid);
  state.summaries.delete(sid);
  state.checked.delete(sid);
}

export function applyFilter() {
  const filter = $("filter").value.trim().toLowerCase();
  let shown = 0;
  for (const entry of rows.values()) {
    const visible = !filter || entry.key.includes(filter);
    entry.row.hidden = !visible;
    if (visible) shown += 1;
  }
  setText($("stream-count"), filter ? `${shown} of ${rows.size} streams` : `${rows.size} streams`);
}

/** The grid of the streams checked here. */
export function showChecked() {
  const query = new URLSearchParams([...state.checked].map((sid) => ["s", sid]));
  location.hash = `#/grid?${query}`;
}

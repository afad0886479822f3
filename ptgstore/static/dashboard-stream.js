// The stream view: a live preview of the newest entry (or the last entries, stepped through), the
// stream's numbers, and the admin's controls (max_len, metadata, delete).
import { entryTime } from "./ptgstore.js";
import { $, bytesRate, el, formatAge, formatBytes, formatRate, setText, showError } from "./dashboard-format.js";
import { forget } from "./dashboard-overview.js";
import { Preview, follow, timing } from "./dashboard-preview.js";
import { handleAuth, serverNow, state, stopAll, store } from "./dashboard-state.js";

const PREVIEW_HZ = 10; // at most this many preview updates per second
const HISTORY = 50; // entries one can step back through

// this view's own: the stream shown, its preview, the entry shown and the entries stepped through
const view = { sid: null, preview: null, last: null, latency: null, history: null, index: -1, filled: false };

function fillAdmin() {
  const summary = state.summaries.get(view.sid);
  if (!summary || view.filled) return;
  view.filled = true;
  $("max-len").value = summary.max_len;
  $("meta").value = JSON.stringify(summary.meta, null, 2);
}

export function openStream(sid) {
  view.sid = sid;
  view.preview = new Preview($("preview"));
  view.history = null;
  view.last = null;
  setText($("stream-title"), sid);
  setText($("entry-caption"), "waiting for an entry…");
  setText($("admin-message"), "");
  showError($("preview-error"), null);
  view.filled = false;
  $("max-len").value = "";
  $("meta").value = "";
  fillAdmin();
  goLive();
  updateStreamStats();
}

export function goLive() {
  stopAll();
  view.history = null;
  $("live").disabled = true;
  const stop = follow(view.sid, PREVIEW_HZ, (entry, latency) => {
    showEntry(entry, latency);
  }, (error) => { if (!handleAuth(error)) showError($("preview-error"), error); });
  state.stop.push(stop);
}

function showEntry(entry, latency) {
  const what = view.preview.show(entry.data);
  view.last = { entry, kind: what.kind === "image" ? what.type : what.kind };
  view.latency = latency;
  caption();
}

/** The shown entry's id, kind, size and time; live, its latency or (stored before) its age. */
function caption() {
  if (!view.last) return;
  const { entry, kind } = view.last;
  const when = new Date(entry.time).toISOString().replace("T", " ").replace("Z", " UTC");
  const parts = [`${entry.id}`, kind, formatBytes(entry.data.length), when];
  if (view.history) parts.unshift(`${view.index + 1} of ${view.history.length}`);
  else parts.push(timing(entry, view.latency));
  setText($("entry-caption"), parts.join(" · "));
}

export async function stepBack(delta) {
  if (!view.history) {
    stopAll();
    $("live").disabled = false;
    try {
      view.history = await store.latest(view.sid, HISTORY);
    } catch (error) {
      if (!handleAuth(error)) showError($("preview-error"), error);
      return;
    }
    view.index = view.history.length - 1; // the newest, as live showed it
  }
  const { history } = view;
  if (!history.length) {
    setText($("entry-caption"), "no entries");
    return;
  }
  view.index = Math.min(history.length - 1, Math.max(0, view.index + delta));
  showEntry(history[view.index], null);
}

/** The MJPEG link, offered for a stream whose newest entry is an image (what the MJPEG route plays). */
function offerMjpeg(summary) {
  const link = $("mjpeg-link");
  const image = Boolean(summary?.["last-entry-type"]);
  link.parentElement.hidden = !image;
  if (image) link.href = store.mjpegUrl(view.sid, { lastEntryId: "*" });
}

/** The stream's numbers, from the newest summary (called at each poll while this view shows). */
export function updateStreamStats() {
  const summary = state.summaries.get(view.sid);
  const info = $("stream-info");
  offerMjpeg(summary);
  caption(); // an age grows
  if (!summary) {
    setText($("stream-stats"), "no such stream (yet)");
    info.replaceChildren();
    return;
  }
  fillAdmin();
  const age = summary["last-entry"] ? serverNow() - entryTime(summary["last-entry"]) : null;
  setText($("stream-stats"), `${formatRate(summary.rate)} entries/s · last entry ${age === null ? "–" : `${formatAge(age)} ago`}`);
  const rows = [
    ["length", summary.length.toLocaleString("en")], ["max_len", String(summary.max_len)],
    ["entries/s", formatRate(summary.rate)],
    ["bytes/s", bytesRate(summary)],
    ["newest entry", summary["last-entry"] || "–"], ["oldest entry", summary["first-entry"] || "–"],
    ["newest size", formatBytes(summary["last-entry-size"])],
    ["newest type", summary["last-entry-type"] || "not an image"],
  ];
  info.replaceChildren(...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })]));
}

async function saveMaxLen(event) {
  event.preventDefault();
  const value = Number($("max-len").value);
  try {
    const stored = await store.setMeta(view.sid, { max_len: value });
    $("meta").value = JSON.stringify(stored, null, 2);
    setText($("admin-message"), `max_len set to ${stored.max_len}`);
  } catch (error) {
    if (!handleAuth(error)) setText($("admin-message"), `not saved: ${error.message}`);
  }
}

async function saveMeta(event) {
  event.preventDefault();
  let parsed;
  try {
    parsed = JSON.parse($("meta").value || "{}");
  } catch (error) {
    setText($("admin-message"), `not JSON: ${error.message}`);
    return;
  }
  try {
    const stored = await store.setMeta(view.sid, parsed, { override: true });
    $("meta").value = JSON.stringify(stored, null, 2);
    if (stored.max_len) $("max-len").value = stored.max_len;
    setText($("admin-message"), "metadata saved");
  } catch (error) {
    if (!handleAuth(error)) setText($("admin-message"), `not saved: ${error.message}`);
  }
}

async function deleteStream() {
  const { sid } = view;
  // eslint-disable-next-line no-alert
  if (!window.confirm(`Delete stream "${sid}" and all its entries? This cannot be undone.`)) return;
  try {
    await store.deleteStreams(sid);
    state.deleted.set(sid, serverNow() + 1000); // allow for clocks a second apart
    forget(sid);
    location.hash = "#/";
  } catch (error) {
    if (!handleAuth(error)) setText($("admin-message"), `not deleted: ${error.message}`);
  }
}

/** Wire the view's buttons and forms (once, at start). */
export function bindStream() {
  $("older").addEventListener("click", () => stepBack(-1));
  $("newer").addEventListener("click", () => stepBack(1));
  $("live").addEventListener("click", goLive);
  $("max-len-form").addEventListener("submit", saveMaxLen);
  $("meta-form").addEventListener("submit", saveMeta);
  $("delete").addEventListener("click", deleteStream);
}

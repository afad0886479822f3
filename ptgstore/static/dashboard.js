// The ptgstore dashboard: streams overview, stream view and admin, camera grid, server panel,
// recordings. It uses the same public routes as any client, through ptgstore.js. Nothing from a
// stream is inserted as HTML: every text goes through textContent, images through Blob URLs.
import { PtgStore, PtgStoreError, entryTime } from "./ptgstore.js";

const POLL_MS = 1000; // overview and server panel refresh
const RATE_WINDOW = 4; // samples (polls) a rate is computed over
const PREVIEW_HZ = 10; // at most this many preview updates per second in the stream view
const TILE_HZ = 5; // ... and per grid tile
const HISTORY = 50; // entries one can step back through

const store = new PtgStore();
const $ = (id) => document.getElementById(id);
const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
const features = new Set(meta("ptgstore-features").split(/\s+/).filter(Boolean));
const state = {
  user: meta("ptgstore-user"),
  permissions: null, // what the token may do (GET /token/scope): controls it lacks stay hidden
  view: null,
  rows: new Map(), // sid -> {row, cells, samples}
  summaries: new Map(), // sid -> newest summary
  clockOffset: 0, // server clock minus this browser's, in ms
  checked: new Set(),
  deleted: new Map(), // sid -> server time of its deletion by this page
  stop: [], // what to close when the view changes
};

// -- small helpers ---------------------------------------------------------------------------------

function el(tag, { text, className, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function formatRate(perSecond) {
  if (perSecond === null || perSecond === undefined || Number.isNaN(perSecond)) return "–";
  if (perSecond === 0) return "0";
  if (perSecond < 10) return perSecond.toFixed(1);
  return Math.round(perSecond).toLocaleString("en");
}

function formatBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

/** A recording's length as people read it: `4.2 s`, `3 min 07 s`, `2 h 05 min`. */
function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const whole = Math.floor(seconds);
  if (whole < 3600) return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
  return `${Math.floor(whole / 3600)} h ${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")} min`;
}

function formatAge(ms) {
  if (ms === null || Number.isNaN(ms)) return "–";
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)} min`;
  if (ms < 86_400_000) return `${(ms / 3_600_000).toFixed(1)} h`;
  return `${Math.round(ms / 86_400_000)} d`;
}

const serverNow = () => Date.now() + state.clockOffset;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const pageVisible = () => document.visibilityState !== "hidden";

function showError(node, error) {
  setText(node, error ? String(error.message || error) : "");
}

function handleAuth(error) {
  if (error instanceof PtgStoreError && error.status === 401) {
    state.user = "";
    state.permissions = null;
    route();
    return true;
  }
  return false;
}

// -- rendering an entry by its content ------------------------------------------------------------

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
class Preview {
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
 */
function follow(sid, hz, onEntry, onError) {
  let stopped = false;
  const pull = store.pull(sid, { lastEntryId: "*", latest: true, ack: true });
  (async () => {
    try {
      for await (const entry of pull) {
        const started = performance.now();
        onEntry(entry);
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

// -- overview -------------------------------------------------------------------------------------

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

/** Bytes per second, estimated as entries per second times the newest entry's size. */
function bytesRate(summary) {
  if (summary.rate === null || summary.rate === undefined) return "–";
  if (summary.rate === 0) return "0";
  return `≈ ${formatBytes(summary.rate * summary["last-entry-size"])}`;
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

function updateOverview(reply) {
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
    let entry = state.rows.get(sid);
    if (!entry) {
      entry = makeRow(sid);
      state.rows.set(sid, entry);
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
    setText(cells.age, age === null ? "empty" : formatAge(age));
    cells.age.classList.toggle("stale", age !== null && age > 5000);
    setText(cells.maxLen, String(summary.max_len));
    setText(cells.meta, Object.keys(summary.meta).length ? JSON.stringify(summary.meta) : "");
    const visible = !filter || entry.key.includes(filter);
    if (entry.row.hidden === visible) entry.row.hidden = !visible;
    if (visible) shown += 1;
  }
  for (const [sid, entry] of state.rows) {
    if (!seen.has(sid)) {
      entry.row.remove();
      state.rows.delete(sid);
      state.summaries.delete(sid);
      state.checked.delete(sid);
    }
  }
  setText($("stream-count"), filter ? `${shown} of ${seen.size} streams` : `${seen.size} streams`);
  $("no-streams").hidden = seen.size > 0;
}

function applyFilter() {
  const filter = $("filter").value.trim().toLowerCase();
  let shown = 0;
  for (const entry of state.rows.values()) {
    const visible = !filter || entry.key.includes(filter);
    entry.row.hidden = !visible;
    if (visible) shown += 1;
  }
  setText($("stream-count"), filter ? `${shown} of ${state.rows.size} streams` : `${state.rows.size} streams`);
}

/** Poll the stream summaries about once a second while the page is visible (one request at a time). */
async function pollSummaries() {
  for (;;) {
    if (state.user && pageVisible() && ["overview", "stream", "grid"].includes(state.view)) {
      const sent = Date.now();
      try {
        const reply = await store.summaries();
        state.clockOffset = reply.now - (sent + Date.now()) / 2;
        updateOverview(reply);
        showError($("overview-error"), null);
        if (state.view === "stream") {
          updateStreamStats();
          fillAdmin();
        }
      } catch (error) {
        if (!handleAuth(error)) showError($("overview-error"), error);
      }
    }
    await sleep(POLL_MS);
  }
}

// -- stream view ----------------------------------------------------------------------------------

const streamView = { sid: null, preview: null, last: null, history: null, index: -1, arrivals: [], filled: false };

function fillAdmin() {
  const summary = state.summaries.get(streamView.sid);
  if (!summary || streamView.filled) return;
  streamView.filled = true;
  $("max-len").value = summary.max_len;
  $("meta").value = JSON.stringify(summary.meta, null, 2);
}

function openStream(sid) {
  streamView.sid = sid;
  streamView.preview = new Preview($("preview"));
  streamView.history = null;
  streamView.arrivals = [];
  streamView.last = null;
  setText($("stream-title"), sid);
  setText($("entry-caption"), "waiting for an entry…");
  setText($("admin-message"), "");
  showError($("preview-error"), null);
  $("mjpeg-link").href = `/mjpeg/${encodeURIComponent(sid)}?last_entry_id=*`;
  streamView.filled = false;
  $("max-len").value = "";
  $("meta").value = "";
  fillAdmin();
  goLive();
  updateStreamStats();
}

function goLive() {
  stopAll();
  streamView.history = null;
  $("live").disabled = true;
  const stop = follow(streamView.sid, PREVIEW_HZ, (entry) => {
    const received = serverNow();
    streamView.arrivals.push(received);
    if (streamView.arrivals.length > 20) streamView.arrivals.shift();
    showEntry(entry, received - entry.time);
  }, (error) => { if (!handleAuth(error)) showError($("preview-error"), error); });
  state.stop.push(stop);
}

function showEntry(entry, latency) {
  const what = streamView.preview.show(entry.data);
  streamView.last = entry;
  const kind = what.kind === "image" ? what.type : what.kind;
  const when = new Date(entry.time).toISOString().replace("T", " ").replace("Z", " UTC");
  const parts = [`${entry.id}`, kind, formatBytes(entry.data.length), when];
  if (latency !== null) parts.push(`latency ${formatAge(latency)}`);
  if (streamView.history) parts.unshift(`${streamView.index + 1} of ${streamView.history.length}`);
  setText($("entry-caption"), parts.join(" · "));
}

async function stepBack(delta) {
  if (!streamView.history) {
    stopAll();
    $("live").disabled = false;
    try {
      streamView.history = await store.latest(streamView.sid, HISTORY);
    } catch (error) {
      if (!handleAuth(error)) showError($("preview-error"), error);
      return;
    }
    streamView.index = streamView.history.length - 1; // the newest, as live showed it
  }
  const { history } = streamView;
  if (!history.length) {
    setText($("entry-caption"), "no entries");
    return;
  }
  streamView.index = Math.min(history.length - 1, Math.max(0, streamView.index + delta));
  showEntry(history[streamView.index], null);
}

function updateStreamStats() {
  const summary = state.summaries.get(streamView.sid);
  const info = $("stream-info");
  if (!summary) {
    setText($("stream-stats"), "no such stream (yet)");
    info.replaceChildren();
    return;
  }
  const age = summary["last-entry"] ? serverNow() - entryTime(summary["last-entry"]) : null;
  setText($("stream-stats"), `${formatRate(summary.rate)} entries/s · newest ${age === null ? "–" : formatAge(age)} ago`);
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
    const stored = await store.setMeta(streamView.sid, { max_len: value });
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
    const stored = await store.setMeta(streamView.sid, parsed, { override: true });
    $("meta").value = JSON.stringify(stored, null, 2);
    if (stored.max_len) $("max-len").value = stored.max_len;
    setText($("admin-message"), "metadata saved");
  } catch (error) {
    if (!handleAuth(error)) setText($("admin-message"), `not saved: ${error.message}`);
  }
}

async function deleteStream() {
  const sid = streamView.sid;
  // eslint-disable-next-line no-alert
  if (!window.confirm(`Delete stream "${sid}" and all its entries? This cannot be undone.`)) return;
  try {
    await store.deleteStreams(sid);
    state.deleted.set(sid, serverNow() + 1000); // allow for clocks a second apart
    const entry = state.rows.get(sid);
    if (entry) entry.row.remove();
    state.rows.delete(sid);
    state.summaries.delete(sid);
    location.hash = "#/";
  } catch (error) {
    if (!handleAuth(error)) setText($("admin-message"), `not deleted: ${error.message}`);
  }
}

// -- camera grid ----------------------------------------------------------------------------------

const GRID_MAX = 12; // tiles shown when the grid picks the cameras itself

/** The grid of every stream whose newest entry is an image (once the summaries are known). */
async function gridOfCameras() {
  for (let tries = 0; !state.summaries.size && tries < 50 && state.view === "grid"; tries += 1) await sleep(100);
  if (state.view !== "grid") return;
  const cameras = [...state.summaries.values()].filter((s) => s["last-entry-type"]).map((s) => s.sid);
  openGrid(cameras.slice(0, GRID_MAX));
}

function openGrid(sids) {
  const tiles = $("tiles");
  tiles.replaceChildren();
  if (!sids.length) {
    tiles.append(el("p", { className: "muted", text: "No camera streams: check streams in the overview, then “Show checked in grid”." }));
    return;
  }
  for (const sid of sids) {
    const area = el("div", { className: "preview" });
    const caption = el("span", { className: "muted", text: "waiting…" });
    const tile = el("div", { className: "tile", attrs: { "data-sid": sid } }, [
      area,
      el("div", { className: "caption" }, [
        el("a", { text: sid, attrs: { href: `#/stream/${encodeURIComponent(sid)}` } }), caption]),
    ]);
    tiles.append(tile);
    const preview = new Preview(area);
    const arrivals = [];
    state.stop.push(follow(sid, TILE_HZ, (entry) => {
      preview.show(entry.data);
      const now = serverNow();
      arrivals.push(now);
      if (arrivals.length > 10) arrivals.shift();
      const rate = state.summaries.get(sid)?.rate;
      setText(caption, `${formatRate(rate)}/s · latency ${formatAge(now - entry.time)}`);
    }, (error) => { if (!handleAuth(error)) setText(caption, error.message); }));
    state.stop.push(() => preview.clear());
  }
}

// -- server panel ---------------------------------------------------------------------------------

function fillList(node, rows) {
  node.replaceChildren(...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: String(value) })]));
}

async function pollServer() {
  let previous = null;
  for (;;) {
    if (state.user && pageVisible() && state.view === "server") {
      try {
        const status = await store.status();
        const redis = status.redis;
        fillList($("server-store"), [
          ["Redis", redis.reachable ? "reachable" : `unreachable: ${redis.error}`],
          ["address", `${redis.address}${redis.embedded ? " (embedded)" : ""}`],
          ["version", redis.redis_version ?? "–"], ["memory", redis.used_memory_human ?? "–"],
          ["clients", redis.connected_clients ?? "–"], ["up", redis.uptime_in_seconds !== undefined ? formatAge(redis.uptime_in_seconds * 1000) : "–"],
        ]);
        const rate = (key) => {
          if (!previous) return "–";
          const seconds = (status.now - previous.now) / 1000;
          return seconds > 0 ? Math.max(0, status[key] - previous[key]) / seconds : null;
        };
        const inRate = rate("entries_in");
        const outRate = rate("entries_out");
        fillList($("server-traffic"), [
          ["push sockets", status.open_sockets.push], ["pull sockets", status.open_sockets.pull],
          ["entries in/s", typeof inRate === "number" ? formatRate(inRate) : "–"],
          ["entries out/s", typeof outRate === "number" ? formatRate(outRate) : "–"],
          ["bytes in/s", typeof inRate === "number" ? formatBytes(rate("bytes_in")) : "–"],
          ["bytes out/s", typeof outRate === "number" ? formatBytes(rate("bytes_out")) : "–"],
          ["entries in (total)", status.entries_in.toLocaleString("en")],
          ["entries out (total)", status.entries_out.toLocaleString("en")],
        ]);
        fillList($("server-process"), [
          ["up", formatAge(status.uptime_s * 1000)], ["pid", status.pid], ["workers", status.workers],
          ["auth policy", status.auth], ["followed streams", status.followed_streams],
          ["recordings", recordingsState(status.recordings)],
        ]);
        previous = status;
        showError($("server-error"), null);
      } catch (error) {
        if (!handleAuth(error)) showError($("server-error"), error);
      }
    } else {
      previous = null;
    }
    await sleep(POLL_MS);
  }
}

// -- recordings (only when the server has them) ---------------------------------------------------

/** Where this process keeps recordings, or why it refuses them (its directory is not the deployment's). */
function recordingsState(recordings) {
  if (!recordings) return "–";
  if (recordings.problem) return `refused: ${recordings.problem}`;
  return `on; processes able to record: ${recordings.recorders_present}; shards written here: ${recordings.shards_held.join(", ") || "none"}`;
}

async function loadRecordings() {
  try {
    // /status is the admin's: only an admin is told why this server refuses recordings
    const status = state.permissions?.admin ? await store.status() : {};
    const problem = status.recordings && status.recordings.problem;
    setText($("recording-problem"), problem ? `Recordings are refused on this server: ${problem}` : "");
    $("recording-problem").hidden = !problem;
    const [infos, current] = await Promise.all([
      problem ? [] : store.request("GET", "/recordings", { query: { info: true } }),
      // a recording of streams this token may not read: say that one runs, not its name
      store.request("GET", "/recordings/current").catch((error) => {
        if (error instanceof PtgStoreError && error.forbidden) return { forbidden: true };
        throw error;
      }),
    ]);
    let now = "not recording";
    if (current?.forbidden) now = "recording now (streams you may not read)";
    else if (current) now = `recording now: ${current}`;
    setText($("recording-current"), now);
    $("recording-list").replaceChildren(...(infos || []).map(recordingItem));
    showError($("recording-error"), null);
  } catch (error) {
    if (!handleAuth(error)) showError($("recording-error"), error);
  }
}

/** One recording: its name, duration and size, its files as download links, and its info on demand. */
function recordingItem(info) {
  const name = String(info.name);
  const summary = `${formatDuration(info.duration_secs ?? 0)} · ${formatBytes(info.size)}` +
    (info.active ? " · recording" : "") + (info.error ? ` · stopped: ${info.error}` : "");
  const files = (info.files || []).map((file) => el("a", {
    text: String(file), className: "download",
    attrs: {
      href: `/recordings/static/${encodeURIComponent(name)}/${encodeURIComponent(file)}`,
      download: `${name}-${file}`,
    },
  }));
  const show = el("button", { text: "info", attrs: { type: "button" } });
  show.addEventListener("click", () => setText($("recording-info"), JSON.stringify(info, null, 2)));
  return el("li", { attrs: { "data-name": name } }, [
    el("span", { text: name, className: "name" }), el("span", { text: summary, className: "muted" }),
    ...files, show,
  ]);
}

async function recordingAction(path, query) {
  try {
    await store.request("PUT", path, { query });
  } catch (error) {
    if (!handleAuth(error)) showError($("recording-error"), error);
  }
  loadRecordings();
}

// -- permissions ----------------------------------------------------------------------------------

const NO_PERMISSIONS = { read: [], write: [], admin: false };

/** Ask what the token may do, then show only the controls it may use (every one hidden until then). */
async function loadPermissions() {
  try {
    state.permissions = await store.permissions();
  } catch (error) {
    if (handleAuth(error)) return;
    state.permissions = NO_PERMISSIONS;
  }
  const { admin, read } = state.permissions;
  $("nav-server").hidden = !admin; // /status is the admin's
  for (const id of ["max-len-form", "meta-form", "delete"]) $(id).hidden = !admin;
  $("recording-form").hidden = !read.includes("*"); // the form records every stream
}

// -- views and routing ----------------------------------------------------------------------------

function stopAll() {
  for (const stop of state.stop.splice(0)) stop();
}

function show(view) {
  state.view = view;
  for (const section of document.querySelectorAll("section.view")) section.hidden = section.id !== view;
  for (const link of document.querySelectorAll("#nav a[data-view]")) {
    link.classList.toggle("active", link.dataset.view === view);
  }
}

function route() {
  stopAll();
  $("nav").hidden = !state.user;
  setText($("whoami"), state.user ? `signed in as ${state.user}` : "");
  if (!state.user) {
    show("login");
    $("login-form").elements.username.focus();
    return;
  }
  const hash = location.hash.replace(/^#/, "") || "/";
  if (hash.startsWith("/stream/")) {
    show("stream");
    openStream(decodeURIComponent(hash.slice("/stream/".length)));
  } else if (hash.startsWith("/grid")) {
    show("grid");
    const query = new URLSearchParams(hash.split("?")[1] || "");
    const chosen = query.getAll("s");
    if (chosen.length) {
      openGrid(chosen);
    } else {
      gridOfCameras();
    }
  } else if (hash === "/server" && state.permissions?.admin) {
    show("server");
  } else if (hash === "/recordings" && features.has("recordings")) {
    show("recordings");
    loadRecordings();
  } else {
    show("overview");
  }
}

async function login(event) {
  event.preventDefault();
  const form = event.target;
  try {
    await store.login(form.elements.username.value, form.elements.password.value);
    state.user = form.elements.username.value;
    store.token = null; // the cookie the server set is what the page uses from now on
    form.reset();
    showError($("login-error"), null);
    await loadPermissions();
    route();
  } catch (error) {
    showError($("login-error"), error.status === 401 ? "wrong user name or password" : error);
  }
}

async function start() {
  $("nav-recordings").hidden = !features.has("recordings");
  $("login-form").addEventListener("submit", login);
  $("filter").addEventListener("input", applyFilter);
  $("show-grid").addEventListener("click", () => {
    const query = new URLSearchParams([...state.checked].map((sid) => ["s", sid]));
    location.hash = `#/grid?${query}`;
  });
  $("older").addEventListener("click", () => stepBack(-1));
  $("newer").addEventListener("click", () => stepBack(1));
  $("live").addEventListener("click", goLive);
  $("max-len-form").addEventListener("submit", saveMaxLen);
  $("meta-form").addEventListener("submit", saveMeta);
  $("delete").addEventListener("click", deleteStream);
  $("recording-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("recording-name").value.trim();
    recordingAction("/recordings/start", name ? { rec_id: name } : {});
  });
  $("recording-stop").addEventListener("click", () => recordingAction("/recordings/stop"));
  window.addEventListener("hashchange", route);
  if (state.user) await loadPermissions();
  route();
  pollSummaries();
  pollServer();
}

start();

// ptgstore.js: a browser client for ptgstore (an ES module, no dependencies, no build step).
//
//   import { PtgStore } from "/static/ptgstore.js";
//   const store = new PtgStore();                 // same origin; or new PtgStore({url, token})
//   await store.login("test", "test");            // POST /token (also sets the cookie)
//   const ids = await store.streams();
//   const pusher = store.pusher("main");          // WebSocket push, one entry per message
//   await pusher.push(new Uint8Array([1, 2, 3])); // resolves with the entry id (ack=true), stored once
//                                                 // even across dropped connections (it resends)
//   for await (const entry of store.pull("main", { latest: true })) {
//     entry.sid; entry.id; entry.data;            // data: Uint8Array; entry.time: epoch ms of the id
//   }
//   const rec = await store.startRecording({ name: "run1" }); // recordings: start, stop, list, files
//   await store.stopRecording();
//   img.src = store.mjpegUrl("main", { lastEntryId: "*" }); // links carry no token: the cookie's
//
// Behind a reverse proxy at a sub-path, give the URL with it: new PtgStore({url: origin + "/store"}).
//
// The token travels as `Authorization: Bearer` on HTTP and `?token=` on WebSockets when the client
// holds one; otherwise the `authorization` cookie set by `/token` does (same origin only).
// Wire protocol: docs/protocol.md (pull deliveries are a JSON header, then one binary blob).

/** An error from the server: an HTTP status or a WebSocket close code, with its reason. */
export class PtgStoreError extends Error {
  constructor(message, { status = null, code = null } = {}) {
    super(message);
    this.name = "PtgStoreError";
    this.status = status;
    this.code = code;
  }

  /**
   * Whether the token lacks a permission (HTTP 403, or a socket closed 1008 with a `forbidden:`
   * reason): the message names the stream or action and the permission.
   */
  get forbidden() {
    return this.message.startsWith("forbidden:") && (this.status === 403 || this.code === 1008);
  }
}

const encoder = new TextEncoder();

/** The epoch milliseconds of an entry id `<ms>-<seq>`. */
export function entryTime(entryId) {
  return Number(String(entryId).split("-")[0]);
}

/** Split one pull delivery (header items `[sid, id, start]` and the blob) into entries. */
export function splitDelivery(items, blob) {
  const bytes = blob instanceof Uint8Array ? blob : new Uint8Array(blob);
  return items.map(([sid, id, start], i) => {
    const end = i + 1 < items.length ? items[i + 1][2] : bytes.length;
    return { sid, id, time: entryTime(id), data: bytes.subarray(start, end) };
  });
}

function asBytes(data) {
  if (typeof data === "string") return encoder.encode(data);
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data) || data instanceof Blob) return data;
  throw new TypeError("an entry is a string, an ArrayBuffer, a typed array or a Blob");
}

export class PtgStore {
  /**
   * @param {object} options
   * @param {string} [options.url] the server's base URL (default: this page's origin)
   * @param {string} [options.token] a bearer token (default: none, the cookie is used)
   */
  constructor({ url = globalThis.location?.origin, token = null } = {}) {
    this.url = String(url).replace(/\/+$/, "");
    this.token = token;
  }

  /** The WebSocket URL of `path` (with the token in the query when the client holds one). */
  socketUrl(path, query = {}) {
    const url = new URL(this.httpUrl(path, query));
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (this.token) url.searchParams.set("token", this.token);
    return url.toString();
  }

  /**
   * The HTTP URL of `path` under the server's URL (its root path included), for a link or an `<img>`:
   * it carries no token, so the page's cookie authenticates it (same origin only).
   */
  httpUrl(path, query = {}) {
    const url = new URL(this.url + path);
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    return url.toString();
  }

  /** Any HTTP call: the parsed reply (JSON, or the Response itself with `raw`); PtgStoreError on failure. */
  async request(method, path, { query = {}, json, body, headers = {}, raw = false, signal } = {}) {
    const url = this.httpUrl(path, query);
    const sent = { ...headers };
    if (this.token) sent.Authorization = `Bearer ${this.token}`;
    if (json !== undefined) {
      sent["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    }
    const response = await fetch(url, { method, headers: sent, body, signal, credentials: "same-origin" });
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail ?? detail;
      } catch {
        // not a JSON error body: keep the status text
      }
      throw new PtgStoreError(String(detail), { status: response.status });
    }
    return raw ? response : response.json();
  }

  /** Log in with the password form; keeps the token (the server also sets its cookie). */
  async login(username, password) {
    const form = new URLSearchParams({ username, password });
    const reply = await this.request("POST", "/token", {
      body: form, headers: { "Content-Type": "application/x-www-form-urlencoded" },
    });
    this.token = reply.access_token;
    return reply;
  }

  /** Who the token names and what it may do: `{user, read, write, admin, expires}` (GET /token/scope). */
  permissions() {
    return this.request("GET", "/token/scope");
  }

  /**
   * A new token narrower than this one (POST /token/derive): `read` and `write` stream-id patterns,
   * `admin`, `ttl` seconds. Rejects with a `forbidden` error when it asks for more than this token has.
   */
  async deriveToken({ read = [], write = [], admin = false, ttl } = {}) {
    const form = new URLSearchParams();
    for (const pattern of read) form.append("read", pattern);
    for (const pattern of write) form.append("write", pattern);
    form.append("admin", String(admin));
    if (ttl !== undefined) form.append("ttl", String(ttl));
    const reply = await this.request("POST", "/token/derive", {
      body: form, headers: { "Content-Type": "application/x-www-form-urlencoded" },
    });
    return reply.access_token;
  }

  /** Sorted stream ids, or info objects with `{info: true}`. */
  streams({ info = false } = {}) {
    return this.request("GET", "/streams", { query: { info } });
  }

  /** One stream's info object. */
  info(sid) {
    return this.request("GET", `/streams/${encodeURIComponent(sid)}`, { query: { report_error: true } });
  }

  /** A summary of every stream and the server's clock: `{now, streams: [...]}` (GET /status/streams). */
  summaries() {
    return this.request("GET", "/status/streams");
  }

  /** The server's status: store, open sockets, entry counters (GET /status). */
  status() {
    return this.request("GET", "/status");
  }

  /** Merge metadata into a stream's (replace it with `{override: true}`); `max_len` sets retention. */
  setMeta(sid, meta, { override = false } = {}) {
    return this.request("PUT", `/streams/${encodeURIComponent(sid)}`, { query: { override }, json: meta });
  }

  /** Delete streams (`a+b` for several): `{deleted: [...]}`. */
  deleteStreams(sid) {
    return this.request("DELETE", `/streams/${encodeURIComponent(sid).replaceAll("%2B", "+")}`);
  }

  /** The newest `count` entries of a stream (REST), oldest first. */
  async latest(sid, count = 1) {
    const response = await this.request("GET", `/data/${encodeURIComponent(sid)}`, {
      query: { last_entry_id: "*", count }, raw: true,
    });
    const items = JSON.parse(response.headers.get("entry-offset") || "[]");
    return splitDelivery(items, await response.arrayBuffer());
  }

  /** Upload entries over HTTP (one multipart request); resolves with their ids. */
  upload(sid, entries) {
    const form = new FormData();
    entries.forEach((entry, i) => {
      const data = asBytes(entry);
      form.append("entries", data instanceof Blob ? data : new Blob([data]), `${i}`);
    });
    return this.request("POST", `/data/${encodeURIComponent(sid)}`, { body: form });
  }

  /**
   * The URL of a stream as MJPEG (`/mjpeg/{sid}`), for an `<img>` of a page of this server (cookie
   * auth): JPEG and PNG entries play, others are skipped. `lastEntryId: "*"` starts at the newest.
   */
  mjpegUrl(sid, { lastEntryId, count, latest } = {}) {
    return this.httpUrl(`/mjpeg/${encodeURIComponent(sid)}`, { last_entry_id: lastEntryId, count, latest });
  }

  /** Recording ids, sorted (`hidden: true` includes hidden ones), or their info objects with `info: true`. */
  recordings({ info = false, hidden = false } = {}) {
    return this.request("GET", "/recordings", { query: { info, hidden } });
  }

  /** The active recording's id, or null when none (its info object with `info: true`). */
  currentRecording({ info = false } = {}) {
    return this.request("GET", "/recordings/current", { query: { info } });
  }

  /** One recording's info object (name, duration, size, streams, files). */
  recording(name) {
    return this.request("GET", `/recordings/${encodeURIComponent(name)}`);
  }

  /**
   * Start recording every stream, or `sids` (a list); resolves with the recording's id (`name`, or
   * the start time). Rejects with status 409 when one is active or the name exists.
   */
  startRecording({ name, sids } = {}) {
    return this.request("PUT", "/recordings/start", { query: { rec_id: name, sid: sids?.join("+") } });
  }

  /** Stop the active recording: resolves with 1 once its files are written, 0 when none was active. */
  stopRecording() {
    return this.request("PUT", "/recordings/stop");
  }

  /** Delete a recording's files. */
  deleteRecording(name) {
    return this.request("DELETE", `/recordings/${encodeURIComponent(name)}`);
  }

  /** The download URL of a recording's file (`part-000000.mcap`, `info.json`): cookie auth, as `mjpegUrl`. */
  recordingFileUrl(name, file) {
    return this.httpUrl(`/recordings/static/${encodeURIComponent(name)}/${encodeURIComponent(file)}`);
  }

  /**
   * A push socket (`/data/{sid}/push`); `push(data)` resolves with the new entry id when `ack`.
   * With `ack` it carries on across dropped connections and server restarts (see `Pusher`);
   * options: `producer` (default: a random id), `reconnectTimeout` (ms, default 30000), `maxInFlight`
   * (unacknowledged entries at most, default 32: fewer than the server remembers, `PTGSTORE_PRODUCER_BATCHES`).
   */
  pusher(sid, options = {}) {
    return new Pusher(this, `/data/${encodeURIComponent(sid)}/push`, options);
  }

  /**
   * Pull entries as an async iterator (`/data/{sid}/pull`), `sid` one stream or `a+b`.
   * With `ack` (default) the server sends the next delivery only once the previous one is consumed,
   * so a slow consumer is never flooded; with `latest` each delivery holds only the newest entry.
   */
  pull(sid, { lastEntryId = "$", count = 1, latest = false, ack = true, timeout, timeSyncId, gaps } = {}) {
    const path = `/data/${encodeURIComponent(sid).replaceAll("%2B", "+")}/pull`;
    const query = { last_entry_id: lastEntryId, count, latest, ack, timeout, time_sync_id: timeSyncId, gaps };
    return new Pull(this.socketUrl(path, query), ack);
  }
}

/** Close a socket; one still connecting is closed once open (closing it earlier is logged as an error). */
function closeSocket(socket) {
  if (socket.readyState === WebSocket.CONNECTING) {
    socket.addEventListener("open", () => socket.close(1000), { once: true });
  } else if (socket.readyState === WebSocket.OPEN) {
    socket.close(1000);
  }
}

function closeError(event) {
  const reason = event.reason || (event.code === 1006 ? "connection refused or lost" : `closed with ${event.code}`);
  return new PtgStoreError(reason, { code: event.code });
}

/** Close codes after which a pusher reconnects: going away, dropped, store unavailable, restarting. */
const TRANSIENT_CLOSES = new Set([1001, 1006, 1011, 1012, 1013]);

function randomId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A WebSocket push: one binary message per entry. With `ack` (the default) the socket names a
 * producer and numbers its entries (docs/protocol.md, "Idempotent pushes"): when it drops or the
 * server goes away it reconnects with backoff, resends what was not acknowledged, and each push
 * resolves once with its entry's id, in order; the server stores every entry once. Only an
 * interruption longer than `reconnectTimeout` ms (or a refusal) rejects the pending pushes.
 * `reconnects` and `resends` count what it took. Without `ack` nothing is resent (as before).
 */
export class Pusher {
  constructor(store, path, { ack = true, producer = null, reconnectTimeout = 30000, maxInFlight = 32 } = {}) {
    this.store = store;
    this.path = path;
    this.ack = ack;
    this.producer = ack ? producer || randomId() : null;
    this.reconnectTimeout = reconnectTimeout;
    this.maxInFlight = maxInFlight; // entries unacknowledged at most (the server remembers 64 by default)
    this.nextSeq = 1;
    this.pending = []; // {seq, data, resolve, reject, sent}: numbered, not yet acknowledged, in order
    this.queue = []; // pushes waiting until fewer than maxInFlight are unacknowledged
    this.reconnects = 0;
    this.resends = 0;
    this.error = null;
    this.closing = false;
    this.everOpened = false;
    this.lostAt = null;
    this.delay = 0; // a cut connection is usually back at once: the first retry does not wait
    this.opened = new Promise((resolve, reject) => {
      this.openedResolve = resolve;
      this.openedReject = reject;
    });
    this.opened.catch(() => {}); // reported by push()
    this.connect();
  }

  connect() {
    const seq = this.pending.length ? this.pending[0].seq : this.nextSeq;
    const query = this.ack ? { ack: true, producer: this.producer, seq } : { ack: false };
    const socket = new WebSocket(this.store.socketUrl(this.path, query));
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.addEventListener("open", () => {
      if (this.everOpened) this.reconnects += 1;
      this.everOpened = true;
      if (!this.pending.length) this.lostAt = null; // nothing at stake: a later drop starts a new wait
      this.openedResolve();
      for (const item of this.pending) this.send(item);
    });
    socket.addEventListener("message", (event) => {
      if (socket !== this.socket) return;
      this.lostAt = null; // acknowledged: the interruption, if any, is over
      this.delay = 0;
      const item = this.pending.shift();
      if (item) item.resolve(String(event.data));
      this.fill();
    });
    socket.addEventListener("close", (event) => this.closed(socket, event));
  }

  send(item) {
    if (item.sent) this.resends += 1;
    item.sent = true;
    this.socket.send(item.data);
  }

  closed(socket, event) {
    if (socket !== this.socket) return;
    if (this.closing || !this.ack || !this.everOpened || !TRANSIENT_CLOSES.has(event.code)) {
      const error = this.closing || event.code === 1000
        ? new PtgStoreError("push socket closed", { code: event.code }) : closeError(event);
      this.fail(error);
      return;
    }
    const now = Date.now();
    if (this.lostAt === null) this.lostAt = now;
    const left = this.lostAt + this.reconnectTimeout - now;
    if (left <= 0) {
      const error = closeError(event);
      this.fail(new PtgStoreError(`${error.message} (gave up after ${this.reconnectTimeout} ms; `
        + `${this.pending.length} entries may be stored)`, { code: event.code }));
      return;
    }
    setTimeout(() => { if (!this.closing) this.connect(); }, Math.min(this.delay, left));
    this.delay = this.delay ? Math.min(this.delay * 2, 1000) : 50;
  }

  fail(error) {
    this.error = error;
    this.openedReject(error);
    for (const item of this.pending.splice(0).concat(this.queue.splice(0))) item.reject(error);
  }

  fill() {
    while (this.queue.length && this.pending.length < this.maxInFlight) {
      const item = this.queue.shift();
      item.seq = this.nextSeq++;
      this.pending.push(item);
      if (this.socket.readyState === WebSocket.OPEN) this.send(item);
    }
  }

  /** Send one entry; resolves with its id (with ack), else once it is sent. */
  async push(data) {
    const bytes = asBytes(data);
    if (!this.ack) {
      await this.opened;
      if (this.error) throw this.error;
      this.socket.send(bytes);
      return null;
    }
    if (this.error) throw this.error;
    return new Promise((resolve, reject) => {
      this.queue.push({ data: bytes, resolve, reject, sent: false });
      this.fill();
    });
  }

  /** What it took so far: `{producer, reconnects, resends}`. */
  get summary() {
    return { producer: this.producer, reconnects: this.reconnects, resends: this.resends };
  }

  close() {
    this.closing = true;
    closeSocket(this.socket);
  }
}

/** A WebSocket pull as an async iterator of entries `{sid, id, time, data}`. */
export class Pull {
  constructor(url, ack) {
    this.ack = ack;
    this.entries = [];
    this.header = null;
    this.owed = false; // an ack is due before the next delivery
    this.wake = null;
    this.done = false;
    this.error = null;
    this.gaps = []; // gap notices `{sid, after, oldest}` (pull with `gaps: true`)
    this.socket = new WebSocket(url);
    this.socket.binaryType = "arraybuffer";
    this.socket.addEventListener("message", (event) => this.receive(event.data));
    this.socket.addEventListener("close", (event) => {
      this.done = true;
      if (event.code !== 1000 && !this.closing) this.error = closeError(event);
      this.notify();
    });
  }

  receive(data) {
    if (typeof data === "string") {
      const parsed = JSON.parse(data);
      if (Array.isArray(parsed)) this.header = parsed;
      else if (parsed.gap) this.gaps.push(parsed.gap);
      return;
    }
    this.entries.push(...splitDelivery(this.header || [], data));
    this.header = null;
    this.owed = this.ack;
    this.notify();
  }

  notify() {
    if (this.wake) {
      const wake = this.wake;
      this.wake = null;
      wake();
    }
  }

  async next() {
    for (;;) {
      if (this.entries.length) return { value: this.entries.shift(), done: false };
      if (this.done) {
        if (this.error) throw this.error;
        return { value: undefined, done: true };
      }
      if (this.owed && this.socket.readyState === WebSocket.OPEN) {
        this.owed = false;
        this.socket.send("ack");
      }
      await new Promise((resolve) => { this.wake = resolve; });
    }
  }

  async return() {
    this.close();
    return { value: undefined, done: true };
  }

  close() {
    this.closing = true;
    this.done = true;
    closeSocket(this.socket);
    this.notify();
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

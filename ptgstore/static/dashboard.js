// The ptgstore dashboard: streams overview, stream view and admin, camera grid, server panel,
// recordings, one module each (dashboard-*.js), sharing state through dashboard-state.js only and
// formatting through dashboard-format.js. This module routes between them, signs in, and polls the
// stream summaries the views share. It uses the same public routes as any client, through
// ptgstore.js. Nothing from a stream is inserted as HTML: every text goes through textContent,
// images through Blob URLs.
import { $, setText, showError } from "./dashboard-format.js";
import { gridOfCameras, openGrid } from "./dashboard-grid.js";
import { applyFilter, showChecked, updateOverview } from "./dashboard-overview.js";
import { bindRecordings, loadRecordings } from "./dashboard-recordings.js";
import { pollServer } from "./dashboard-server.js";
import { features, handleAuth, pageVisible, sleep, state, stopAll, store } from "./dashboard-state.js";
import { bindStream, openStream, updateStreamStats } from "./dashboard-stream.js";

const POLL_MS = 1000; // overview refresh

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
        if (state.view === "stream") updateStreamStats();
      } catch (error) {
        if (!handleAuth(error)) showError($("overview-error"), error);
      }
    }
    await sleep(POLL_MS);
  }
}

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
    const chosen = new URLSearchParams(hash.split("?")[1] || "").getAll("s");
    if (chosen.length) openGrid(chosen); else gridOfCameras();
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
  state.signedOut = route;
  $("nav-recordings").hidden = !features.has("recordings");
  $("login-form").addEventListener("submit", login);
  $("filter").addEventListener("input", applyFilter);
  $("show-grid").addEventListener("click", showChecked);
  bindStream();
  bindRecordings();
  window.addEventListener("hashchange", route);
  if (state.user) await loadPermissions();
  route();
  pollSummaries();
  pollServer();
}

start();

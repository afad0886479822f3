// The dashboard's one shared state: the client, who is signed in, the stream summaries the views
// share, and what to close when the view changes. Views read and write it here and nowhere else.
import { PtgStore, PtgStoreError } from "./ptgstore.js";

const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";

/** The path prefix a reverse proxy serves ptgstore under (PTGSTORE_ROOT_PATH), "" at the root. */
export const root = meta("ptgstore-root");
/** The client every view uses: this origin, under the root path. */
export const store = new PtgStore({ url: globalThis.location.origin + root });
/** Optional parts of the server the page shows panels for (`recordings`). */
export const features = new Set(meta("ptgstore-features").split(/\s+/).filter(Boolean));

export const state = {
  user: meta("ptgstore-user"),
  permissions: null, // what the token may do (GET /token/scope): controls it lacks stay hidden
  view: null,
  summaries: new Map(), // sid -> newest summary (with its `rate`), from the overview's poll
  clockOffset: 0, // server clock minus this browser's, in ms
  checked: new Set(), // sids checked in the overview for the grid
  deleted: new Map(), // sid -> server time of its deletion by this page
  stop: [], // what to close when the view changes
  signedOut: () => {}, // set by the router: show the login form
};

export const serverNow = () => Date.now() + state.clockOffset;
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const pageVisible = () => document.visibilityState !== "hidden";

/** Whether `error` says the session ended (401): then the page goes back to its login form. */
export function handleAuth(error) {
  if (error instanceof PtgStoreError && error.status === 401) {
    state.user = "";
    state.permissions = null;
    state.signedOut();
    return true;
  }
  return false;
}

/** Close what the current view opened (pulls, previews, timers). */
export function stopAll() {
  for (const stop of state.stop.splice(0)) stop();
}

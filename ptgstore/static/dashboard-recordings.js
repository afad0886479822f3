// The recordings panel (only when the server has recordings): what records now, start and stop,
// and every recording with its files to download.
import { PtgStoreError } from "./ptgstore.js";
import { $, el, formatBytes, formatDuration, setText, showError } from "./dashboard-format.js";
import { handleAuth, state, store } from "./dashboard-state.js";

export async function loadRecordings() {
  try {
    // /status is the admin's: only an admin is told why this server refuses recordings
    const status = state.permissions?.admin ? await store.status() : {};
    const problem = status.recordings && status.recordings.problem;
    setText($("recording-problem"), problem ? `Recordings are refused on this server: ${problem}` : "");
    $("recording-problem").hidden = !problem;
    const [infos, current] = await Promise.all([
      problem ? [] : store.recordings({ info: true }),
      // a recording of streams this token may not read: say that one runs, not its name
      store.currentRecording().catch((error) => {
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
    attrs: { href: store.recordingFileUrl(name, String(file)), download: `${name}-${file}` },
  }));
  const show = el("button", { text: "info", attrs: { type: "button" } });
  show.addEventListener("click", () => setText($("recording-info"), JSON.stringify(info, null, 2)));
  return el("li", { attrs: { "data-name": name } }, [
    el("span", { text: name, className: "name" }), el("span", { text: summary, className: "muted" }),
    ...files, show,
  ]);
}

async function recordingAction(action) {
  try {
    await action();
  } catch (error) {
    if (!handleAuth(error)) showError($("recording-error"), error);
  }
  loadRecordings();
}

/** Wire the start form and the stop button (once, at start). */
export function bindRecordings() {
  $("recording-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("recording-name").value.trim() || undefined;
    recordingAction(() => store.startRecording({ name }));
  });
  $("recording-stop").addEventListener("click", () => recordingAction(() => store.stopRecording()));
}

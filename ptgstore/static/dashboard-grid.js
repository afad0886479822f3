// The camera grid: live previews side by side, of the streams checked in the overview or of every
// stream whose newest entry is an image.
import { $, el, formatRate, setText } from "./dashboard-format.js";
import { Preview, follow, timing } from "./dashboard-preview.js";
import { handleAuth, sleep, state } from "./dashboard-state.js";

const TILE_HZ = 5; // preview updates per second per tile, at most
const GRID_MAX = 12; // tiles shown when the grid picks the cameras itself
const REFRESH_MS = 1000; // captions re-read (an entry's age grows)

/** The grid of every stream whose newest entry is an image (once the summaries are known). */
export async function gridOfCameras() {
  for (let tries = 0; !state.summaries.size && tries < 50 && state.view === "grid"; tries += 1) await sleep(100);
  if (state.view !== "grid") return;
  const cameras = [...state.summaries.values()].filter((s) => s["last-entry-type"]).map((s) => s.sid);
  openGrid(cameras.slice(0, GRID_MAX));
}

export function openGrid(sids) {
  const tiles = $("tiles");
  tiles.replaceChildren();
  if (!sids.length) {
    tiles.append(el("p", { className: "muted", text: "No camera streams: check streams in the overview, then “Show checked in grid”." }));
    return;
  }
  const captions = [];
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
    const shown = { entry: null, latency: null };
    const write = () => {
      if (shown.entry) setText(caption, `${formatRate(state.summaries.get(sid)?.rate)}/s · ${timing(shown.entry, shown.latency)}`);
    };
    captions.push(write);
    state.stop.push(follow(sid, TILE_HZ, (entry, latency) => {
      preview.show(entry.data);
      shown.entry = entry;
      shown.latency = latency;
      write();
    }, (error) => { if (!handleAuth(error)) setText(caption, error.message); }));
    state.stop.push(() => preview.clear());
  }
  const timer = setInterval(() => captions.forEach((write) => write()), REFRESH_MS);
  state.stop.push(() => clearInterval(timer));
}

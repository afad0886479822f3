// The server panel (admins: /status is theirs): the store, sockets and rates, and the process.
import { $, fillList, formatAge, formatBytes, formatRate, showError } from "./dashboard-format.js";
import { handleAuth, pageVisible, sleep, state, store } from "./dashboard-state.js";

const POLL_MS = 1000;

/** Where this process keeps recordings, or why it refuses them (its directory is not the deployment's). */
function recordingsState(recordings) {
  if (!recordings) return "–";
  if (recordings.problem) return `refused: ${recordings.problem}`;
  return `on; processes able to record: ${recordings.recorders_present}; shards written here: ${recordings.shards_held.join(", ") || "none"}`;
}

function show(status, previous) {
  const { redis } = status;
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
    // a status answer comes from one worker: its pid and uptime; `workers` is how many serve
    ["up", formatAge(status.uptime_s * 1000)], ["workers", status.workers], ["answered by", `pid ${status.pid}`],
    ["auth policy", status.auth], ["followed streams", status.followed_streams],
    ["recordings", recordingsState(status.recordings)],
  ]);
}

/** Poll /status about once a second while the panel shows (rates: differences between two answers). */
export async function pollServer() {
  let previous = null;
  for (;;) {
    if (state.user && pageVisible() && state.view === "server") {
      try {
        const status = await store.status();
        show(status, previous);
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

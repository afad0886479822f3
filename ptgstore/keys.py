"""Every Redis key and channel name ptgstore uses, in one place, and the rule that groups streams.

A stream's keys are its stream key and two keys named after it: `<stream key>+meta` (a hash:
`meta` the JSON metadata, `max_len` its retention) and `<stream key>+epoch` (its generation,
bumped by each delete). No stream id contains `+`, so neither can be taken for a stream.

On a single Redis a stream key is the prefix and the stream id, as it always was (other tools may
XADD to it directly). On a Redis Cluster it also carries a hash tag naming the stream's **group**,
so that the streams of one group, and every key of each, live in one hash slot:
`<prefix>{<group>}<stream id>`. The group of a stream id is what comes before the first separator
(default `:`): `hl1:main` and `hl1:depth` are in group `hl1`; ids without the separator (or starting
with it) are in the default group, whose tag is `_`.

A producer's record (idempotent pushes, `producers.py`) is named after the account and the
producer id, and on a cluster carries the tag of the group its batches go to, so that it lives in
their slot: `<prefix>[{<group>}]ptgstore+producer:<producer id>/<account>`. It holds a `+` after the
part a stream id would take, so it is never taken for a stream or a stream's key.
"""
from __future__ import annotations

DEFAULT_GROUP_TAG = "_"
META_SUFFIX = "+meta"
EPOCH_SUFFIX = "+epoch"
PRODUCER_RECORD = "ptgstore+producer:"


class Keys:
    """Key names for one deployment (prefix, separator, single Redis or cluster)."""

    def __init__(self, prefix: str = "", *, separator: str = ":", tagged: bool = False):
        if not separator:
            raise ValueError("the group separator cannot be empty")
        self.prefix = prefix
        self.separator = separator
        self.tagged = tagged
        self.deleted_channel = prefix + "ptgstore:deleted"  # every process hears of every delete
        self.secret_fingerprint = prefix + "ptgstore:secret-fingerprint"
        # the layout before per-stream metadata (migrated from at start-up, see Store.migrate)
        self.legacy_meta = prefix + "ptgstore:meta"
        self.legacy_maxlen = prefix + "ptgstore:maxlen"

    def recording(self, name: str) -> str:
        """A key of the recordings' state (`RecordingKeys`): on a cluster all of them share one
        hash tag, so that its transactions and scripts stay in one slot."""
        return self.prefix + ("{ptgstore:recording}" if self.tagged else "") + name

    @property
    def recordings(self) -> RecordingKeys:
        """The keys of the recordings' state (`recordings/state.py`)."""
        return RecordingKeys(self)

    def group(self, sid: str) -> str:
        """The stream's placement group ("" for the default group)."""
        group, found, _ = sid.partition(self.separator)
        return group if found else ""

    def stream(self, sid: str) -> str:
        if not self.tagged:
            return self.prefix + sid
        return f"{self.prefix}{{{self.group(sid) or DEFAULT_GROUP_TAG}}}{sid}"

    def producer(self, producer_id: str, account: str, sid: str) -> str:
        """The record of a producer's batches into `sid`'s group, in that group's slot on a cluster.
        A producer id holds no `/`: the account after it cannot make two records' names meet."""
        tag = f"{{{self.group(sid) or DEFAULT_GROUP_TAG}}}" if self.tagged else ""
        return f"{self.prefix}{tag}{PRODUCER_RECORD}{producer_id}/{account}"

    def meta(self, sid: str) -> str:
        return self.stream(sid) + META_SUFFIX

    def epoch(self, sid: str) -> str:
        return self.stream(sid) + EPOCH_SUFFIX

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key under the prefix."""
        escaped = "".join("\\" + c if c in "\\*?[]" else c for c in self.prefix)
        return escaped + "*"

    def sid_of(self, key: str, suffix: str = "") -> str | None:
        """The stream id a stream key (or, with `suffix`, one of its other keys) belongs to; None
        when the key is not one of ptgstore's layout."""
        if not key.startswith(self.prefix) or not key.endswith(suffix):
            return None
        rest = key[len(self.prefix): len(key) - len(suffix)]
        if not self.tagged:
            return rest
        if not rest.startswith("{"):
            return None
        end = rest.find("}")
        while end != -1:  # a group may itself contain `}`: the tag is the one that names the id's group
            sid = rest[end + 1:]
            if sid and (self.group(sid) or DEFAULT_GROUP_TAG) == rest[1:end]:
                return sid
            end = rest.find("}", end + 1)
        return None


class RecordingKeys:
    """The recordings' state shared by every process (`recordings/state.py`), behind the key prefix
    and, on a cluster, all under the hash tag `{ptgstore:recording}`:

    - `recording:id`: the active recording's id (the original server's key, kept for its tools);
    - `ptgstore:recording`: hash of the active recording: `id`, `streams` (JSON list, or `null`
      for every stream), `status` (`recording` or `stopping`), `started`, `shards` (how many),
      `segment:<k>` (the number of shard k's next segment file), `done:<k>` (shard k has written
      everything up to the stop), `stop` (JSON of the last entry id of each stream at stop);
    - `ptgstore:recording:cursors`: stream id -> last entry id written in a committed segment;
    - `ptgstore:recording:stats`: stream id -> JSON counts of committed entries;
    - `ptgstore:recording:segments`: `<shard>:<number>` -> the writer token that committed it;
    - `ptgstore:recording:gaps`: list of JSON gap records;
    - `ptgstore:recording:writers`: set of JSON `{"host", "pid"}` of the processes that committed segments;
    - `ptgstore:recording:errors`: recording id -> why it ended with an error;
    - `ptgstore:recorder:lease:<k>`: the token of the process writing shard k (short TTL);
    - `ptgstore:recorders`: sorted set of the tokens of processes able to record (their recordings
      directory proven), scored by when their presence expires (Redis time, ms);
    - `ptgstore:recordings:directory`: hash naming the recordings directory of the deployment: `id`
      (also in the directory's marker file), `path`, `host`, `since`.
    """

    def __init__(self, keys: Keys):
        key = keys.recording
        self.id = key("recording:id")
        self.state = key("ptgstore:recording")
        self.cursors = key("ptgstore:recording:cursors")
        self.stats = key("ptgstore:recording:stats")
        self.segments = key("ptgstore:recording:segments")
        self.gaps = key("ptgstore:recording:gaps")
        self.writers = key("ptgstore:recording:writers")
        self.errors = key("ptgstore:recording:errors")
        self.lease_prefix = key("ptgstore:recorder:lease:")
        self.presence = key("ptgstore:recorders")
        self.directory = key("ptgstore:recordings:directory")

    def lease(self, shard: int) -> str:
        """The lease of shard `shard` (a string with a short expiry, taken with SET NX)."""
        return f"{self.lease_prefix}{shard}"

    @property
    def progress(self) -> tuple[str, ...]:
        """The keys of the active recording's progress, emptied at its start and its end."""
        return (self.cursors, self.stats, self.segments, self.gaps, self.writers)

    def owned(self) -> dict[str, str]:
        """Each key but the leases, with the Redis type it holds."""
        return {self.id: "string", self.state: "hash", self.cursors: "hash", self.stats: "hash",
                self.segments: "hash", self.gaps: "list", self.writers: "set", self.presence: "zset",
                self.directory: "hash", self.errors: "hash"}

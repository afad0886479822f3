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
        """A key of the recordings' state (`recording_store.py`): on a cluster all of them share one
        hash tag, so that its transactions and scripts stay in one slot."""
        return self.prefix + ("{ptgstore:recording}" if self.tagged else "") + name

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

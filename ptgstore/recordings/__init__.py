"""Recordings: the streams written to MCAP files in the deployment's recordings directory, and
read back (info, download, merge, replay, upload). Nothing is imported here: the client takes only
`mcapfiles` and `replay` (no Redis, no HTTP).

- `catalogue`: the recordings on disk, in one place (names, listing, info, hidden, files), used by
  the routes (`routes/recordings.py`, `routes/recording_replay.py`) and the recorder;
- `recorder`: one process's recorder (its shard leases); `shard`: writing one shard's segments;
- `state`: the recordings' state in Redis (`RecordingStore`, keys from `keys.RecordingKeys`);
- `directory`: proving this process's recordings directory is the deployment's;
- `mcapfiles`: entries as MCAP messages and back; `mcapread`: reading MCAP with bounded memory;
  `mcapmeta`: the channels' kept metadata; `mcapmerge`: one file from a recording's segments;
- `replay`: replay pacing (the replay socket and `ptgstore replay FILE`);
- `uploads`: receiving an uploaded file, and checking an uploaded MCAP file.
"""

"""One MCAP file from a recording's segments, for tools that open one file (`ptgstore record
download NAME --merge`): every entry once, in time order, on the channels the segments had."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .mcapfiles import ENCODING_KEY, SegmentWriter, read_messages
from .mcapmeta import channel_metadata

BATCH = 256


def channel_metas(files: Iterable[Path]) -> dict[str, dict]:
    """Each stream's channel metadata (without the encoding key the writer adds), the newest file's."""
    return {topic: {k: v for k, v in metadata.items() if k != ENCODING_KEY}
            for topic, metadata in channel_metadata(files).items()}


def merge_files(files: Iterable[str | Path], target: str | Path) -> int:
    """Write the entries of `files` into one MCAP file `target` (written aside, then renamed); the
    number of entries."""
    paths = [Path(f) for f in files]
    target = Path(target)
    metas = channel_metas(paths)
    writer = SegmentWriter(target.with_name(target.name + ".part"))
    count = 0
    try:
        batch = []
        for message in read_messages(paths):
            batch.append((message.sid, message.entry_id, message.data))
            if len(batch) >= BATCH:
                writer.write(batch, metas)
                count += len(batch)
                batch = []
        writer.write(batch, metas)
        count += len(batch)
        writer.finish()
    except BaseException:
        writer.abandon()
        raise
    os.replace(writer.path, target)
    return count

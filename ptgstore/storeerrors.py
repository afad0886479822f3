"""The store's exceptions: a request it refuses, and Redis out of reach."""
from __future__ import annotations


class StoreError(Exception):
    """A request the store refuses (stale timestamp, wrong key type, bad metadata)."""


class StoreUnavailable(Exception):
    """Redis cannot be reached or did not answer in time."""


class CrossGroupBatch(StoreError):
    """A batch over streams of several groups, on a cluster (where it could not be stored atomically)."""

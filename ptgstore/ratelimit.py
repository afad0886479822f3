"""A per-client rate limit: a token bucket per key (a client address), in bounded memory."""
from __future__ import annotations

import time

MAX_CLIENTS = 10_000  # buckets kept; beyond, full ones (clients that have waited long enough) are dropped first


class RateLimiter:
    """At most `rate` actions per `period` seconds per key, in bursts of up to `rate`."""

    def __init__(self, rate: int, period: float, clock=time.monotonic):
        self.capacity = float(rate)
        self.refill = rate / period  # tokens per second
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def take(self, key: str) -> float:
        """Count one action of `key`: 0 when allowed, else the seconds until one more is."""
        now = self.clock()
        tokens, since = self.buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - since) * self.refill)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return (1 - tokens) / self.refill
        if key not in self.buckets and len(self.buckets) >= MAX_CLIENTS:
            self._forget(now)
        self.buckets[key] = (tokens - 1, now)
        return 0.0

    def _forget(self, now: float) -> None:
        full = [key for key, (tokens, since) in self.buckets.items()
                if tokens + (now - since) * self.refill >= self.capacity]
        for key in full:
            del self.buckets[key]
        while len(self.buckets) >= MAX_CLIENTS:
            del self.buckets[next(iter(self.buckets))]  # the longest kept

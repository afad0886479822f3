"""The pause between attempts at something that keeps failing (Redis gone, a subscriber dropped,
a server that will not restart): short at first so that a blip costs little, doubling up to a
ceiling so that a long outage is not hammered. No I/O: the caller sleeps, in whichever way suits it."""
from __future__ import annotations


class Backoff:
    """Exponential pauses: `first` seconds, then twice as long each time up to `most`;
    `reset()` after a success."""

    __slots__ = ("first", "most", "_next")

    def __init__(self, first: float = 0.05, most: float = 1.0):
        if not 0 < first <= most:
            raise ValueError(f"need 0 < first <= most, not first={first} most={most}")
        self.first = first
        self.most = most
        self._next = first

    @property
    def delay(self) -> float:
        """The pause the next failure will get."""
        return self._next

    def failed(self) -> float:
        """The pause to take after a failure (the following one will be longer)."""
        pause = self._next
        self._next = min(self._next * 2, self.most)
        return pause

    def reset(self) -> None:
        self._next = self.first

"""The one retry pause of the server (ptgstore.backoff)."""
from __future__ import annotations

import pytest

from ptgstore.backoff import Backoff


def test_backoff_doubles_to_its_ceiling_and_resets():
    backoff = Backoff(first=0.05, most=0.3)
    assert [backoff.failed() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    backoff.reset()
    assert backoff.delay == 0.05 and backoff.failed() == 0.05
    with pytest.raises(ValueError):
        Backoff(first=0, most=1)

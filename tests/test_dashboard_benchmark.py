"""The dashboard benchmark runs end to end at a tiny size and prints its table (never its speed)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the dashboard benchmark's smoke run

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_run_prints_every_row():
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.dashboard", "--dashboards", "2", "--seconds", "0.5", "--streams", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    for title in ("none (load only)", "1 dashboard", "2 dashboards", "2 MJPEG viewers"):
        assert any(row.startswith(f"| {title} |") for row in rows), f"no row for {title!r}:\n{run.stdout}"

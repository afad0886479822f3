"""The soak script itself works: a two-second run against its own server accounts for every entry."""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the soak script's smoke run

SOAK = Path(__file__).resolve().parent.parent / "soak" / "soak.py"


def test_a_short_soak_loses_nothing_and_reports_memory():
    run = subprocess.run([sys.executable, str(SOAK), "--duration", "2", "--pushers", "2", "--rate", "20",
                          "--pullers", "6", "--size", "512", "--sample", "1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "total: lost 0, duplicated 0, out of order 0, altered 0, client errors 0" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("soak") and "-" in line.split()[0]]
    assert len(rows) == 2
    for row in rows:
        acked, pullers, delivered = int(row[1]), int(row[2]), int(row[3])
        assert acked >= 20 and delivered == acked * pullers
    memory = [line.split() for line in out.splitlines() if line.startswith(("start", "end"))]
    assert [m[0] for m in memory] == ["start", "end"] and all(float(m[2]) > 0 for m in memory)


def test_the_push_faults_soak_finds_every_frame_once():
    script = SOAK.parent / "push_faults.py"
    run = subprocess.run([sys.executable, str(script), "--duration", "3", "--restart-at", "1", "--size", "2000"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "every frame stored exactly once, in order, byte-exact" in run.stdout
    assert "duplicated 0, missing 0, out of order 0, returned ids equal the stored ones: True" in run.stdout

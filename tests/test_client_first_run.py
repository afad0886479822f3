"""The client's first-run edges: `ptgstore simulate` carries on through a server restart (and fails in
one line when nobody answers); a naive time means local time, in the client and in `pull --from`."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ptgstore.testing import free_port, wait_until
from support.servers import live_server, make_settings


def _simulate(url: str, token: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}
    env.update(PTGSTORE_URL=url, PTGSTORE_TOKEN=token)
    return subprocess.Popen([sys.executable, "-m", "ptgstore", "simulate", "--device", "hl2", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow  # a process of its own
def test_simulate_carries_on_quietly_through_a_server_restart(tmp_path, rdb, redis_server):
    """The server restarts on its port under `ptgstore simulate`: its sockets closed with 1001 (going
    away), connections refused while it is down. Simulate reconnects, says so in one line, pushes on,
    and stores what it says it pushed; no traceback."""
    settings = make_settings(tmp_path, redis_server.url)
    port = free_port()
    with live_server(settings, port) as first:
        simulate = _simulate(first.url, first.token(), "--duration", "8")
        try:
            wait_until(lambda: rdb.xlen("hl2:main") >= 10 and rdb.xlen("hl2:imu") >= 2, timeout=30,
                       what="simulate to push")
        except BaseException:
            simulate.kill()
            raise
    before = rdb.xlen("hl2:main")
    with live_server(settings, port):
        try:
            wait_until(lambda: rdb.xlen("hl2:main") >= before + 10 or simulate.poll() is not None, timeout=30,
                       what="simulate to push after the restart")
        finally:
            _, err = simulate.communicate(timeout=60)
    said = err.decode()
    assert simulate.returncode == 0, said
    assert "Traceback" not in said and "never retrieved" not in said
    assert said.count("reconnected and carrying on") == 1, said
    assert rdb.xlen("hl2:main") >= before + 10
    for sid in ("hl2:main", "hl2:depthlt", "hl2:imu"):
        assert f"{sid}: {rdb.xlen(sid)} entries" in said  # as many stored as it says it pushed
        assert rdb.xlen(sid) > 0


@pytest.mark.slow  # a process of its own
def test_simulate_with_nobody_answering_fails_in_one_line(tmp_path):
    """A server not started (or a wrong URL): the reason in one line (and the CLI's hint), exit 1; not
    one traceback per sensor."""
    simulate = _simulate(f"http://127.0.0.1:{free_port()}", "no-token", "--duration", "5")
    _, err = simulate.communicate(timeout=60)
    said = err.decode()
    assert simulate.returncode == 1, said
    assert "Traceback" not in said and "never retrieved" not in said
    lines = [line for line in said.splitlines() if line.strip()]
    assert lines[0].startswith("ptgstore: cannot open a websocket to ws://127.0.0.1:"), said
    assert len(lines) <= 2 and all(line.startswith("ptgstore: ") for line in lines), said  # (and a hint)


# -- naive times are local times ----------------------------------------------------------------------

# a zone 5 h 30 min east of UTC (a POSIX TZ rule: no time zone database needed), and 10:00:00 UTC in ms
EAST = "XYZ-5:30"
TEN_UTC_MS = 1795428000000  # 2026-11-23T10:00:00Z


def test_cursor_for_time_takes_a_naive_datetime_as_local_time():
    code = ("from datetime import datetime, timedelta, timezone\n"
            "from ptgstore.client import cursor_for_time\n"
            "naive = cursor_for_time(datetime(2026, 11, 23, 15, 30))\n"
            "east = cursor_for_time(datetime(2026, 11, 23, 15, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))))\n"
            "print(naive, east, cursor_for_time(datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TZ": EAST})
    assert done.returncode == 0, done.stderr
    naive, east, utc = done.stdout.split()
    assert naive == east == utc == f"{TEN_UTC_MS - 1}-18446744073709551615"  # just before 10:00 UTC


@pytest.mark.slow
def test_pull_from_an_iso_time_without_offset_is_local_time(server, rdb):
    from test_commands import ok, ptgstore

    for second in range(3):
        rdb.xadd("cam", {"d": b"at %d" % second}, id=f"{TEN_UTC_MS + second * 1000}-0")
    east = {"TZ": EAST}
    local = ok(ptgstore(server, "pull", "cam", "--history", "--from", "2026-11-23T15:30:01", env_extra=east))
    assert local.stdout == b"at 1at 2"  # 15:30:01 in that zone is 10:00:01 UTC
    for utc in ("2026-11-23T10:00:01Z", "2026-11-23T10:00:01+00:00"):
        assert ok(ptgstore(server, "pull", "cam", "--history", "--from", utc, env_extra=east)).stdout == b"at 1at 2"
    assert b"local time" in ok(ptgstore(server, "pull", "--help")).stdout


# -- the blocking client on its portal: Ctrl-C ---------------------------------------------------------

CTRL_C_SCRIPT = """\
from ptgstore.client import Client
client = Client({url!r}, token={token!r})
try:
    print("ready", flush=True)
    for entry in client.pull("cam", "$"):
        pass
except KeyboardInterrupt:
    print("interrupted", client.ping(), flush=True)
client.close()
print("closed", flush=True)
"""


@pytest.mark.slow  # a process of its own
def test_ctrl_c_stops_a_blocking_pull_and_the_client_goes_on(server, rdb):
    """A Ctrl-C while a blocking pull waits: KeyboardInterrupt in the script, the pull's socket closed
    (the server lets go of it), the client still answers and closes cleanly."""
    import signal

    script = CTRL_C_SCRIPT.format(url=server.url, token=server.token())
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        wait_until(lambda: "cam" in server.app.state.hub.followers, what="the pull to wait for entries")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert (process.returncode, out, err) == (0, "interrupted True\nclosed\n", ""), err
    wait_until(lambda: "cam" not in server.app.state.hub.followers, what="the pull socket to close")

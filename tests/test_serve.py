"""The two ways of starting the server as a user would: `ptgstore serve` and `uvicorn ptgstore.app:app`."""
import json
import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from ptgstore.testing import free_port, wait_until
from support.servers import ServeProcess

pytestmark = pytest.mark.slow  # `ptgstore serve` as a process, started and stopped by every test


def start(args, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PTGSTORE_", "WEBSOCKETS_"))}
    env.update({"PTGSTORE_DATA_DIR": str(tmp_path / "data"), **env_extra})
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def answers(url):
    try:
        return httpx.get(url + "/ping", timeout=2).json() is True
    except httpx.HTTPError:
        return False


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.stdout.read()


def test_ptgstore_serve_prints_where_and_serves_long_stream_lists(tmp_path, redis_server, rdb):
    port = free_port()
    process = start(["ptgstore", "serve", "--port", str(port), "--redis-url", redis_server.url], {}, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url) or process.poll() is not None, timeout=30, what="ptgstore serve")
        token = httpx.post(url + "/token", data={"username": "test", "password": "test"}).json()["access_token"]
        # a request line over 8 KiB: a long stream list must still get an answer
        sids = "+".join(f"headset-{i:03d}/camera-left" for i in range(400))
        with connect(f"ws://127.0.0.1:{port}/data/{sids}/pull?timeout=200&token={token}", open_timeout=20) as ws:
            with pytest.raises(ConnectionClosedOK) as closed:
                ws.recv(timeout=20)
        assert closed.value.rcvd.code == 1000
    finally:
        output = stop(process)
    # uvicorn re-raises SIGTERM after its clean shutdown
    assert process.returncode in (0, -signal.SIGTERM), output[-2000:]
    assert "Application shutdown complete" in output
    assert f"listening on http://127.0.0.1:{port}" in output
    assert redis_server.url in output
    assert "auth policy 'dev'" in output


def test_uvicorn_app_with_embedded_redis(tmp_path):
    port = free_port()
    process = start(["uvicorn", "ptgstore.app:app", "--port", str(port)], {}, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url) or process.poll() is not None, timeout=30, what="uvicorn ptgstore.app:app")
        token = httpx.post(url + "/token", data={"username": "a", "password": "a"}).json()["access_token"]
        reply = httpx.post(url + "/data/cam", files=[("f", ("f", b"\x00\x01"))],
                           headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 200 and len(reply.json()) == 1
        state = json.loads((tmp_path / "data" / "redis" / "state.json").read_text())
    finally:
        output = stop(process)
    assert process.returncode in (0, -signal.SIGTERM), output[-2000:]
    # the embedded Redis stopped with the server
    assert not (tmp_path / "data" / "redis" / "state.json").exists()
    wait_until(lambda: not os.path.exists(f"/proc/{state['pid']}") or
               open(f"/proc/{state['pid']}/stat").read().split()[2] == "Z", what="embedded redis to exit")


def test_serve_refuses_dev_policy_beyond_loopback_unless_explicit(tmp_path):
    process = start(["ptgstore", "serve", "--host", "0.0.0.0", "--port", str(free_port())], {}, tmp_path)
    output = stop(process) if process.wait(30) is None else process.stdout.read()
    assert process.returncode == 2
    assert "PTGSTORE_AUTH=users" in output


def run_serve(tmp_path, *args, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PTGSTORE_", "WEBSOCKETS_"))}
    env["PTGSTORE_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run([sys.executable, "-m", "ptgstore", "serve", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args,words", [
    (["--log-level", "verbose"], "PTGSTORE_LOG_LEVEL (--log-level) must be one of critical, error, warning"),
    (["--redis-url", "http://127.0.0.1:6379"], "PTGSTORE_REDIS_URL (--redis-url) must start with redis://"),
    (["--port", "-1"], "PTGSTORE_PORT"),
    (["--port", "70000"], "PTGSTORE_PORT is out of range: 70000"),  # (uvicorn listened on 70000 % 65536)
    (["--host", "127.0.0.1:7890"], "--host takes an address alone, not '127.0.0.1:7890': --host 127.0.0.1 --port 7890"),
    (["--host", "[::1]:7890"], "--host [::1] --port 7890"),
])
def test_bad_settings_are_one_line_and_exit_2(tmp_path, args, words):
    done = run_serve(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
    assert "listening" not in done.stdout


def test_busy_port_and_unreachable_redis_are_reported_before_listening(tmp_path, redis_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_serve(tmp_path, "--port", str(port), "--redis-url", redis_server.url)
    assert busy.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in busy.stderr, busy.stderr
    assert "listening" not in busy.stdout and "Traceback" not in busy.stderr
    dead = f"redis://127.0.0.1:{free_port()}/0"
    unreachable = run_serve(tmp_path, "--port", str(free_port()), "--redis-url", dead)
    assert unreachable.returncode == 1
    assert f"Redis at {dead} does not answer" in unreachable.stderr, unreachable.stderr
    assert "listening" not in unreachable.stdout and "Traceback" not in unreachable.stderr


def test_token_from_the_command_line_is_accepted_by_a_fresh_server(tmp_path, redis_server, rdb):
    port = free_port()
    process = start(["ptgstore", "serve", "--port", str(port), "--redis-url", redis_server.url], {}, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url) or process.poll() is not None, timeout=30, what="ptgstore serve")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}
        token = subprocess.run([sys.executable, "-m", "ptgstore", "token", "--user", "lab",
                                "--data-dir", str(tmp_path / "data")], env=env, capture_output=True, text=True,
                               timeout=60)
        assert token.returncode == 0, token.stderr
        reply = httpx.get(url + "/streams", headers={"Authorization": f"Bearer {token.stdout.strip()}"})
        assert reply.status_code == 200, reply.text
    finally:
        stop(process)


def test_second_serve_on_one_data_dir_keeps_working_when_the_first_stops(tmp_path):
    """Both share the data directory's embedded Redis; it stays while either uses it."""
    with ServeProcess(tmp_path / "data") as first:
        first.wait_ready()
        with ServeProcess(tmp_path / "data") as second:
            second.wait_ready()
            token = second.token()
            headers = {"Authorization": f"Bearer {token}"}
            assert httpx.post(first.url + "/data/cam", files=[("f", ("f", b"one"))], headers=headers).status_code == 200
            assert first.terminate() in (0, -signal.SIGTERM)
            pushed = httpx.post(second.url + "/data/cam", files=[("f", ("f", b"two"))], headers=headers, timeout=10)
            assert pushed.status_code == 200, pushed.text
            reply = httpx.get(second.url + "/data/cam", params={"last_entry_id": "0", "count": "10"},
                              headers=headers, timeout=10)
            assert reply.content == b"onetwo"
            state = json.loads((tmp_path / "data" / "redis" / "state.json").read_text())
            assert second.terminate() in (0, -signal.SIGTERM)
        assert "left running" in first.output
    assert not (tmp_path / "data" / "redis" / "state.json").exists(), "the last user stops the embedded Redis"
    wait_until(lambda: not os.path.exists(f"/proc/{state['pid']}") or
               open(f"/proc/{state['pid']}/stat").read().split()[2] == "Z", what="embedded redis to exit")


# starts a command as a shell without job control starts `cmd &`: SIGINT ignored, inherited through exec
SIGINT_IGNORED = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                  "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"]


def test_ctrl_c_stops_serve_gracefully_also_when_started_with_it_ignored(tmp_path, redis_server):
    """`ptgstore serve &` from a script, then `kill -INT`: a clean shutdown, not an ignored signal."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PTGSTORE_", "WEBSOCKETS_"))}
    env["PTGSTORE_DATA_DIR"] = str(tmp_path / "data")
    process = subprocess.Popen([*SIGINT_IGNORED, "-m", "ptgstore", "serve", "--port", str(port), "--redis-url",
                                redis_server.url], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}") or process.poll() is not None, timeout=30,
                   what="ptgstore serve")
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        output = stop(process)
    assert "Application shutdown complete" in output and "Traceback" not in output, output[-2000:]


def test_serve_refuses_an_ephemeral_disk_in_one_line_before_listening(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ptgstore", "serve", "--port", str(free_port())],
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")},
                               "PTGSTORE_DATA_DIR": str(tmp_path / "data"), "PTGSTORE_EPHEMERAL_DISK": "true"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "PTGSTORE_EPHEMERAL_DISK=true" in done.stderr, done.stderr
    assert "PTGSTORE_SECRET" in done.stderr and "PTGSTORE_REDIS_URL" in done.stderr
    assert "listening" not in done.stdout
    assert not (tmp_path / "data" / "redis").exists(), "no embedded Redis was started"


def test_serve_says_in_one_line_that_its_data_directory_is_unusable(tmp_path):
    (tmp_path / "a-file").write_bytes(b"")
    done = run_serve(tmp_path, "--port", str(free_port()), "--data-dir", str(tmp_path / "a-file" / "data"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == (f"ptgstore: cannot use the data directory {tmp_path / 'a-file' / 'data'}: Not a directory: "
                           "choose another --data-dir or PTGSTORE_DATA_DIR\n")
    assert "listening" not in done.stdout

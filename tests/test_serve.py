"""The two ways of starting the server as a user would: `ptgstore serve` and `uvicorn ptgstore.app:app`."""
import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from conftest import free_port, wait_until


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

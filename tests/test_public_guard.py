"""The `dev` policy never answers on a public address, whatever serves the app; the Procfile refuses
to start on an ephemeral disk until what must outlive a restart is configured."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import warnings

import httpx
import pytest

with warnings.catch_warnings():  # Starlette would rather its test client ran on httpx2; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketDenialResponse

from ptgstore.app import create_app
from ptgstore.auth import is_loopback_address

from ptgstore.testing import free_port, wait_until
from support.servers import make_settings

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = "http://203.0.113.5:7890"  # TestClient puts the URL's host in scope["server"]


def test_loopback_addresses():
    for server in (("127.0.0.1", 80), ("127.8.0.1", 80), ("::1", 80), ("::ffff:127.0.0.1", 80), ("/run/s.sock", None),
                   None):
        assert is_loopback_address(server), server
    for server in (("0.0.0.0", 80), ("10.0.0.7", 80), ("203.0.113.5", 80), ("2001:db8::1", 80)):
        assert not is_loopback_address(server), server


def test_default_dev_policy_refuses_requests_on_a_public_address(tmp_path, redis_server):
    app = create_app(make_settings(tmp_path, redis_server.url))
    with TestClient(app, base_url=PUBLIC) as client:
        for reply in (client.post("/token", data={"username": "u", "password": "u"}), client.get("/ping"),
                      client.get("/streams", headers={"Authorization": f"Bearer {app.state.authenticator.issue('u')}"})):
            assert reply.status_code == 403
            assert "PTGSTORE_AUTH=users" in reply.json()["detail"]
        with pytest.raises(WebSocketDenialResponse) as denied:
            token = app.state.authenticator.issue("u")
            with client.websocket_connect(f"ws://203.0.113.5:7890/data/cam/pull?token={token}"):
                pass
        assert denied.value.status_code == 403 and "PTGSTORE_AUTH=users" in denied.value.json()["detail"]
    with TestClient(app, base_url="http://127.0.0.1:7890") as client:
        assert client.post("/token", data={"username": "u", "password": "u"}).status_code == 200
        assert client.get("/ping").json() is True


def test_explicit_dev_or_users_policy_serves_public_addresses(tmp_path, redis_server):
    explicit = create_app(make_settings(tmp_path, redis_server.url, auth_explicit=True))
    with TestClient(explicit, base_url=PUBLIC) as client:
        assert client.post("/token", data={"username": "u", "password": "u"}).status_code == 200
    users = create_app(make_settings(tmp_path, redis_server.url, auth="users"))
    with TestClient(users, base_url=PUBLIC) as client:
        assert client.post("/token", data={"username": "u", "password": "u"}).status_code == 401
        assert client.get("/ping").json() is True


def procfile_command() -> str:
    line = (ROOT / "Procfile").read_text().strip()
    assert line.startswith("web: ")
    # this machine serves loopback only
    return line[len("web: "):].replace("--host 0.0.0.0", "--host 127.0.0.1")


def run_procfile(tmp_path, env: dict) -> tuple[subprocess.Popen, Path, int]:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PTGSTORE_", "PROMETHEUS_"))}
    clean.update({"PORT": str(port), "PTGSTORE_DATA_DIR": str(tmp_path / "data"), **env})
    clean["PATH"] = os.path.dirname(sys.executable) + os.pathsep + clean.get("PATH", "")  # this venv's uvicorn
    log = tmp_path / f"procfile-{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["sh", "-c", "exec " + procfile_command()], cwd=ROOT, env=clean,
                                   stdout=out, stderr=subprocess.STDOUT)
    return process, log, port


@pytest.mark.slow
def test_procfile_refuses_to_start_without_what_must_outlive_a_restart(tmp_path):
    process, log, _ = run_procfile(tmp_path, {})
    try:
        assert process.wait(60) != 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    output = log.read_text()
    assert "PTGSTORE_EPHEMERAL_DISK=true" in output
    for name in ("PTGSTORE_SECRET", "PTGSTORE_REDIS_URL", "PTGSTORE_AUTH=users", "PTGSTORE_ALLOWED_HOSTS"):
        assert name in output, output[-2000:]
    assert not (tmp_path / "data" / "redis").exists(), "no embedded Redis was started"


@pytest.mark.slow
def test_procfile_starts_once_configured(tmp_path, redis_server, rdb):
    users_file = tmp_path / "deployed-users.json"
    added = subprocess.run([sys.executable, "-m", "ptgstore", "user", "add", "alice", "--password-stdin"],
                           input="s3cret pass\n", text=True, capture_output=True, timeout=60,
                           env={**os.environ, "PTGSTORE_USERS_FILE": str(users_file)})
    assert added.returncode == 0, added.stderr
    env = {"PTGSTORE_SECRET": "a platform config var of at least 32 bytes!", "PTGSTORE_REDIS_URL": redis_server.url,
           "PTGSTORE_AUTH": "users", "PTGSTORE_USERS_FILE": str(users_file), "PTGSTORE_ALLOWED_HOSTS": "app.example"}
    process, log, port = run_procfile(tmp_path, env)
    try:
        def ready():
            assert process.poll() is None, log.read_text()[-2000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).json() is True
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(ready, timeout=60, what="the Procfile's server")
        login = httpx.post(f"http://127.0.0.1:{port}/token", data={"username": "alice", "password": "s3cret pass"})
        assert login.status_code == 200
        # the platform's router passes on the app's public name
        assert httpx.get(f"http://127.0.0.1:{port}/ping", headers={"Host": "app.example"}).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/ping", headers={"Host": "other.example"}).status_code == 400
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_procfile_line_parses():
    argv = shlex.split(procfile_command())
    assert argv[argv.index("--env-file") + 1] == "deploy/platform.env"
    assert (ROOT / "deploy" / "platform.env").read_text().count("PTGSTORE_EPHEMERAL_DISK=true") == 1

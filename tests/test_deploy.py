"""The deploy files are valid: the compose file parses and wires what the service needs,
the Dockerfile runs non-root with a /ping healthcheck, Redis accepts deploy/redis.conf,
and Caddy with deploy/Caddyfile proxies HTTPS, WebSockets and 16 MiB bodies to a real server."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from ptgstore.testing import free_port, wait_until
from support.servers import live_server, make_settings
from ptgstore.embedded import find_redis_server
from support.ws import read_delivery

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_procfile_runs_uvicorn_on_port_with_graceful_websockets():
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("web: ")
    argv = shlex.split(lines[0][len("web: "):])
    assert argv[:2] == ["uvicorn", "ptgstore.app:app"]
    options = {}
    for i, word in enumerate(argv):
        if word.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            options[word] = argv[i + 1]
    assert options["--port"] == "$PORT"
    assert options["--ws"] == "ptgstore.serving:GracefulWebSocketProtocol"
    assert options["--http"] == "ptgstore.serving:HeaderTimeoutProtocol"  # unfinished headers time out
    assert options["--ws-per-message-deflate"] == "false"
    # the --ws value must be importable as uvicorn imports it
    from uvicorn.importer import import_from_string

    assert import_from_string(options["--ws"]).__name__ == "GracefulWebSocketProtocol"


def test_dockerfile_is_small_non_root_and_checks_ping():
    instructions = dockerfile_instructions(DEPLOY / "Dockerfile")
    words = [word for word, _ in instructions]
    assert set(words) <= {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK",
                          "STOPSIGNAL", "CMD", "ARG", "LABEL"}
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) == 2 and all("slim" in f for f in froms), "a build stage and a slim runtime"
    runtime = instructions[words.index("FROM", 1):]
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime stage runs as an unprivileged user"
    assert ("EXPOSE", "7890") in runtime
    health = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/ping" in health[0] and "CMD" in health[0]
    cmd = [args for word, args in runtime if word == "CMD"][-1]
    assert cmd == '["ptgstore", "serve"]'
    env = " ".join(args for word, args in runtime if word == "ENV")
    assert "PTGSTORE_HOST=0.0.0.0" in env and "PTGSTORE_DATA_DIR=/data" in env
    assert "PTGSTORE_AUTH" not in env, "the credential policy is the operator's choice"
    # every path COPY takes from the build context exists
    for word, args in instructions:
        if word == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_dockerfile_healthcheck_command_passes_against_a_running_server(server):
    health = [args for word, args in dockerfile_instructions(DEPLOY / "Dockerfile") if word == "HEALTHCHECK"][0]
    command = health.split(" CMD ", 1)[1]
    env = dict(os.environ, PTGSTORE_PORT=str(server.port))
    done = subprocess.run(["/bin/sh", "-c", command.replace("python ", f"{shlex.quote(sys.executable)} ", 1)],
                          env=env, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    env["PTGSTORE_PORT"] = str(free_port())  # nothing listens there: unhealthy
    done = subprocess.run(["/bin/sh", "-c", command.replace("python ", f"{shlex.quote(sys.executable)} ", 1)],
                          env=env, capture_output=True, timeout=30)
    assert done.returncode != 0


def test_docker_context_holds_only_what_the_dockerfile_copies():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "everything out (the .venv alone is hundreds of MB), then back in by name"
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for word, args in dockerfile_instructions(DEPLOY / "Dockerfile"):
        if word == "COPY" and not args.startswith("--from"):
            copied.update(source.rstrip("/").removeprefix("./") for source in args.split()[:-1])
    assert copied == kept


def proxy_domain(compose: dict) -> str:
    return compose["services"]["proxy"]["environment"]["PTGSTORE_DOMAIN"]


def test_compose_file_wires_redis_api_and_https_proxy():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "api", "proxy"}
    redis_service, api, proxy = services["redis"], services["api"], services["proxy"]
    # Redis: the config file of this directory and a named volume for its append-only log
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis_service["volumes"]
    assert redis_service["command"][-1] == "/usr/local/etc/redis/redis.conf"
    data_volume = next(v for v in redis_service["volumes"] if v.endswith(":/data"))
    assert data_volume.split(":")[0] in compose["volumes"]
    assert "ports" not in redis_service, "Redis is reachable on the compose network only"
    # the API is built from this repository and reaches Redis by service name
    assert api["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / api["build"]["context"] / api["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert api["environment"]["PTGSTORE_REDIS_URL"] == "redis://redis:6379/0"
    assert api["environment"]["PTGSTORE_AUTH"].startswith("${PTGSTORE_AUTH:-users}")
    # Caddy passes the browser's Host on: the API serves the proxy's domain
    assert api["environment"]["PTGSTORE_ALLOWED_HOSTS"] == proxy_domain(compose) == "${PTGSTORE_DOMAIN:-localhost}"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "ports" not in api, "the API is reached through the proxy"
    grace = int(api["stop_grace_period"].rstrip("s"))
    assert grace > 10, "longer than ptgstore's graceful shutdown"
    # the proxy publishes HTTPS and uses the Caddyfile of this directory
    assert "443:443" in proxy["ports"] and "80:80" in proxy["ports"]
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    assert proxy["environment"]["PTGSTORE_UPSTREAM"] == "api:7890"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in compose["volumes"] or (DEPLOY / source).exists(), volume


def redis_conf_server(tmp_path: Path):
    port = free_port()
    process = subprocess.Popen(
        [find_redis_server(), str(DEPLOY / "redis.conf"), "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(tmp_path), "--daemonize", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    return process, f"redis://127.0.0.1:{port}/0"


def test_redis_conf_is_accepted_and_sets_what_ptgstore_relies_on(tmp_path):
    process, url = redis_conf_server(tmp_path)
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        def answers():
            if process.poll() is not None:
                raise AssertionError(process.stdout.read().decode(errors="replace"))
            try:
                return client.ping()
            except redis.RedisError:
                return False

        wait_until(answers, what="redis-server with deploy/redis.conf")
        config = client.config_get("*")
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "always"
        assert config["maxmemory-policy"] == "noeviction"
        assert config["save"] == ""
        assert config["timeout"] == "0"
        assert int(config["proto-max-bulk-len"]) >= 16 * 1024 * 1024
        # a 16 MiB entry goes in through ptgstore and is in the append-only log
        with live_server(make_settings(tmp_path, url)) as live, live.http() as http:
            frame = os.urandom(16 * 1024 * 1024 - 1024)
            reply = http.post("/data/cam", files=[("f", ("f", frame))])
            assert reply.status_code == 200, reply.text
            assert http.get("/data/cam").content == frame
        wait_until(lambda: any(p.stat().st_size > len(frame) for p in tmp_path.rglob("appendonly.aof*")
                               if p.is_file()), what="the entry in the append-only log")
    finally:
        client.close()
        process.terminate()
        process.wait(15)
        process.stdout.close()


# -- the HTTPS proxy, for real -----------------------------------------------------------------

@pytest.fixture
def caddy(tmp_path, server):
    """Caddy with deploy/Caddyfile on free loopback ports, proxying to a running ptgstore."""
    binary = shutil.which("caddy")
    if binary is None:
        pytest.skip("caddy is not installed (apt install caddy)")
    https_port, http_port = free_port(), free_port()
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "caddy-data"), XDG_CONFIG_HOME=str(tmp_path / "caddy-config"),
               PTGSTORE_DOMAIN="localhost", PTGSTORE_BIND="127.0.0.1", PTGSTORE_UPSTREAM=f"127.0.0.1:{server.port}",
               PTGSTORE_HTTPS_PORT=str(https_port), PTGSTORE_HTTP_PORT=str(http_port))
    process = subprocess.Popen([binary, "run", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = tmp_path / "caddy-data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    base = f"https://localhost:{https_port}"

    def serving():
        if process.poll() is not None:
            raise AssertionError(process.stdout.read().decode(errors="replace")[-3000:])
        if not root.exists():
            return False
        try:
            return httpx.get(base + "/ping", verify=ssl.create_default_context(cafile=str(root)), timeout=2).json()
        except (httpx.HTTPError, ssl.SSLError, ValueError):
            return False

    try:
        wait_until(serving, timeout=30, interval=0.1, what="caddy to serve HTTPS")
        yield base, ssl.create_default_context(cafile=str(root)), http_port
    finally:
        process.terminate()
        process.wait(15)
        process.stdout.close()


@pytest.mark.slow
def test_caddy_proxies_https_websockets_and_16_mib_bodies(server, rdb, caddy):
    base, tls, http_port = caddy
    token = server.token()
    with httpx.Client(base_url=base, verify=tls, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        frame = os.urandom(16 * 1024 * 1024 - 4096)
        reply = http.post("/data/cam", files=[("f", ("f", frame))])
        assert reply.status_code == 200, reply.text
        assert http.get("/data/cam").content == frame
        too_big = http.post("/data/cam", files=[("f", ("f", b"x" * (16 * 1024 * 1024 + 1)))])
        assert too_big.status_code == 413 and "larger than" in too_big.json()["detail"]
        # behind the proxy every client is forwarded: /metrics needs a token there
        assert httpx.get(base + "/metrics", verify=tls).status_code == 401
        scraped = http.get("/metrics")
        assert scraped.status_code == 200 and "ptgstore_entries_pushed_total" in scraped.text
    # plain HTTP is redirected to HTTPS
    redirect = httpx.get(f"http://127.0.0.1:{http_port}/ping", headers={"Host": "localhost"})
    assert redirect.status_code in (301, 308) and redirect.headers["location"].startswith("https://localhost")
    from websockets.sync.client import connect

    wss = base.replace("https://", "wss://")
    with connect(f"{wss}/data/cam+imu/pull?last_entry_id=$&token={token}", ssl=tls, open_timeout=10,
                 max_size=None, compression=None) as pull, \
            connect(f"{wss}/data/*/push?ack=true&token={token}", ssl=tls, open_timeout=10, max_size=None,
                    compression=None) as push:
        push.send('[["cam", 0], ["imu", 3]]')
        push.send(b"abcdefgh")
        ids = push.recv(timeout=10).split(",")
        delivered = read_delivery(pull)
        if len(delivered) == 1:  # each stream has its own follower: they may arrive apart
            delivered += read_delivery(pull)
        assert sorted(delivered) == [("cam", ids[0], b"abc"), ("imu", ids[1], b"defgh")]


def _procfile_refusal(tmp_path, **env) -> subprocess.CompletedProcess:
    """The Procfile's command (on loopback) with `env`, expected to refuse to start."""
    command = (ROOT / "Procfile").read_text().strip()[len("web: "):].replace("--host 0.0.0.0", "--host 127.0.0.1")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PTGSTORE_", "PROMETHEUS_"))}
    clean.update({"PORT": str(free_port()), "PTGSTORE_DATA_DIR": str(tmp_path / "data"), **env})
    clean["PATH"] = os.path.dirname(sys.executable) + os.pathsep + clean.get("PATH", "")  # this venv's uvicorn
    return subprocess.run(["sh", "-c", "exec " + command], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("env,line", [
    ({}, "PTGSTORE_EPHEMERAL_DISK=true (this host's disk is lost at each restart) needs: PTGSTORE_SECRET"),
    ({"PTGSTORE_AUTH": "nobody"}, "PTGSTORE_AUTH must be one of dev, users, not 'nobody'"),
], ids=["ephemeral disk", "malformed variable"])
@pytest.mark.slow
def test_procfile_refusal_is_one_line_without_a_traceback(tmp_path, env, line):
    done = _procfile_refusal(tmp_path, **env)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output and "File \"" not in output, output
    said = [text for text in output.splitlines() if line in text]
    assert len(said) == 1 and said[0].startswith("ERROR:"), output  # said once, by the server
    assert "Application startup failed" in output
    assert not (tmp_path / "data" / "redis").exists(), "no embedded Redis was started"

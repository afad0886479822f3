"""deploy/docker-compose.cluster.yml parses and wires a Redis Cluster (3 masters + 3 replicas), two
ptgstore processes sharing one token secret, and the HTTPS proxy in front of both."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis
import yaml

from support.cluster import cluster_port
from ptgstore.testing import wait_until
from ptgstore.embedded import find_redis_server
from ptgstore.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.cluster.yml").read_text())


def test_cluster_compose_wires_six_nodes_two_apis_and_the_proxy():
    spec = compose()
    services = spec["services"]
    nodes = sorted(name for name in services if name.startswith("redis-"))
    apis = sorted(name for name in services if name.startswith("api-"))
    assert len(nodes) == 6 and len(apis) >= 2 and {"cluster-init", "proxy"} <= set(services)
    for name in nodes:
        node = services[name]
        command = node["command"]
        assert command[:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert "ports" not in node, "Redis is reachable on the compose network only"
        data = next(v for v in node["volumes"] if v.endswith(":/data"))
        assert data.split(":")[0] in spec["volumes"]
    init = " ".join(services["cluster-init"]["command"])
    assert "--cluster-replicas 1" in init and all(f"{name}:6379" in init for name in nodes)
    assert set(services["cluster-init"]["depends_on"]) == set(nodes)
    secrets = set()
    for name in apis:
        env = services[name]["environment"]
        settings = Settings.from_env({k: str(v) for k, v in env.items() if not str(v).startswith("${")})
        assert settings.redis_cluster and settings.redis_url.startswith("redis://redis-")
        secrets.add(env["PTGSTORE_SECRET"])
        assert services[name]["depends_on"]["cluster-init"]["condition"] == "service_completed_successfully"
        assert "ports" not in services[name]
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert len(secrets) == 1 and next(iter(secrets)).startswith("${PTGSTORE_SECRET:?"), "one secret, required"
    proxy = services["proxy"]
    for name in apis:  # Caddy passes the browser's Host on: the APIs serve the proxy's domain
        assert services[name]["environment"]["PTGSTORE_ALLOWED_HOSTS"] == proxy["environment"]["PTGSTORE_DOMAIN"]
    assert proxy["environment"]["PTGSTORE_UPSTREAM"].split() == [f"{name}:7890" for name in apis]
    assert "443:443" in proxy["ports"] and "./Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in spec["volumes"] or (DEPLOY / source).exists(), volume


@pytest.mark.cluster
def test_a_cluster_node_accepts_the_compose_command_line(tmp_path):
    command = compose()["services"]["redis-1"]["command"]
    port = cluster_port(bus_too=True)  # (the cluster bus listens on the port + 10000)
    args = [find_redis_server(), str(DEPLOY / "redis.conf"), *command[2:], "--port", str(port),
            "--bind", "127.0.0.1", "--dir", str(tmp_path), "--daemonize", "no"]
    if "v=6." in subprocess.run([args[0], "--version"], capture_output=True, text=True).stdout:
        args.remove("--cluster-preferred-endpoint-type")
        args.remove("hostname")
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=2)
    try:
        def up():
            assert process.poll() is None, "redis-server refused the command line"
            try:
                return client.info("cluster")["cluster_enabled"] == 1
            except redis.ConnectionError:
                return False

        wait_until(up, what="the cluster node")
    finally:
        client.close()
        process.terminate()
        process.wait(10)

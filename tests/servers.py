"""`ptgstore serve` as a real subprocess, for tests of processes, workers and signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from conftest import free_port, wait_until


class ServeProcess:
    """`python -m ptgstore serve` on a free loopback port, with its output kept."""

    def __init__(self, data_dir: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("PTGSTORE_", "PROMETHEUS_"))}
        clean.update({"PTGSTORE_DATA_DIR": str(data_dir), **(env or {})})
        # a file, not a pipe: a full pipe would stall a chatty server
        self.log_path = Path(data_dir).parent / f"serve-{self.port}.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ptgstore", "serve", "--port", str(self.port), *args],
                env=clean, stdout=log, stderr=subprocess.STDOUT,
            )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> "ServeProcess":
        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"ptgstore serve exited: {self.output[-3000:]}")
            try:
                return httpx.get(self.url + "/ping", timeout=2).json() is True
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(ready, timeout=timeout, interval=0.05, what=f"ptgstore serve on port {self.port}")
        return self

    def token(self, user: str = "test") -> str:
        reply = httpx.post(self.url + "/token", data={"username": user, "password": user}, timeout=10)
        return reply.json()["access_token"]

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait (kill if it hangs); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.terminate()

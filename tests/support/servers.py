"""ptgstore for the tests: the app under uvicorn in a thread of the test process (LiveServer, live_server)
and `ptgstore serve` as a real subprocess, for tests of processes, workers and signals (ServeProcess)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import uvicorn

from ptgstore.app import create_app
from ptgstore.serving import uvicorn_options
from ptgstore.settings import Settings
from ptgstore.testing import free_port, wait_until

# the keys a server keeps from start-up: its secret's fingerprint, its recordings directory and its
# presence as a recorder (a test that stores nothing finds these alone)
SERVER_KEYS = [b"ptgstore:recorders", b"ptgstore:recordings:directory", b"ptgstore:secret-fingerprint"]


class LiveServer:
    """The real app served by uvicorn on a free port, in a thread of this process."""

    def __init__(self, settings: Settings, port: int | None = None):
        self.settings = settings
        self.port = port or free_port()
        self.app = create_app(settings.replace(port=self.port))
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
            **{**uvicorn_options(settings.max_message), "timeout_graceful_shutdown": 5},  # as `ptgstore serve`
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"

    def start(self) -> "LiveServer":
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn to start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def token(self, user: str = "test") -> str:
        return self.app.state.authenticator.issue(user)

    def http(self, user: str = "test", **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


def make_settings(tmp_path: Path, redis_url: str | None, **changes) -> Settings:
    return Settings(redis_url=redis_url, data_dir=str(tmp_path / "data"), **changes)


@contextlib.contextmanager
def live_server(settings: Settings, port: int | None = None):
    server = LiveServer(settings, port).start()
    try:
        yield server
    finally:
        server.stop()




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

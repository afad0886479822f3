"""The dashboard screenshots of docs/dashboard.md: a private server fed with headset-like streams, photographed
by the system's chromium (found on PATH) through Playwright (no downloaded browser).

    python -m benchmarks.dashboard_screenshots [--out docs]
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw
from playwright.sync_api import expect, sync_playwright
from websockets.sync.client import connect

from .harness import PrivateRedis, Server

# the system's chromium (Debian names it chromium, others chromium-browser)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def camera_frame(i: int, size=(640, 360), tint=(70, 130, 200)) -> bytes:
    """A synthetic camera frame: sky, floor, a table and a cup that moves."""
    w, h = size
    image = Image.new("RGB", size, tint)
    draw = ImageDraw.Draw(image)
    for y in range(h // 2):
        shade = int(40 * y / (h / 2))
        draw.line([(0, y), (w, y)], fill=(tint[0] + shade, tint[1] + shade, min(255, tint[2] + shade)))
    draw.rectangle([0, h // 2, w, h], fill=(120, 100, 80))
    draw.rectangle([w // 5, h // 2 + 30, 4 * w // 5, h // 2 + 60], fill=(170, 140, 100))
    x = int(w / 2 + w / 4 * math.sin(i / 15))
    draw.rectangle([x - 20, h // 2 - 10, x + 20, h // 2 + 30], fill=(230, 230, 235))
    draw.ellipse([x - 20, h // 2 - 18, x + 20, h // 2 - 2], fill=(200, 60, 50))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


def feeder(server: Server, sid: str, hz: float, make, stop: threading.Event) -> threading.Thread:
    def run():
        with connect(f"{server.ws_url}/data/{sid}/push?ack=true&token={server.token}", compression=None,
                     max_size=None) as ws:
            i = 0
            while not stop.is_set() and i < 60 * hz:  # bounded: at most a minute
                ws.send(make(i))
                ws.recv(timeout=10)
                i += 1
                stop.wait(1 / hz)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs")
    out = Path(parser.parse_args(argv).out)
    with tempfile.TemporaryDirectory() as tmp, PrivateRedis(Path(tmp)) as store, Server(store.url) as server:
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
            for sid, meta in {"main": {"sensor": "PV camera", "max_len": 300}, "gll": {"sensor": "grey left-left"},
                              "depthlt": {"sensor": "depth long throw"}, "imu:accel": {"hz": 50}}.items():
                http.put(f"/streams/{sid}", json=meta).raise_for_status()
            for i in range(4):
                http.post(f"/data/archive:{i:02d}", files={"e": ("e", b"old entry %d" % i)}).raise_for_status()
        stop = threading.Event()
        feeders = [
            feeder(server, "main", 15, camera_frame, stop),
            feeder(server, "gll", 10, lambda i: camera_frame(i + 40, (320, 240), (90, 90, 90)), stop),
            feeder(server, "imu:accel", 50, lambda i: json.dumps(
                {"t": time.time(), "accel": [0.01 * math.sin(i / 9), 9.81, 0.02], "gyro": [0, 0.001 * i % 1, 0]}).encode(),
                stop),
            feeder(server, "depthlt", 5, lambda i: bytes((i + k) % 256 for k in range(4096)), stop),
            feeder(server, "asr", 1, lambda i: f"transcript: step {i} done, pick up the cup".encode(), stop),
        ]
        try:
            with sync_playwright() as playwright:
                if CHROMIUM is None:
                    raise SystemExit("chromium is not on PATH (apt-get install chromium)")
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 420})
                page.goto(server.url + "/")
                page.fill("input[name=username]", "test")
                page.fill("input[name=password]", "test")
                page.click("#login-form button[type=submit]")
                expect(page.locator("#streams tbody tr[data-sid=main] td").nth(3)).to_have_text(
                    re.compile(r"^1\d"), timeout=15_000)
                page.screenshot(path=str(out / "dashboard-overview.png"))
                page.set_viewport_size({"width": 1280, "height": 720})
                page.goto(server.url + "/#/stream/main")
                expect(page.locator("#preview img")).to_be_visible(timeout=15_000)
                expect(page.locator("#meta")).to_have_value(re.compile("PV camera"), timeout=15_000)
                page.wait_for_timeout(1500)  # a few preview updates and a rate
                page.screenshot(path=str(out / "dashboard-stream.png"))
                page.set_viewport_size({"width": 1280, "height": 400})
                page.goto(server.url + "/#/grid?s=main&s=gll&s=imu%3Aaccel")
                expect(page.locator(".tile img")).to_have_count(2, timeout=15_000)
                page.wait_for_timeout(1000)
                page.screenshot(path=str(out / "dashboard-grid.png"))
                browser.close()
        finally:
            stop.set()
            for thread in feeders:
                thread.join(15)
    print(f"wrote dashboard-overview.png, dashboard-stream.png and dashboard-grid.png in {out}")


if __name__ == "__main__":
    main()

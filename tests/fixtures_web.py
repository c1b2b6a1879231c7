"""The dashboard's test parts: a store filled by a real replay (with clips), the web server
as a real process, and headless Chromium driven over the DevTools protocol.

``Browser`` starts Debian's ``chromium`` with ``--remote-debugging-pipe``: the
protocol's JSON messages travel over file descriptors 3 (to the browser) and 4
(from it), each ended by a NUL byte, so no WebSocket library is needed.
Screenshots go to ``test-artifacts/web/`` (gitignored) for a person to look at.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("DAWNCHORUS_TEST_ARTIFACTS", REPO / "test-artifacts")) / "web"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_with_repo() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def replay_demo(state: Path) -> Path:
    """``python -m edge replay`` of the bundled demo recording into state/detections.db, clips on."""
    state.mkdir(parents=True, exist_ok=True)
    cfg = state / "edge.yaml"
    cfg.write_text(f"state_dir: {state}\nstore:\n  path: {state / 'detections.db'}\n"
                   f"clips:\n  enabled: true\n  dir: {state / 'clips'}\n")
    subprocess.run([sys.executable, "-m", "edge", "replay", "--config", str(cfg), "--no-progress", "--format", "csv",
                    "--out", str(state / "replay.csv")], check=True, env=env_with_repo(), capture_output=True,
                   timeout=300)
    return cfg


class WebServer:
    """``python -m edge web`` as a child process on a free port."""

    def __init__(self, args: list[str], host: str = "127.0.0.1"):
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="web-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "edge", "web", "--listen", f"{host}:{self.port}", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env_with_repo())
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"web exited {self.proc.returncode}: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"web did not listen: {self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def get(self, path: str, headers: dict | None = None, data: bytes | None = None):
        """(status, headers, body) without following redirects."""
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class BrowserError(RuntimeError):
    pass


class Browser:
    """Headless Chromium over the DevTools protocol (pipe transport), one page."""

    def __init__(self, width: int = 1200, height: int = 900):
        if not CHROMIUM:
            raise BrowserError("chromium is not installed (apt-get install chromium; ./dev.sh test installs it)")
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()

        def fds():  # the browser reads commands on fd 3 and writes answers on fd 4
            os.dup2(to_r, 100)
            os.dup2(from_w, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)

        self.proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-pipe", "about:blank"], preexec_fn=fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self._out = os.fdopen(to_w, "wb", buffering=0)
        self._in = os.fdopen(from_r, "rb", buffering=0)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.resize(width, height)

    # -- protocol ------------------------------------------------------------------------
    def _read(self, timeout: float) -> dict:
        import select

        end = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise BrowserError("no answer from chromium in time")
            chunk = os.read(self._in.fileno(), 1 << 20)
            if not chunk:
                raise BrowserError("chromium closed the pipe")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self._out.write(json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read(timeout)
            if m.get("id") == self._id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        return self.send(method, self.session, timeout, **params)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        end = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(max(0.01, end - time.monotonic())))

    # -- what a test does ------------------------------------------------------------------
    def resize(self, width: int, height: int, mobile: bool = False) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)

    def goto(self, url: str, timeout: float = 30) -> None:
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        res = self.call("Page.navigate", url=url)
        if res.get("errorText"):
            raise BrowserError(f"{url}: {res['errorText']}")
        self.wait_event("Page.loadEventFired", timeout)

    def js(self, expression: str, timeout: float = 30):
        res = self.call("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                        returnByValue=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"{expression[:80]}: {res['exceptionDetails'].get('exception', {}).get('description')}")
        return res["result"].get("value")

    def text(self) -> str:
        return self.js("document.body.innerText")

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.js("window.scrollTo(0, 0)")
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000), "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(data)
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for f in (self._out, self._in):
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

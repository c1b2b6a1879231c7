"""A REAL mosquitto on 127.0.0.1 for the MQTT tests, and a subscriber that collects.

``mqtt_broker`` starts a broker on a free port with a config written into
tmp_path (plain listener, anonymous, persistence on). ``make_broker`` makes
others (TLS, passwords, ACL). Brokers can be ``stop()``ped (SIGTERM: a clean
shutdown that saves persistence), ``kill()``ed (SIGKILL) and ``start()``ed
again on the same port for outage tests.

mosquitto started as root drops to the user ``mosquitto``; the generated
config sets ``user`` to the current user so the broker can read its files.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
REPO = Path(__file__).resolve().parents[1]
MAKE_TEST_CA = REPO / "deploy" / "mosquitto" / "make-test-ca.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


class Broker:
    """One mosquitto process with its own directory, config and port."""

    def __init__(self, workdir: Path, *, port: Optional[int] = None, tls: Optional[dict] = None,
                 password_file: Optional[Path] = None, acl_file: Optional[Path] = None,
                 persistence: bool = True, extra: str = ""):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls = tls
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.proc: Optional[subprocess.Popen] = None
        lines = [
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if password_file else 'true'}",
            "log_dest stderr",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "connection_messages true",
            "max_queued_messages 0",
        ]
        if persistence:
            pdir = self.dir / "persist"
            pdir.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {pdir}/", "autosave_interval 1"]
        if password_file:
            lines.append(f"password_file {password_file}")
        if acl_file:
            lines.append(f"acl_file {acl_file}")
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}",
                      f"require_certificate {'true' if tls.get('require_certificate') else 'false'}"]
        if extra:
            lines.append(extra)
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _accepting(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> "Broker":
        if self.running:
            return self
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=logf, stderr=logf,
                                     stdin=subprocess.DEVNULL)
        logf.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}):\n{self.log_text()}")
            if self._accepting():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown (SIGTERM): persistence is saved."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Crash (SIGKILL)."""
        if self.running:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.0, kill: bool = False) -> None:
        (self.kill if kill else self.stop)()
        if down_s:
            time.sleep(down_s)
        self.start()

    def _saved_stamp(self):
        try:
            st = (self.dir / "persist" / "mosquitto.db").stat()  # written as .new, then renamed over
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def wait_saved(self, timeout: float = 10.0) -> None:
        """Wait until the broker writes its persistence file again.

        mosquitto is single-threaded: a save that completes after this call
        starts holds everything the broker had acknowledged before it (a
        SUBACK received, say), so a SIGKILL after it cannot lose that.
        """
        before = self._saved_stamp()
        if not wait_until(lambda: self._saved_stamp() != before, timeout, 0.02):
            raise TimeoutError(f"mosquitto did not save its state within {timeout}s")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Collector:
    """A paho subscriber that keeps every message it receives (thread-safe).

    A persistent session (clean_session False, QoS 1) so that, on a broker
    with persistence, nothing is missed across a broker restart.
    """

    def __init__(self, broker: Broker, topics: list[str], *, qos: int = 1, client_id: Optional[str] = None,
                 username: Optional[str] = None, password: Optional[str] = None, tls_ca: Optional[Path] = None,
                 tls_cert: Optional[tuple[Path, Path]] = None, persistent: bool = True):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.topics = topics
        self.qos = qos
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"collector-{uuid.uuid4().hex[:8]}",
                                  clean_session=not persistent, protocol=mqtt.MQTTv311)
        if username:
            self.client.username_pw_set(username, password)
        if tls_ca:
            cert, key = (str(tls_cert[0]), str(tls_cert[1])) if tls_cert else (None, None)
            self.client.tls_set(ca_certs=str(tls_ca), certfile=cert, keyfile=key)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect_async(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            client.subscribe([(t, self.qos) for t in self.topics])

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        if not self._subscribed.wait(timeout):
            raise TimeoutError("collector did not subscribe")

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def json_on(self, topic: str) -> list[dict]:
        return [json.loads(p) for p in self.on(topic)]

    def ids(self, topic: str) -> list[str]:
        return [m["id"] for m in self.json_on(topic)]

    def wait_for(self, pred: Callable[["Collector"], bool], timeout: float = 20.0) -> bool:
        return wait_until(lambda: pred(self), timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_test_ca(out: Path, *clients: str) -> Path:
    """Run deploy/mosquitto/make-test-ca.sh: ca.crt, server.crt/key, <client>.crt/key."""
    subprocess.run(["bash", str(MAKE_TEST_CA), str(out), "localhost", *clients], check=True,
                   capture_output=True)
    return out


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    path.touch()
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True, capture_output=True)
    return path


@pytest.fixture
def make_broker(tmp_path):
    brokers: list[Broker] = []

    def make(name: str = "broker", start: bool = True, **kw) -> Broker:
        b = Broker(tmp_path / name, **kw)
        brokers.append(b)
        return b.start() if start else b

    yield make
    for b in brokers:
        b.kill()


@pytest.fixture
def mqtt_broker(make_broker) -> Broker:
    return make_broker()


@pytest.fixture
def make_collector():
    collectors: list[Collector] = []

    def make(broker: Broker, topics: list[str], **kw) -> Collector:
        c = Collector(broker, topics, **kw)
        collectors.append(c)
        return c

    yield make
    for c in collectors:
        c.close()

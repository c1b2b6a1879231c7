"""Notifications through a real Apprise to a real local HTTP receiver (json://), and to a closed port."""
from __future__ import annotations

import dataclasses
import json
import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edge.service.alerts import Alerts, read_urls, redact
from edge.service.updates import UpdateResult
from fixtures_mqtt import free_port, wait_until
from mqtt_helpers import T0, make_detections

pytest.importorskip("apprise")

NOW = T0 + timedelta(hours=1)  # the detections' day is "today"


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it; ``gate`` can hold the replies."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.waiting.set()
                outer.gate.wait(30)
                outer.bodies.append(json.loads(data))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def titles(self) -> list[str]:
        return [b.get("title", "") for b in self.bodies]

    def close(self):
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def closed_port_url() -> str:
    port = free_port()
    with socket.socket() as s:  # nothing listens there: connection refused
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return f"json://127.0.0.1:{port}/hook"


def service(urls, **kw) -> Alerts:
    kw.setdefault("clock", lambda: NOW)
    a = Alerts(urls, device_id="garden", location_name="El Yunque", **kw)
    a.start()
    return a


def test_new_species_of_the_day_once_each(receiver):
    dets = make_detections(9)  # three species, three times each, on T0's day
    a = service([receiver.url], seen_today=lambda day: {"Tyrannus_dominicensis"} if day == "2024-05-01" else set())
    try:
        a.handle(dets[:4])
        a.handle(dets[4:])
        assert wait_until(lambda: a.stats["sent"] == 2, 15)
        a.handle(make_detections(3, start=20))  # the same species again: nothing new
    finally:
        a.stop()
    titles = receiver.titles()
    assert sorted(titles) == ["dawnchorus: New today: Coereba flaveola", "dawnchorus: New today: Loxigilla portoricensis"]
    assert "El Yunque" in receiver.bodies[0]["message"] and a.stats["queued"] == 2


def test_yesterdays_detections_are_not_new_today(receiver):
    a = service([receiver.url], clock=lambda: NOW + timedelta(days=1))
    try:
        a.handle(make_detections(3))
    finally:
        a.stop()
    assert a.stats["queued"] == 0 and receiver.bodies == []


def test_watch_list_with_cooldown_and_minimum_score(receiver):
    dets = make_detections(12)
    watched = [d for d in dets if d.label == "Loxigilla_portoricensis"]
    a = service([receiver.url], watch_list=["loxigilla portoricensis"], new_species=False, cooldown_s=3600,
                min_score=0.0)
    try:
        a.handle(dets)
        assert wait_until(lambda: a.stats["sent"] == 1, 15)
    finally:
        a.stop()
    assert len(watched) == 4 and a.stats["cooldown"] == 3
    assert receiver.titles() == ["dawnchorus: Watched species: Loxigilla portoricensis"]
    assert receiver.bodies[0]["type"] == "warning" and "first today" in receiver.bodies[0]["message"]
    # below the minimum score nothing is sent
    b = service([receiver.url], watch_list=["Loxigilla portoricensis"], min_score=0.99)
    try:
        b.handle(dets)
    finally:
        b.stop()
    assert b.stats["queued"] == 0


def test_rate_limit(receiver):
    dets = [dataclasses.replace(d, label=f"Species_{i}", common_name="") for i, d in enumerate(make_detections(6))]
    a = service([receiver.url], max_per_hour=2)
    try:
        a.handle(dets)
        assert wait_until(lambda: a.stats["sent"] + a.stats["suppressed"] == 6, 15)
    finally:
        a.stop()
    assert a.stats["sent"] == 2 and a.stats["suppressed"] == 4 and len(receiver.bodies) == 2


def test_a_failing_notifier_is_counted_and_stops_nothing(caplog):
    a = service([closed_port_url()])
    try:
        a.handle(make_detections(3))
        assert wait_until(lambda: a.stats["failed"] == 3, 30)
    finally:
        a.stop()
    assert a._thread is not None and not a._thread.is_alive()
    assert a.stats["sent"] == 0 and "could not deliver" in caplog.text


def test_a_hanging_notifier_never_blocks_handle(receiver):
    receiver.gate.clear()  # the receiver accepts the first request and does not answer
    dets = [dataclasses.replace(d, label=f"Species_{i}", common_name="") for i, d in enumerate(make_detections(50))]
    a = service([receiver.url], queue_size=3, timeout_s=20)
    try:
        a.handle(dets[:1])
        assert receiver.waiting.wait(15)  # the worker is now stuck inside Apprise
        a.handle(dets[1:])  # returns although the notifier hangs: the queue is bounded
        assert a.stats["queued"] == 1 + 3 and a.stats["dropped"] == 46
        receiver.gate.set()
        assert wait_until(lambda: a.stats["sent"] == 4, 20)
    finally:
        a.stop()


def test_no_signal_alarm_from_the_guard_streak(receiver):
    health = {"no_signal_windows": 0, "no_signal_streak": 0}
    a = service([receiver.url], health=lambda: dict(health), check_s=3600, cooldown_s=0, no_signal_after=10)
    try:
        a.check()
        health.update(no_signal_windows=3, no_signal_streak=3)  # a short silence: no alarm
        a.check()
        health.update(no_signal_windows=5, no_signal_streak=0)
        a.check()
        health.update(no_signal_windows=20, no_signal_streak=15)  # a dead microphone
        a.check()
        health.update(no_signal_windows=40, no_signal_streak=35)  # still dead: no second alarm
        a.check()
        health.update(no_signal_streak=0)
        a.check()
        assert wait_until(lambda: a.stats["sent"] == 2, 15)
    finally:
        a.stop()
    assert [(b["title"], b["type"]) for b in receiver.bodies] == [
        ("dawnchorus: No signal on garden", "failure"), ("dawnchorus: Signal back on garden", "success")]
    assert "15 consecutive windows" in receiver.bodies[0]["message"]


def test_model_update_refused_and_rollback(receiver):
    class Updates:  # what the update service exposes: its results and its model store's state
        results: list = []

        class store:
            state = {"rollbacks": []}

    upd = Updates()
    a = service([receiver.url], updates=upd, check_s=3600)
    try:
        a.check()
        upd.results.append(UpdateResult("accepted", "swapped", "dawnchorus/models/stable", "t", "2.0", "ab", "m"))
        upd.results.append(UpdateResult("refused", "signature does not verify", "dawnchorus/models/stable", "t",
                                        "3.0", "cd", "m"))
        upd.store.state["rollbacks"].append({"utc": "2024-05-01T06:31:00.000Z", "reason": "crash loop after swap"})
        a.check()
        a.check()
        assert wait_until(lambda: a.stats["sent"] == 2, 15)
    finally:
        a.stop()
    titles = receiver.titles()
    assert "dawnchorus: Model update refused on garden" in titles and "dawnchorus: Model rolled back on garden" in titles
    assert any("signature does not verify" in b["message"] for b in receiver.bodies)


def test_urls_file_and_redaction(tmp_path):
    f = tmp_path / "urls"
    f.write_text("# tokens live here\n\ntgram://123456:SECRET/987\n")
    assert read_urls(["ntfy://ntfy.sh/birds"], f) == ["ntfy://ntfy.sh/birds", "tgram://123456:SECRET/987"]
    assert "SECRET" not in redact("tgram://123456:SECRET/987") and "SECRET" not in redact("mailto://u:SECRET@host")
    with pytest.raises(ValueError, match="notify.urls_file"):
        read_urls([], tmp_path / "missing")


def test_unusable_url_is_named_and_the_service_stays_idle(caplog):
    a = service(["notaservice://whatever"])
    try:
        a.handle(make_detections(1))
        assert wait_until(lambda: a.stats["unsent"] == 1, 10)
    finally:
        a.stop()
    assert "notaservice://" in caplog.text and "no usable notification URL" in caplog.text


def test_no_signal_alarm_from_the_real_signal_guard_and_health(receiver):
    """The pipeline's SignalGuard counts dead windows, Health reports them, the alerts service raises the alarm."""
    import numpy as np

    from edge.detection.guard import SignalGuard
    from edge.service.health import Health

    hop, window = 1000, 4000
    guard, health = SignalGuard(hop), Health("garden")
    a = service([receiver.url], health=health.snapshot, check_s=3600, no_signal_after=20)

    def feed(x: np.ndarray, start: int) -> None:
        guard.clean(x)
        for s in range(start, start + len(x) - window + 1, hop):
            guard.has_signal(s, window)
        health.note_signal(guard)
        a.check()

    try:
        silence = np.zeros(30 * hop, np.float32)  # a dead microphone: digital silence
        feed(silence, 0)
        assert health.snapshot()["no_signal_streak"] >= 20
        song = (0.1 * np.sin(np.arange(30 * hop) / 3)).astype(np.float32)
        feed(song, len(silence))
        assert health.snapshot()["no_signal_streak"] == 0
        assert wait_until(lambda: a.stats["sent"] == 2, 15)
    finally:
        a.stop()
    assert [b["title"] for b in receiver.bodies] == ["dawnchorus: No signal on garden",
                                                      "dawnchorus: Signal back on garden"]

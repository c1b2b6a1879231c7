"""The live daemon's parts on their own: ring buffer, clips and their budget, sd_notify, health."""
from __future__ import annotations

import socket
import tempfile
import threading
import time
import wave
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from edge.outputs.clips import ClipWriter
from edge.service.health import Health
from edge.service.sdnotify import Notifier, Watchdog
from edge.sources.ringbuffer import RingBuffer
from edge.contract.record import Detection
from edge.types import AudioBlock


# -- ring buffer ----------------------------------------------------------------------
def test_ring_wraps_and_keeps_order():
    ring = RingBuffer(1000, channels=2, rate=100, dtype=np.int16)
    data = np.arange(5000, dtype=np.int16).reshape(-1, 2)  # 2500 frames
    out = []
    for i in range(0, 2500, 300):
        assert ring.write(data[i:i + 300])
        while (c := ring.read(170)) is not None:
            assert c.lost_before is None
            out.append(c.data)
    assert np.array_equal(np.concatenate(out), data)
    assert ring.overflows == 0


def test_ring_overflow_drops_block_and_marks_the_gap():
    ring = RingBuffer(1000, rate=100)
    blocks = [np.full((400, 1), k, np.float32) for k in range(4)]
    assert ring.write(blocks[0]) and ring.write(blocks[1])
    assert not ring.write(blocks[2])  # 800 unread + 400 > 1000: dropped, nothing overwritten
    assert ring.overflows == 1 and ring.dropped_frames == 400
    first = ring.read(10_000)
    assert first.lost_before is None and len(first.data) == 800 and set(first.data[:, 0]) == {0, 1}
    assert ring.read(10) is None  # the gap waits for audio after it
    assert ring.write(blocks[3])
    after = ring.read(10_000)
    assert after.lost_before == 400 and set(after.data[:, 0]) == {3}


def test_ring_trailing_loss_is_reported_once_everything_is_read():
    """The stream stops while the ring is full: the drops after the last frame are a gap too."""
    ring = RingBuffer(1000, rate=100)
    assert ring.take_trailing_loss() is None
    t0 = time.time()
    for k in range(2):
        assert ring.write(np.full((400, 1), k, np.float32))
    t1 = time.time()
    assert not ring.write(np.full((400, 1), 2, np.float32)) and not ring.write(np.full((300, 1), 3, np.float32))
    assert ring.take_trailing_loss() is None  # audio still unread: it comes first
    assert len(ring.read(10_000).data) == 800 and ring.read(10) is None
    when, lost = ring.take_trailing_loss()
    assert lost == 700 == ring.dropped_frames and t0 <= when <= t1  # from the end of the last frame read
    assert ring.take_trailing_loss() is None and ring.read(10) is None  # reported once


def test_ring_read_stops_at_a_driver_overflow():
    ring = RingBuffer(1000, rate=100)
    ring.write(np.zeros((100, 1), np.float32))
    ring.write(np.ones((100, 1), np.float32), driver_overflow=True)
    a = ring.read(1000)
    b = ring.read(1000)
    assert len(a.data) == 100 and a.lost_before is None
    assert len(b.data) == 100 and b.lost_before == 0 and ring.driver_overflows == 1


def test_ring_between_threads():
    ring = RingBuffer(4096, rate=1000, dtype=np.int16)
    total = 200_000
    got = []

    def producer():
        sent = 0
        while sent < total:
            n = min(256, total - sent)
            if ring.write((np.arange(sent, sent + n) % 30000).astype(np.int16)[:, None]):
                sent += n
            else:
                time.sleep(0.0005)  # a producer that waits never loses anything

    t = threading.Thread(target=producer)
    t.start()
    n = 0
    while n < total:
        c = ring.read(1000)
        if c is None:
            ring.wait(0.01)
            continue
        got.append(c.data[:, 0])
        n += len(c.data)
    t.join()
    x = np.concatenate(got).astype(np.int64)
    assert np.array_equal(x, np.arange(total) % 30000)


# -- clips ------------------------------------------------------------------------------
def _det(i: int, start: float, end: float, label: str = "Turdus_merula") -> Detection:
    t = datetime(2024, 5, 1, 5, 0, i, tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")
    return Detection(id=f"{i:08d}-0000", device_id="d", source="mic", start_utc=t, end_utc=t, offset_s=start,
                     end_offset_s=end, label=label, common_name="Blackbird", score=0.9, mean_score=0.8, n_windows=1,
                     model_version="1", model_sha256="x", created_utc=t, time_source="clock")


def _feed(cw: ClipWriter, seconds: float, sr: int, start_s: float = 0.0, step: float = 0.5):
    t = start_s
    while t < start_s + seconds:
        n = int(step * sr)
        x = (np.sin(np.arange(n) * 0.1) * 0.5).astype(np.float32)
        cw.add_audio(AudioBlock(x, datetime.now(timezone.utc), t))
        t += step


def test_clip_has_padding_and_waits_for_the_audio_after_the_event(tmp_path):
    sr = 8000
    cw = ClipWriter(tmp_path / "clips", sr, padding_s=1.0, max_disk_mb=10)
    _feed(cw, 6.0, sr)
    cw.handle([_det(1, 3.0, 5.5)])
    assert cw.written == 0  # 5.5 + 1 s of padding not heard yet
    _feed(cw, 2.0, sr, start_s=6.0)
    assert cw.written == 1
    (clip,) = list((tmp_path / "clips").rglob("*.wav"))
    with wave.open(str(clip)) as w:
        assert w.getframerate() == sr and w.getnchannels() == 1
        assert w.getnframes() == int(4.5 * sr)
    assert "Turdus_merula" in clip.name


def test_clip_budget_deletes_oldest_clips_never_other_files(tmp_path):
    sr = 8000
    d = tmp_path / "clips"
    d.mkdir()
    db = d / "detections.db"  # even a database put inside the clips directory is never deleted
    db.write_bytes(b"x" * 100_000)
    cw = ClipWriter(d, sr, padding_s=0.0, max_disk_mb=0.1)  # about three 2-second clips
    for i in range(8):
        _feed(cw, 2.0, sr, start_s=2.0 * i)
        cw.handle([_det(i, 2.0 * i, 2.0 * i + 2.0)])
        time.sleep(0.01)
    cw.flush()
    left = sorted(p.name for p in d.rglob("*.wav"))
    assert cw.written == 8 and cw.deleted == 8 - len(left) > 0
    assert sum(p.stat().st_size for p in d.rglob("*.wav")) <= 100_000
    assert left == sorted(left)[-len(left):] and all(f"_{i:08d}"[:9] not in " ".join(left) for i in range(3))
    assert db.exists() and db.stat().st_size == 100_000
    # a new writer over the same directory counts what is there
    assert ClipWriter(d, sr, max_disk_mb=0.1).disk_bytes == sum(p.stat().st_size for p in d.rglob("*.wav"))


# -- sd_notify and the watchdog ---------------------------------------------------------
@pytest.fixture
def notify_socket():
    tmp = tempfile.mkdtemp(prefix="dcn", dir="/tmp")
    path = str(Path(tmp) / "s")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.1)
    yield path, s
    s.close()
    Path(path).unlink()
    Path(tmp).rmdir()


def _drain(s) -> list[str]:
    out = []
    while True:
        try:
            out += s.recv(4096).decode().split("\n")
        except socket.timeout:
            return out


def test_notifier_outside_systemd_does_nothing():
    n = Notifier(env={})
    assert not n.enabled and not n.ready() and n.watchdog_s is None


def test_notifier_messages_and_watchdog_env(notify_socket):
    path, s = notify_socket
    n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert n.watchdog_s == 3.0
    assert n.ready("listening") and n.watchdog() and n.stopping()
    assert _drain(s) == ["READY=1", "STATUS=listening", "WATCHDOG=1", "STOPPING=1", "STATUS=stopping"]
    other = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_s is None  # the watchdog is some other process's


def test_watchdog_pings_only_while_audio_and_inference_progress(notify_socket):
    path, s = notify_socket
    now = [1000.0]
    health = Health(clock=lambda: now[0])
    stop = threading.Event()
    wd = Watchdog(Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}), health.progressing,
                  health.summary, stop, status_s=0.1, grace_s=5.0)
    assert wd.interval == pytest.approx(0.1)
    wd.start()
    try:
        now[0] += 200  # long past start-up with no audio at all: stalled
        time.sleep(0.5)
        assert "WATCHDOG=1" not in _drain(s)
        health.note_audio(16000, 32000)
        health.note_windows(1, 0.002)
        time.sleep(0.5)
        msgs = _drain(s)
        assert msgs.count("WATCHDOG=1") >= 2 and any(m.startswith("STATUS=listening") for m in msgs)
        now[0] += 3
        health.note_audio(16000, 32000)  # audio flows but no window for 6 s: inference stalled
        now[0] += 3
        time.sleep(0.15)
        _drain(s)  # what was sent before the stall
        time.sleep(0.4)
        assert "WATCHDOG=1" not in _drain(s)
        health.note_windows(1, 0.002)
        health.note_waiting()  # device gone, retry loop alive: a known state, not a hang
        time.sleep(0.4)
        assert "WATCHDOG=1" in _drain(s)
        now[0] += 10  # the retry loop stopped reporting: hung
        time.sleep(0.15)
        _drain(s)
        time.sleep(0.4)
        assert "WATCHDOG=1" not in _drain(s)
    finally:
        stop.set()
        wd.stop()
    assert wd.withheld > 0 and wd.pings > 0


def test_health_snapshot_has_the_status_numbers(tmp_path):
    h = Health("rec-1", tmp_path)
    h.note_audio(32000, 32000)
    h.note_windows(2, 0.004)
    h.note_gap(2.5)
    snap = h.snapshot()
    for key in ("uptime_s", "windows_processed", "inference_latency_ms", "overflows", "gaps", "disk_free_mb"):
        assert key in snap
    assert snap["windows_processed"] == 2 and snap["gaps"] == 1 and snap["disk_free_mb"] > 0
    assert snap["inference_latency_ms"] == pytest.approx(4.0)
    assert "2 windows" in h.summary()


def test_health_snapshot_fits_the_mqtt_status_schema(tmp_path):
    import json

    import jsonschema

    from edge.config import PACKAGE_DIR

    schema = json.loads((PACKAGE_DIR / "schemas" / "status.json").read_text())["properties"]["health"]
    h = Health("rec-1", tmp_path)
    h.note_audio(32000, 32000)
    h.note_detections([_det(1, 0.0, 3.0)])
    snap = dict(h.snapshot(), outbox_depth=0)  # the publisher adds its outbox depth
    jsonschema.validate(snap, schema)
    assert snap["last_label"] == "Turdus_merula" and snap["detections"] == 1


# -- effort: a new listening session per model ----------------------------------------------
def test_new_model_version_with_the_same_network_starts_a_new_effort_row(tmp_path):
    """A bundle with a new version but the same model bytes (new thresholds, say) swapped in while
    listening: the session closes and a new one opens with the new version; health follows."""
    from edge.contract.bundle import load_bundle
    from edge.config import parse_config
    from edge.contract.interpreter import load_model
    from edge.detection.pipeline import Pipeline
    from edge.contract.signing import load_public_key
    from edge.outputs.store import Store
    from edge.service.runtime import Runtime
    from edge.types import AudioSource
    from fixtures_replay import make_tone_bundle, tone_bursts

    keys = tmp_path / "keys"
    keys.mkdir()
    key = load_public_key(make_tone_bundle(keys, "1.0.0").parent / "signing.pub")
    b1 = load_bundle(keys / "tones-1.0.0.bundle", key)
    b2 = load_bundle(make_tone_bundle(keys, "1.1.0"), key)
    assert b2.sha256 == b1.sha256 and b2.version != b1.version  # same network, new version
    cfg = parse_config({"device_id": "rec1", "state_dir": str(tmp_path / "state"),
                        "store": {"path": str(tmp_path / "state" / "d.db")}})
    store = Store(cfg.store.path)
    rt = Runtime(cfg, Pipeline(b1, load_model(b1), device_id="rec1"), store)
    x = tone_bursts(1200.0, 2)
    sr = rt.pipeline.sample_rate
    t0 = datetime.now(timezone.utc)
    seen: list[int] = []

    class Blocks(AudioSource):
        name, sample_rate, time_source = "mic", sr, "clock"

        def blocks(self, stop):
            for i in range(4):
                yield AudioBlock(x[(i % 2) * sr:(i % 2 + 1) * sr], t0 + timedelta(seconds=i), float(i))

    def on_block(block):
        seen.append(len(store.effort()))
        if block.offset_s == 1.0:
            rt.pipeline.set_model(b2, load_model(b2))  # what the update service does; applied between blocks

    rt.run_source(Blocks(), on_block=on_block)
    assert seen[:2] == [1, 1]  # same model: same session
    effort = store.effort()
    assert [e["model_version"] for e in effort] == ["1.0.0", "1.1.0"]  # and only once
    assert effort[0]["end_utc"] == effort[1]["start_utc"] and effort[1]["end_utc"] > effort[1]["start_utc"]
    assert effort[0]["model_sha256"] == effort[1]["model_sha256"] == b1.sha256
    assert rt.health.model_version == "1.1.0"
    rt.stop()

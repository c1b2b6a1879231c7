"""The live daemon through the real PortAudio path, with no sound card.

An ALSA ``file`` capture device (tests/fixtures_alsa.py) plays a recording
into sounddevice; ``python -m edge run`` runs in a child process (PortAudio
reads the ALSA configuration when it initialises) and stops by sample count
(``--duration``). The detections it stores must be the ones a replay of the
very same samples through the pipeline finds, and the species those
samples contain; the effort row must say which device, model and settings.
"""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml

from fixtures_replay import TONES, make_tone_bundle, noise, tone_bursts

REPO = Path(__file__).resolve().parent.parent
SR = 32000


def rows(db: Path, table: str) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"SELECT * FROM {table}")]
    finally:
        con.close()


def write_config(path: Path, state: Path, bundle: Path | None, key: Path | None, audio: dict, **extra) -> Path:
    cfg = {"device_id": "test-recorder", "state_dir": str(state), "store": {"path": str(state / "detections.db")},
           "audio": audio, "updates": {"enabled": False}, **extra}
    if bundle is not None:
        cfg["model"] = {"bundle": str(bundle), "public_key": str(key)}
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_daemon(cfg: Path, env: dict, duration: float, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(cfg), "--duration", str(duration)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def replay(bundle_path: Path, key: Path | None, samples: np.ndarray, block: int = SR // 2) -> list:
    """The same samples through the pipeline in-process: what the daemon must find."""
    from edge.contract.bundle import load_bundle
    from edge.contract.interpreter import load_model
    from edge.detection.pipeline import Pipeline
    from edge.contract.signing import load_public_key
    from edge.types import AudioBlock

    bundle = load_bundle(bundle_path, load_public_key(key))
    p = Pipeline(bundle, load_model(bundle))
    p.begin("replay", "clock")
    out = []
    now = datetime.now(timezone.utc)
    for i in range(0, len(samples), block):
        out += p.feed(AudioBlock(samples[i:i + block], now, i / SR))
    return out + p.finish()


def quantized(x: np.ndarray) -> np.ndarray:
    """What the 16-bit capture path delivers for x."""
    return (np.clip(np.round(x * 32768), -32768, 32767) / 32768).astype(np.float32)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    d = tmp_path_factory.mktemp("tones")
    return make_tone_bundle(d), d / "signing.pub"


def tone_program() -> tuple[np.ndarray, set[str]]:
    """Low tone, quiet, high tone, quiet: the labels present are known by construction."""
    freq = {v: k for k, v in TONES.items()}
    x = np.concatenate([tone_bursts(1200.0, 10), noise(5), tone_bursts(7000.0, 10, seed=3), noise(6)])
    return x, {freq[1200.0], freq[7000.0]}


def test_live_tones_through_alsa_file_device(tmp_path, alsa_device, tones):
    bundle, key = tones
    x, expected = tone_program()
    env, name = alsa_device(x)
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", state, bundle, key, {"device": name, "ring_buffer_s": 60},
                       clips={"enabled": True, "dir": str(state / "clips"), "padding_s": 0.5})
    r = run_daemon(cfg, env, len(x) / SR)
    db = state / "detections.db"
    dets = rows(db, "detections")
    assert {d["label"] for d in dets} == expected
    # exactly what a replay of the same samples finds
    want = replay(bundle, key, quantized(x))
    assert sorted((d["label"], round(d["offset_s"], 2)) for d in dets) == \
        sorted((d.label, round(d.offset_s, 2)) for d in want)
    assert all(d["source"] == name and d["time_source"] == "clock" for d in dets)
    effort = rows(db, "effort")
    assert len(effort) == 1
    e = effort[0]
    settings = json.loads(e["settings"])
    assert e["source"] == name and e["end_utc"] and e["end_utc"] >= e["start_utc"]
    assert e["model_sha256"] == dets[0]["model_sha256"] and e["model_version"] == "1.0.0"
    assert settings["device"] == name and settings["capture_rate"] == SR and settings["resampled"] is False
    assert rows(db, "gaps") == []
    assert "ready: audio flowing" in r.stderr
    clips = sorted((state / "clips").rglob("*.wav"))
    assert len(clips) == len(dets)
    assert {c.name.split("_", 1)[1].rsplit("_", 1)[0] for c in clips} == expected


def test_live_resamples_and_picks_the_channel(tmp_path, alsa_device, tones):
    """A 2-channel device at 48 kHz: channel 1 carries the tone, channel 0 only noise."""
    bundle, key = tones
    from edge.contract.resample import StreamResampler

    x, expected = tone_program()
    up = StreamResampler(SR, 48000)
    x48 = np.concatenate([up.process(x), up.flush()])
    stereo = np.stack([noise(len(x48) / 48000, sr=48000, seed=7), x48], axis=1)
    env, name = alsa_device(stereo, rate=48000)
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", state, bundle, key,
                       {"device": name, "sample_rate": 48000, "channels": 2, "channel": 1, "ring_buffer_s": 60})
    run_daemon(cfg, env, len(x48) / 48000)
    db = state / "detections.db"
    assert {d["label"] for d in rows(db, "detections")} == expected
    settings = json.loads(rows(db, "effort")[0]["settings"])
    assert settings["capture_rate"] == 48000 and settings["resampled"] is True and settings["channel"] == 1


def test_live_demo_recording_matches_replay(tmp_path, alsa_device):
    """The bundled demo recording with the bundled default model: live finds what replay finds."""
    import soundfile as sf

    from edge.config import DEFAULT_BUNDLE, DEFAULT_PUBLIC_KEY

    demo = sorted((REPO / "edge" / "demo").glob("*.ogg")) + sorted((REPO / "edge" / "demo").glob("*.wav"))
    if not demo or not DEFAULT_BUNDLE.exists():
        pytest.skip("no bundled demo recording or default model")
    x, rate = sf.read(str(demo[0]), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if rate != SR:
        from edge.contract.resample import StreamResampler

        rs = StreamResampler(rate, SR)
        x = np.concatenate([rs.process(x), rs.flush()])
    x = quantized(x)
    env, name = alsa_device(x)
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", state, None, None, {"device": name, "ring_buffer_s": 120})
    run_daemon(cfg, env, len(x) / SR)
    dets = rows(state / "detections.db", "detections")
    want = replay(DEFAULT_BUNDLE, DEFAULT_PUBLIC_KEY, x)
    assert sorted((d["label"], round(d["offset_s"], 2)) for d in dets) == \
        sorted((d.label, round(d.offset_s, 2)) for d in want)
    assert len(rows(state / "detections.db", "effort")) == 1


def test_device_missing_at_start_then_appears(tmp_path, tones):
    """The device errors (its input cannot be opened), then comes back: a gap, then detections."""
    from fixtures_alsa import SYSTEM_ALSA_CONF, alsa_env, pcm_block, to_s16

    if not SYSTEM_ALSA_CONF.exists():
        pytest.skip("no ALSA configuration")
    bundle, key = tones
    x, expected = tone_program()
    raw = tmp_path / "late.raw"
    conf = tmp_path / "asound.conf"
    conf.write_text(pcm_block("dclate", raw, SR))
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", state, bundle, key,
                       {"device": "dclate", "ring_buffer_s": 60, "retry_initial_s": 0.3, "retry_max_s": 1.0})
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg), "--duration", str(len(x) / SR)],
                            env=alsa_env(conf), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    seen_retry = threading.Event()

    def reader():
        for line in proc.stderr:
            err_lines.append(line)
            if "unavailable" in line:
                seen_retry.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert seen_retry.wait(60), "".join(err_lines)
    tmp = raw.with_suffix(".tmp")
    tmp.write_bytes(to_s16(np.concatenate([x, np.zeros(5 * SR, np.float32)])[:, None]))
    tmp.rename(raw)  # the device "returns"
    assert proc.wait(120) == 0, "".join(err_lines)
    t.join(5)
    db = state / "detections.db"
    gaps = rows(db, "gaps")
    assert len(gaps) == 1 and "unavailable" in gaps[0]["reason"] and gaps[0]["end_utc"] >= gaps[0]["start_utc"]
    assert {d["label"] for d in rows(db, "detections")} == expected
    effort = rows(db, "effort")
    assert len(effort) == 1 and effort[0]["start_utc"] >= gaps[0]["start_utc"][:19]


def replay_pieces(bundle_path: Path, key: Path | None, pieces: list[np.ndarray], block: int = SR // 2):
    """Contiguous pieces with holes between them, through the pipeline: (detections, windows)."""
    from edge.contract.bundle import load_bundle
    from edge.contract.interpreter import load_model
    from edge.detection.pipeline import Pipeline
    from edge.contract.signing import load_public_key
    from edge.types import AudioBlock

    bundle = load_bundle(bundle_path, load_public_key(key))
    p = Pipeline(bundle, load_model(bundle))
    p.begin("replay", "clock")
    out, done = [], 0
    now = datetime.now(timezone.utc)
    for k, piece in enumerate(q for q in pieces if len(q)):
        for i in range(0, len(piece), block):
            out += p.feed(AudioBlock(piece[i:i + block], now, done / SR, k > 0 and i == 0))
            done += len(piece[i:i + block])
    out += p.finish()
    return out, p.stats["windows"]


OVERFLOW_LINE = re.compile(r"ring buffer overflow: (\d+) frames lost from \S+, after stream sample (\d+)")
SUMMARY = re.compile(r"stopped after .*: (\d+) windows, (\d+) detections, (\d+) overflows, (\d+) gaps, (\d+) samples")


def test_ring_overflow_is_counted_and_recorded_as_gaps(tmp_path, alsa_device, tones):
    """The file device floods a 5 s ring faster than the pipeline reads: audio is dropped, counted,
    recorded as gaps (the last one too when the stream ends with the ring full), and no window spans
    a hole: what is stored is exactly a replay of the contiguous pieces that were kept.

    Where the holes fall depends on how the capture and processing threads are scheduled (on a busy
    machine the whole flood can arrive before the first read); the pieces are rebuilt from the log,
    so the assertions hold wherever they fall."""
    bundle, key = tones
    x = np.tile(tone_program()[0], 3)  # 93 s delivered in a fraction of a second
    env, name = alsa_device(x)
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", state, bundle, key, {"device": name, "ring_buffer_s": 5})
    r = run_daemon(cfg, env, len(x) / SR)
    db = state / "detections.db"
    gaps = sorted(rows(db, "gaps"), key=lambda g: g["id"])
    holes = [(int(n), int(after)) for n, after in OVERFLOW_LINE.findall(r.stderr)]
    windows, _, overflows, n_gaps, samples = map(int, SUMMARY.findall(r.stderr)[-1])
    assert gaps and all(g["reason"] == "ring buffer overflow" for g in gaps)
    assert [g["samples_lost"] for g in gaps] == [n for n, _ in holes]
    assert overflows >= len(gaps) == n_gaps
    lost = sum(n for n, _ in holes)
    assert 0 < lost < len(x)
    assert samples + lost == len(x)  # every captured frame was either processed or recorded as lost
    # the kept pieces of the input, between the holes
    q, pieces, pos, done = quantized(x), [], 0, 0
    for n, after in holes:
        pieces.append(q[pos:pos + after - done])
        pos += after - done + n
        done = after
    pieces.append(q[pos:])
    assert sum(len(p) for p in pieces) == samples
    want, want_windows = replay_pieces(bundle, key, pieces)
    assert windows == want_windows  # every window inside a piece: none across a hole
    dets = rows(db, "detections")
    assert sorted((d["label"], round(d["offset_s"], 2)) for d in dets) == \
        sorted((d.label, round(d.offset_s, 2)) for d in want)


def test_sigterm_drains_the_ring_buffer_into_the_store(tmp_path, alsa_device, tones):
    """SIGTERM while capturing: the capture stops, what the ring holds is drained through the
    pipeline (tail window, open events) and every detection of the audio captured reaches the
    store - exactly what a replay of those samples finds."""
    import signal as sig

    bundle, key = tones
    x = np.tile(tone_program()[0], 19)  # ~10 min, so the stop lands while the device still delivers
    env, name = alsa_device(x)
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", state, bundle, key, {"device": name, "ring_buffer_s": 600})
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg), "--duration", str(len(x) / SR)],
                            env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "ready: audio flowing" in line:
            proc.send_signal(sig.SIGTERM)
            break
    lines += proc.stderr.readlines()
    assert proc.wait(120) == 0, "".join(lines)
    log = "".join(lines)
    assert "SIGTERM: stopping" in log
    n = int(log.split(" samples (")[0].rsplit(" ", 1)[1])  # what was captured before the stop
    assert 0 < n < len(x)  # the stop came while the device was still delivering
    dets = rows(state / "detections.db", "detections")
    want = replay(bundle, key, quantized(x[:n]))
    assert want, f"only {n} samples captured before the stop: nothing to compare"
    assert sorted((d["label"], round(d["offset_s"], 2)) for d in dets) == \
        sorted((d.label, round(d.offset_s, 2)) for d in want)
    effort = rows(state / "detections.db", "effort")
    assert len(effort) == 1 and effort[0]["end_utc"]

"""Segment bundles in the pipeline (edge/detection/segments.py): windows made as for a per-window model, scored
W per invoke by a real int8 segment model (fixtures_segment) on the real interpreter and real audio; what a file
gets equals ``edge.contract.segment.score_windows`` on its windows, across partial chunks, gaps, refused windows
and model swaps; the model's hop cannot be overridden; live capture's watchdog and clips allow for the delay."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures_segment import SEGMENT_WINDOWS, ProbeModel

from edge.contract.bundle import load_bundle
from edge.contract.frontend import LogMel
from edge.contract.interpreter import load_model
from edge.contract.segment import score_windows
from edge.contract.signing import load_public_key
from edge.detection.guard import FLAT_PEAK_TO_PEAK
from edge.detection.pipeline import NO_SIGNAL_SCORE, Pipeline, PipelineError
from edge.types import AudioBlock, DetectionSink

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "edge" / "demo" / "XC344036_20161110_130000.ogg"  # 59.4 s at 32 kHz, credited in edge/demo/CREDITS.md
SR = 32000
T0 = datetime(2016, 11, 10, 13, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def demo() -> np.ndarray:
    x, rate = sf.read(str(DEMO), dtype="float32")
    assert rate == SR
    return x


@pytest.fixture(scope="module")
def seg(segment_run):
    b = load_bundle(segment_run.bundle_path, load_public_key(segment_run.public_key_path))
    return b, load_model(b)


@pytest.fixture(scope="module")
def win(segment_run):
    b = load_bundle(segment_run.window_bundle_path, load_public_key(segment_run.public_key_path))
    return b, load_model(b)


class Counted:
    """The real model, its invokes counted."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def predict(self, x):
        self.calls += 1
        return self.model.predict(x)


def segment_model(kind: str, seg):
    """The segment bundle's real int8 model ("int8"), or the probe on its geometry ("probe": rows that follow
    each window's own features, fixtures_segment.ProbeModel); invokes counted."""
    bundle, model = seg
    return Counted(model) if kind == "int8" else ProbeModel(bundle.segment)


def feed(p, x, block, *, cut_at=None, on_block=None):
    """``x`` through ``p`` in blocks (``cut_at``: a block starting there is flagged discontinuity); the windows
    (offset, scores) and the detections."""
    p.begin("demo", "file-name")
    windows: list[tuple[float, np.ndarray]] = []
    p.on_window = lambda off, utc, s: windows.append((off, np.array(s)))
    dets = []
    bounds = sorted(set(range(0, len(x), block)) | ({cut_at} if cut_at else set()))
    for i, j in zip(bounds, bounds[1:] + [len(x)]):
        dets += p.feed(AudioBlock(x[i:j], T0 + timedelta(seconds=i / SR), i / SR, discontinuity=i == cut_at))
        if on_block is not None:
            on_block(j)
    dets += p.finish()
    return windows, dets


def starts_of(n_samples: int, bundle) -> list[int]:
    """Window starts (samples) of one stretch, as the pipeline makes them: every hop, then the tail window
    (aligned to the stretch's last frame)."""
    fe = bundle.frontend
    hop = round(bundle.hop_s * SR)
    starts = list(range(0, n_samples - fe.window_samples + 1, hop))
    tail = (1 + (n_samples - fe.n_fft) // fe.hop_length - fe.n_frames) * fe.hop_length
    return starts + ([tail] if tail > starts[-1] else [])


def features(bundle, x, starts):
    fe = bundle.frontend
    lm = LogMel(fe)
    span = (fe.n_frames - 1) * fe.hop_length + fe.n_fft  # the samples a window's frames cover
    return np.stack([lm.features(lm.frames(x[s:s + span])) for s in starts])


def reference(bundle, model, x, starts, base=0):
    """score_windows on the stretch's windows; refused windows (flat) get zero features and the no-signal row."""
    n = bundle.frontend.window_samples
    feats = features(bundle, x, starts)
    flat = np.array([np.ptp(x[s:s + n]) <= FLAT_PEAK_TO_PEAK for s in starts])
    feats[flat] = 0.0
    rows = score_windows(bundle.segment, model.predict, feats)
    rows[flat] = NO_SIGNAL_SCORE
    return [((base + s) / SR, r) for s, r in zip(starts, rows)]


def assert_windows(got, want, exact: bool = True):
    """The same windows with the same scores: exactly (int8 outputs), else within float rounding (the probe's
    float rows follow the streamed frames, whose last bits may differ from a window's frames computed alone)."""
    assert [round(o, 6) for o, _ in got] == [round(o, 6) for o, _ in want]
    for (o, g), (_, w) in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=0 if exact else 1e-6, err_msg=f"window at {o} s")


@pytest.mark.parametrize("kind,block", [("int8", 1000), ("int8", SR), ("int8", 7 * SR + 13), ("probe", 1000),
                                        ("probe", 7 * SR + 13)])
def test_a_file_is_scored_as_score_windows_scores_its_windows(seg, win, demo, kind, block):
    bundle = seg[0]
    m = segment_model(kind, seg)
    p = Pipeline(bundle, m)
    got, _ = feed(p, demo, block)
    calls = m.calls
    starts = starts_of(len(demo), bundle)
    assert len(starts) % SEGMENT_WINDOWS and len(starts) > 8 * SEGMENT_WINDOWS  # ends with a partial chunk
    assert_windows(got, reference(bundle, m, demo, starts), exact=kind == "int8")
    assert calls == -(-len(starts) // SEGMENT_WINDOWS)  # one invoke per chunk of W windows
    assert p.stats["windows"] == len(starts) and p.stats["invoke_s"] > 0 and p.stats["frontend_s"] > 0
    per_window, _ = feed(Pipeline(*win), demo, block)
    assert [o for o, _ in per_window] == [o for o, _ in got]  # the same windows as the per-window model
    if kind == "probe":  # a window's row is its own: another order of the same windows scores otherwise
        shifted = reference(bundle, m, demo, starts[1:] + starts[:1])
        assert sum(np.abs(g - w).max() > 0 for (_, g), (_, w) in zip(got, shifted)) > len(got) // 2

@pytest.mark.parametrize("windows,hop", [(16, 150), (5, 150), (4, 297), (3, 1), (7, 100)])
def test_the_batch_places_each_window_as_assemble_would(windows, hop):
    """SegmentBatch writes each window into the input as it comes (no features buffer): whatever the chunk's
    length, the refused windows and the chunk before, the input is SegmentSpec.assemble's."""
    from edge.contract.segment import SegmentSpec
    from edge.detection.segments import SegmentBatch

    spec = SegmentSpec(windows=windows, hop_frames=hop, window_frames=297, n_mels=8)
    batch = SegmentBatch(spec)
    rng = np.random.default_rng(windows * 1000 + hop)
    seen = []
    for m in [windows, 1, windows - 1, 2, windows] * 2:
        m = max(1, m)
        feats = rng.normal(size=(m, 8, 297, 1)).astype(np.float32)
        refused = rng.random(m) < 0.3
        for k in range(m):
            batch.add(None if refused[k] else feats[k], float(k), T0)
        want = spec.assemble(np.where(refused[:, None, None, None], np.float32(0), feats))
        got: dict = {}

        def predict(x):
            got["x"] = x.copy()
            return np.zeros((windows, 2), np.float32)

        rows = batch.score(predict, 2, -1.0, {"frontend_s": 0.0, "invoke_s": 0.0})
        assert [r[0] for r in rows] == [float(k) for k in range(m)] and not batch.slots
        if refused.all():
            assert "x" not in got  # nothing to score: no invoke
            continue
        np.testing.assert_array_equal(got["x"], want)
        seen.append(m)
    assert len(set(seen)) >= 2



@pytest.mark.parametrize("kind", ["int8", "probe"])
def test_a_gap_ends_the_chunk_and_refused_windows_keep_their_slots(seg, demo, kind):
    bundle = seg[0]
    x = demo.copy()
    x[20 * SR:26 * SR] = 0.0  # digital silence: windows inside are refused by the signal guard
    cut = int(41.3 * SR)  # samples were lost before this block: a new stretch, mid-chunk
    m = segment_model(kind, seg)
    p = Pipeline(bundle, m)
    got, _ = feed(p, x, SR // 2, cut_at=cut)
    calls = m.calls
    a, b = starts_of(cut, bundle), starts_of(len(x) - cut, bundle)
    assert len(a) % SEGMENT_WINDOWS  # the gap falls inside a chunk
    want = reference(bundle, m, x[:cut], a) + reference(bundle, m, x[cut:], b, base=cut)
    assert_windows(got, want, exact=kind == "int8")
    refused = [o for o, s in got if (s == NO_SIGNAL_SCORE).all()]
    assert len(refused) == p.guard.no_signal_windows == 11  # windows within 20..26 s
    # chunks of both stretches, less the two whose four windows are all refused (not invoked)
    assert calls == -(-len(a) // SEGMENT_WINDOWS) + -(-len(b) // SEGMENT_WINDOWS) - 2


@pytest.mark.parametrize("kind", ["int8", "probe"])
@pytest.mark.parametrize("first", ["window", "segment"])
def test_a_model_swap_mid_chunk(seg, win, demo, first, kind):
    models = {"segment": (seg[0], segment_model(kind, seg)), "window": win}
    second = "window" if first == "segment" else "segment"
    p = Pipeline(*models[first])
    swap_at = int(23.2 * SR)  # a block boundary; 23.2 s holds 45 windows of the 1 s, 0.5 s model
    fed: list[int] = []

    def on_block(end):
        if end == swap_at:
            p.set_model(*models[second])  # takes effect before the next block
        fed.append(end)

    got, _ = feed(p, demo, int(0.1 * SR), on_block=on_block)
    starts = starts_of(len(demo), seg[0])
    n = seg[0].frontend.window_samples
    j = sum(1 for s in starts if s + n <= swap_at)  # the windows made before the swap
    assert j % SEGMENT_WINDOWS
    parts = []
    for name, part in ((first, starts[:j]), (second, starts[j:])):
        bundle, model = models[name]
        if name == "segment":
            parts += list(zip([s / SR for s in part], score_windows(bundle.segment, model.predict,
                                                                    features(bundle, demo, part))))
        else:
            parts += [(s / SR, model.predict(f)) for s, f in zip(part, features(bundle, demo, part))]
    assert_windows(got, parts, exact=kind == "int8")


def test_a_swap_to_another_front_end_scores_the_tail_and_the_partial_chunk_first(seg, tone_bundle, tone_model, demo):
    bundle, model = seg[0], ProbeModel(seg[0].segment)
    p = Pipeline(bundle, model)
    swap_at = 10 * SR + 3 * SR // 4
    got, _ = feed(p, demo, SR // 4, on_block=lambda end: end == swap_at and p.set_model(tone_bundle, tone_model))
    a = starts_of(swap_at, bundle)  # the old stretch ends at the swap: its tail window aligned to its end
    assert len(a) % SEGMENT_WINDOWS
    want = reference(bundle, model, demo, a)
    assert_windows(got[:len(a)], want, exact=False)
    n3 = tone_bundle.frontend.window_samples
    assert [round(o, 6) for o, _ in got[len(a):]] == [round((swap_at + s) / SR, 6)
                                                       for s in starts_of(len(demo) - swap_at, tone_bundle)]
    assert all(len(s) == len(tone_bundle.labels) for _, s in got[len(a):]) and n3 == 3 * SR


def test_the_hop_of_a_segment_model_is_its_own(seg, win, tmp_path, segment_run):
    bundle, model = seg
    hop, window = bundle.hop_s, bundle.frontend.window_s
    Pipeline(bundle, model, overlap_s=window - hop)  # the bundle's own overlap: the same windows
    Pipeline(*win, overlap_s=0.25)  # a per-window model takes any
    with pytest.raises(PipelineError, match=r"^overlap \(model.overlap_s, --overlap\) 0.25 s: model tiny-segment .* "
                                            r"scores 4 windows per invoke at its own hop of 0.5 s \(overlap 0.5 s\); "
                                            r"leave the overlap unset$"):
        Pipeline(bundle, model, overlap_s=0.25)
    p = Pipeline(*win, overlap_s=0.25)
    with pytest.raises(PipelineError, match="scores 4 windows per invoke"):
        p.set_model(bundle, model)  # a live update to a segment model is refused as well (the old one runs on)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(SR, np.float32), SR)
    key = segment_run.public_key_path
    r = subprocess.run([sys.executable, "-m", "edge", "replay", str(wav), "--bundle", str(segment_run.bundle_path),
                        "--public-key", str(key), "--overlap", "0.75", "--no-db", "--format", "csv"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if "overlap" in ln]
    assert r.returncode != 0 and len(lines) == 1 and "--overlap" in lines[0] and "own hop of 0.5 s" in lines[0], r.stderr
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(f"state_dir: {tmp_path}\nmodel:\n  bundle: {segment_run.bundle_path}\n  public_key: {key}\n"
                   f"  overlap_s: 0.25\n")
    r = subprocess.run([sys.executable, "-m", "edge", "check-config", str(cfg)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode != 0 and "model.overlap_s: overlap (model.overlap_s, --overlap) 0.25 s" in r.stdout + r.stderr
    cfg.write_text(cfg.read_text().replace("  overlap_s: 0.25\n", ""))
    r = subprocess.run([sys.executable, "-m", "edge", "check-config", str(cfg)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "1 s windows, 4 per invoke every 0.5 s (detections up to 1.5 s later)" in r.stdout


# -- live: the watchdog and the clips allow for the delay ----------------------------------------------------
def test_live_the_watchdog_and_the_clips_allow_for_a_segment_models_delay(seg, tmp_path):
    """The daemon's runtime on real audio in 0.5 s blocks (its default), time moving a block per block: a segment
    model's windows come in chunks, later than the daemon's grace for a window model, and it still counts as
    progressing; the clip writer keeps the delay's worth of audio more, and every clip holds all its audio."""
    import wave

    from edge.config import Config
    from edge.outputs.clips import ClipWriter
    from edge.service.health import Health
    from edge.service.runtime import Runtime
    from edge.sources import FileSource

    bundle, model = seg
    cfg = Config.model_validate({"state_dir": str(tmp_path)})
    p = Pipeline(bundle, model, detection=cfg.detection)
    now = [1000.0]
    health = Health(clock=lambda: now[0])
    pad, history = 0.5, 3.0
    clips = ClipWriter(tmp_path / "clips", SR, padding_s=pad, history_s=history, delay_s=lambda: p.delay_s)

    class Reach(DetectionSink):
        """How far back from the newest audio each clip starts when its detection comes."""

        def __init__(self):
            self.end_s, self.back_s = 0.0, []

        def add_audio(self, block):
            self.end_s = block.offset_s + len(block.samples) / SR

        def handle(self, detections):
            self.back_s += [self.end_s - (d.offset_s - pad) for d in detections]

    reach = Reach()
    rt = Runtime(cfg, p, None, health=health, sinks=[reach, clips])
    grace = 4 * max(cfg.audio.block_s, p.hop_s, 0.5)  # the daemon's (edge.service.daemon)
    window_model_rule: list[bool] = []

    def on_block(block):
        now[0] += len(block.samples) / SR  # the next block comes a block later
        window_model_rule.append(now[0] - health.last_window < grace)  # the check without the delay
        assert health.progressing(grace), f"stalled at {block.offset_s} s"

    run = rt.run_source(FileSource(DEMO, SR, block_s=cfg.audio.block_s), on_block=on_block)
    rt.stop()
    assert p.delay_s == (SEGMENT_WINDOWS - 1) * bundle.hop_s == health.window_delay_s
    assert not all(window_model_rule)  # a window model's grace alone would have withheld the pings
    assert clips.capacity == int((history + p.delay_s + 2 * pad) * SR)
    assert max(reach.back_s) > history + 2 * pad  # without the delay's room these clips would lose their start
    x = np.clip(sf.read(str(DEMO), dtype="float32")[0] * 32767.0, -32768, 32767).astype(np.int16)
    assert run.detections and clips.written == len(run.detections)
    for d in run.detections:
        (path,) = (tmp_path / "clips").rglob(f"*{d.id[:8]}.wav")
        with wave.open(str(path)) as w:
            got = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        a, b = max(0, int((d.offset_s - pad) * SR)), min(len(x), int((d.end_offset_s + pad) * SR))
        np.testing.assert_array_equal(got, x[a:b], err_msg=d.label)

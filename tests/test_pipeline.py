"""The pipeline on the real interpreter: streamed frames equal per-window features, tone bursts
are found where they are, segments, tails, overlap and hot model swaps."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from fixtures_replay import SR, TONES, make_tone_bundle, noise, tone_bursts

from edge.contract.bundle import load_bundle
from edge.config import DetectionConfig
from edge.contract.frontend import LogMel
from edge.contract.interpreter import load_model
from edge.detection.pipeline import Pipeline, PipelineError
from edge.contract.signing import load_public_key
from edge.types import AudioBlock

T0 = datetime(2024, 5, 1, 5, 30, tzinfo=timezone.utc)


def feed(pipeline, x, block, start=T0, offset0=0.0, source="synth"):
    pipeline.begin(source, "file-name")
    out, windows = [], []
    pipeline.on_window = lambda off, utc, s: windows.append((off, utc, s.copy()))
    for i in range(0, len(x), block):
        out += pipeline.feed(AudioBlock(x[i : i + block], start + timedelta(seconds=i / SR), offset0 + i / SR))
    out += pipeline.finish()
    return out, windows


def scene():
    """6 s quiet, 9 s of 3 kHz bursts, 6 s quiet, 6 s of 7 kHz bursts (27 s)."""
    return np.concatenate([noise(6), tone_bursts(TONES["Tonus_midus"], 9, seed=3), noise(6, seed=5),
                           tone_bursts(TONES["Tonus_highus"], 6, seed=4)])


@pytest.mark.parametrize("block", [1000, SR, 7 * SR + 13])
def test_streamed_windows_equal_direct_computation(tone_bundle, tone_model, block):
    x = scene()
    p = Pipeline(tone_bundle, tone_model)
    _, windows = feed(p, x, block)
    lm = LogMel(tone_bundle.frontend)
    n = tone_bundle.frontend.window_samples
    hop = int(tone_bundle.hop_s * SR)
    starts = list(range(0, len(x) - n + 1, hop))
    assert [round(w[0], 6) for w in windows] == [s / SR for s in starts]  # 27 s ends on a window: no tail
    for (off, utc, scores), s in zip(windows, starts):
        direct = tone_model.predict(lm.window_features(x[s : s + n]))
        assert np.array_equal(scores, direct)
        assert abs((utc - (T0 + timedelta(seconds=s / SR))).total_seconds()) < 1e-5  # block times rounded to 1 us
    assert p.stats["windows"] == len(starts) and p.stats["samples"] == len(x)


def test_tone_bursts_found_where_they_are(tone_bundle, tone_model):
    dets, _ = feed(Pipeline(tone_bundle, tone_model), scene(), SR // 2)
    got = [(d.label, d.offset_s, d.end_offset_s) for d in dets]
    assert [g[0] for g in got] == ["Tonus_midus", "Tonus_highus"]
    mid, high = dets
    assert 3.0 <= mid.offset_s <= 6.0 and 15.0 <= mid.end_offset_s <= 18.0  # windows touching 6..15 s
    assert 18.0 <= high.offset_s <= 21.0 and high.end_offset_s == 27.0
    assert mid.start_utc == "2024-05-01T05:30:0%.3fZ" % mid.offset_s
    assert mid.n_windows >= 6 and mid.score >= mid.mean_score >= 0.5


def test_overlap_sets_the_hop(tone_bundle, tone_model):
    x = noise(12.0)
    _, windows = feed(Pipeline(tone_bundle, tone_model, overlap_s=0.0), x, SR)
    assert [w[0] for w in windows] == [0.0, 3.0, 6.0, 9.0]
    _, windows = feed(Pipeline(tone_bundle, tone_model, overlap_s=2.0), x, SR)
    assert [round(w[0], 3) for w in windows] == [float(s) for s in range(10)]
    with pytest.raises(PipelineError, match="overlap"):
        Pipeline(tone_bundle, tone_model, overlap_s=3.0)


def test_tail_window_and_short_files(tone_bundle, tone_model):
    _, windows = feed(Pipeline(tone_bundle, tone_model), noise(10.0), SR)
    assert [round(w[0], 3) for w in windows] == [0.0, 1.5, 3.0, 4.5, 6.0, 7.0]  # last one aligned to the end
    p = Pipeline(tone_bundle, tone_model)
    dets, windows = feed(p, tone_bursts(TONES["Tonus_lowus"], 2.0, period_s=0.7), 4000)
    assert len(windows) == 1 and windows[0][0] == 0.0  # zero-padded to one window
    assert [d.label for d in dets] == ["Tonus_lowus"] and dets[0].end_offset_s == 3.0
    _, windows = feed(p, noise(0.5), 4000)
    assert windows == []  # under MIN_SEGMENT_S


def test_discontinuity_restarts_windows_and_events(tone_bundle, tone_model):
    x = tone_bursts(TONES["Tonus_midus"], 12.0)
    p = Pipeline(tone_bundle, tone_model)
    p.begin("hw:1", "clock")
    windows, dets = [], []
    p.on_window = lambda off, utc, s: windows.append(off)
    dets += p.feed(AudioBlock(x[: 5 * SR], T0, 0.0))
    # 2 s lost: the next block starts 7 s in, flagged
    dets += p.feed(AudioBlock(x[5 * SR :], T0 + timedelta(seconds=7), 7.0, discontinuity=True))
    dets += p.finish()
    assert [round(w, 3) for w in windows] == [0.0, 1.5, 2.0, 7.0, 8.5, 10.0, 11.0]
    assert [(d.offset_s, d.end_offset_s) for d in dets] == [(0.0, 5.0), (7.0, 14.0)]
    assert dets[1].start_utc == "2024-05-01T05:30:07.000Z"
    assert dets[0].id != dets[1].id


def test_unknown_species_in_settings_refused(tone_bundle, tone_model):
    with pytest.raises(PipelineError, match="Tonus_nonexistus"):
        Pipeline(tone_bundle, tone_model, detection=DetectionConfig(include=["Tonus_nonexistus"]))


def test_hot_swap_between_windows_from_another_thread(tmp_path, tone_bundle, tone_model):
    path2 = make_tone_bundle(tmp_path, version="2.0.0", hop_s=1.0)
    b2 = load_bundle(path2, load_public_key(tmp_path / "signing.pub"))
    m2 = load_model(b2)
    x = tone_bursts(TONES["Tonus_highus"], 30.0)
    p = Pipeline(tone_bundle, tone_model)
    p.begin("synth", "file-name")
    windows, dets = [], []
    p.on_window = lambda off, utc, s: windows.append((round(off, 3), p.bundle.version))
    for i in range(0, len(x), SR // 2):
        if i == 12 * SR:
            t = threading.Thread(target=p.set_model, args=(b2, m2))
            t.start()
            t.join()
        dets += p.feed(AudioBlock(x[i : i + SR // 2], T0 + timedelta(seconds=i / SR), i / SR))
    dets += p.finish()
    before = [w for w in windows if w[1] == "1.0.0"]
    after = [w for w in windows if w[1] == "2.0.0"]
    assert before and after and windows == before + after
    # no gap: the new model's first window follows the old model's last by the new hop
    assert after[0][0] == pytest.approx(before[-1][0] + 1.0)
    assert all(b[0] - a[0] == pytest.approx(1.0) for a, b in zip(after, after[1:]))
    assert [d.model_version for d in dets] == ["1.0.0", "2.0.0"]
    assert dets[0].end_offset_s == pytest.approx(before[-1][0] + 3.0)
    assert dets[1].offset_s == after[0][0] and dets[1].end_offset_s == 30.0


def test_swap_to_another_sample_rate_refused(tone_bundle, tone_model):
    import dataclasses

    p = Pipeline(tone_bundle, tone_model)

    class Other:
        frontend = dataclasses.replace(tone_bundle.frontend, sample_rate=48000)

    with pytest.raises(PipelineError, match="48000 Hz"):
        p.set_model(Other(), tone_model)

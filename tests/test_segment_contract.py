"""Segment inference's contract (edge/contract/segment.py): geometry, assembly from per-window features,
pooling weights, chunked scoring, and the manifest block."""
from __future__ import annotations

import numpy as np
import pytest

from edge.contract.frontend import FrontendParams
from edge.contract.segment import SegmentError, SegmentSpec, score_windows

FE = FrontendParams(hop_length=320, n_mels=64)  # the default model's front-end: 297 frames of 10 ms


def spec(windows=16, hop=150):
    return SegmentSpec(windows=windows, hop_frames=hop, window_frames=FE.n_frames, n_mels=FE.n_mels)


def test_default_geometry():
    s = spec()
    assert FE.n_frames == 297
    assert s.span_frames == 15 * 150 + 297 == 2547
    assert s.input_frames == 297 + 32 * 71 == 2569 and s.columns == 81
    assert s.input_shape == (64, 2569, 1)


def test_pooling_gives_a_window_on_the_column_grid_exactly_its_own_columns():
    p = spec().pooling()
    assert p.shape == (16, 81)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert np.allclose(p[0, :10], 0.1) and not p[0, 10:].any()  # window 0 starts at frame 0: columns 0..9
    # window 1 starts at frame 150, its columns own [142, 462): 8 frames of column 4 ([120, 152)) ... 14 of column 14
    nz = np.flatnonzero(p[1])
    assert nz[0] == 4 and nz[-1] == 14 and p[1, 4] == pytest.approx(10 / 320) and p[1, 14] == pytest.approx(22 / 320)
    assert (p[:, -1] > 0).any() and np.all(np.diff([np.flatnonzero(r)[0] for r in p]) >= 4)


def _windows_of(base, s, n):
    return np.stack([base[:, k * s.hop_frames: k * s.hop_frames + s.window_frames] for k in range(n)])


def test_assembly_takes_each_frame_from_the_window_with_the_nearest_centre():
    s = spec()
    rng = np.random.default_rng(0)
    base = rng.standard_normal((64, s.span_frames)).astype(np.float32)
    feats = _windows_of(base, s, 16) + 1000 * np.arange(16, dtype=np.float32)[:, None, None]  # tag each window
    x = s.assemble(feats[..., None])
    assert x.shape == (64, 2569, 1) and x.dtype == np.float32
    owner = np.round((x[0, : s.span_frames, 0] - base[0]) / 1000).astype(int)
    centres = np.arange(16) * 150 + 148
    t = np.arange(s.span_frames)
    d = np.abs(t[:, None] - centres[None])
    assert np.array_equal(owner, d.argmin(axis=1))  # nearest centre, ties to the earlier window
    assert np.allclose(x[:, : s.span_frames, 0] - 1000 * owner, base, atol=1e-3)
    assert not x[:, s.span_frames:].any()  # past the last window: zeros


def test_fewer_windows_leave_zeros_after_the_last_and_out_is_reused():
    s = spec()
    base = np.ones((64, s.span_frames), np.float32)
    out = np.full(s.input_shape, 7.0, np.float32)
    x = s.assemble(_windows_of(base, s, 3), out=out)
    assert x is out
    assert np.all(x[:, : 2 * 150 + 297] == 1.0) and not x[:, 2 * 150 + 297:].any()
    with pytest.raises(ValueError, match="1 to 16 windows"):
        s.assemble(np.zeros((17, 64, 297), np.float32))
    with pytest.raises(ValueError, match="1 to 16 windows"):
        s.assemble(np.zeros((2, 32, 297), np.float32))


def test_score_windows_runs_one_invoke_per_segment_and_keeps_the_real_windows():
    s = spec(windows=4)
    calls = []

    def predict(x):
        calls.append(x.copy())
        return np.arange(4)[:, None] + 10.0 * len(calls) + np.zeros((4, 3))

    feats = np.ones((10, 64, 297, 1), np.float32)
    scores = score_windows(s, predict, feats)
    assert len(calls) == 3 and scores.shape == (10, 3)
    assert list(scores[:, 0]) == [10, 11, 12, 13, 20, 21, 22, 23, 30, 31]
    assert calls[2][:, : 150 + 297].all() and not calls[2][:, 150 + 297:].any()  # the last segment: 2 windows


def test_manifest_block():
    m = {"hop_s": 1.5}
    assert SegmentSpec.from_manifest(m, FE) is None
    assert SegmentSpec.from_manifest({**m, "inference": {"kind": "window"}}, FE) is None
    got = SegmentSpec.from_manifest({**m, "inference": spec().to_manifest()}, FE)
    assert got == spec() and spec().to_manifest() == {"kind": "segment", "windows": 16}


@pytest.mark.parametrize("block,hop,reason", [
    ({"kind": "banana"}, 1.5, r"inference.kind 'banana' is not supported"),
    ("segment", 1.5, "inference is str"),
    ({"kind": "segment", "windows": 0}, 1.5, "inference.windows 0 is not from 1 to 64"),
    ({"kind": "segment", "windows": 65}, 1.5, "inference.windows 65"),
    ({"kind": "segment", "windows": 2.0}, 1.5, "inference.windows 2.0 is not an integer"),
    ({"kind": "segment", "windows": True}, 1.5, "is not an integer"),
    ({"kind": "segment", "windows": 16, "pooling": "max"}, 1.5, r"unknown fields \['pooling'\]"),
    ({"kind": "segment", "windows": 16}, 1.234, "whole number of frames: 1.234 s is 123.400 frames"),
    ({"kind": "segment", "windows": 16}, 2.99, "hop of 1 to 297 frames"),  # 299 frames: gaps between windows
])
def test_manifest_blocks_this_edge_cannot_honour(block, hop, reason):
    with pytest.raises(SegmentError, match=reason):
        SegmentSpec.from_manifest({"hop_s": hop, "inference": block}, FE)

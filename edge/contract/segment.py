"""Segment inference: one backbone pass over several overlapping windows (the bundle's ``inference`` block).

A per-window model sees every instant of audio twice at a 1.5 s hop over 3 s
windows. A *segment* model is the same network run once over ``windows``
consecutive windows: its input is one stretch of normalised features
(``assemble``), its backbone's feature-map columns are pooled per window with
fixed overlap weights (``pooling``, inside the model) and its head scores
every window: output ``(1, windows, classes)``. It costs about half the
per-window model per second of audio (docs/benchmarks.md).

Features stay per window, as the front-end defines them: each frame of the
segment input is taken from the normalised features of the window whose
centre is nearest (ties to the earlier one), so the per-window statistics
(median, std, top_db) are unchanged and a window's score depends only on
its segment's windows. Frames past the last window are zeros; a segment
with fewer windows (the end of a file or a gap) is scored the same way and
only its real windows' rows are used.

Geometry (MobileNetV2, output stride 32, 'same' padding): column ``j`` of
the feature map owns input frames ``[32 j - 8, 32 j + 24)``; a window of
``window_frames`` frames alone gives ``ceil(window_frames / 32)`` columns,
owning ``[-8, 32 ceil(window_frames / 32) - 8)`` from its start, and its
row of ``pooling()`` weights the segment's columns by their overlap with
that span (a window starting on a multiple of 32 frames gets exactly its
own columns, each 1/10 for 297 frames).

The manifest block is ``{"kind": "segment", "windows": W}``; absent (or
``kind: window``) means one window per invoke. The hop is the bundle's
``hop_s`` and must be a whole number of frames no longer than a window.

Imports from edge: none (numpy only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

COLUMN_STRIDE = 32  # the backbone's output stride in input frames
COLUMN_OFFSET = 8  # column j owns input frames [32 j - 8, 32 j + 24)
KINDS = ("window", "segment")
MAX_WINDOWS = 64


class SegmentError(ValueError):
    """An ``inference`` block this edge cannot honour; the message names the field."""


@dataclass(frozen=True)
class SegmentSpec:
    windows: int  # windows scored per invoke
    hop_frames: int  # frames between window starts
    window_frames: int  # frames per window (the front-end's n_frames)
    n_mels: int

    def __post_init__(self) -> None:
        if not 1 <= self.windows <= MAX_WINDOWS:
            raise SegmentError(f"inference.windows {self.windows} is not from 1 to {MAX_WINDOWS}")
        if not 1 <= self.hop_frames <= self.window_frames:
            raise SegmentError(f"segment inference needs a hop of 1 to {self.window_frames} frames "
                               f"(windows that touch or overlap), got {self.hop_frames}")

    @classmethod
    def from_manifest(cls, manifest: dict, frontend) -> "SegmentSpec | None":
        """The spec a manifest asks for (None: one window per invoke); SegmentError if it cannot be honoured."""
        block = manifest.get("inference")
        if block is None:
            return None
        if not isinstance(block, dict):
            raise SegmentError(f"inference is {type(block).__name__}, expected a mapping with a kind")
        kind = block.get("kind")
        if kind not in KINDS:
            raise SegmentError(f"inference.kind {kind!r} is not supported (this edge knows {KINDS})")
        if kind == "window":
            return None
        unknown = sorted(set(block) - {"kind", "windows"})
        if unknown:
            raise SegmentError(f"inference has unknown fields {unknown}")
        w = block.get("windows")
        if not isinstance(w, int) or isinstance(w, bool):
            raise SegmentError(f"inference.windows {w!r} is not an integer")
        return cls(windows=w, hop_frames=hop_frames_of(float(manifest["hop_s"]), frontend),
                   window_frames=frontend.n_frames, n_mels=frontend.n_mels)

    def to_manifest(self) -> dict[str, Any]:
        return {"kind": "segment", "windows": self.windows}

    @property
    def span_frames(self) -> int:
        """Frames the windows cover, first start to last end."""
        return (self.windows - 1) * self.hop_frames + self.window_frames

    @property
    def input_frames(self) -> int:
        """The model's input length: the span rounded up so the last window's columns are whole."""
        extra = self.span_frames - self.window_frames
        return self.window_frames + COLUMN_STRIDE * math.ceil(extra / COLUMN_STRIDE)

    @property
    def columns(self) -> int:
        return math.ceil(self.input_frames / COLUMN_STRIDE)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.n_mels, self.input_frames, 1)

    def owners(self, n_windows: int | None = None) -> list[tuple[int, int]]:
        """Per window, the [lo, hi) segment frames taken from its features (nearest centre, ties earlier)."""
        m = self.windows if n_windows is None else n_windows
        first_own = (self.window_frames - self.hop_frames + 1) // 2  # where window k starts owning, from its start
        out = []
        for k in range(m):
            lo = 0 if k == 0 else k * self.hop_frames + first_own
            hi = k * self.hop_frames + (self.window_frames if k == m - 1 else self.hop_frames + first_own)
            out.append((lo, hi))
        return out

    def assemble(self, features: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The segment input from 1 to ``windows`` consecutive windows' features, each (n_mels, window_frames, 1)
        or (n_mels, window_frames): (n_mels, input_frames, 1) float32, zeros past the last window."""
        feats = np.asarray(features, dtype=np.float32)
        if feats.ndim == 4:
            feats = feats[..., 0]
        m = len(feats)
        if feats.ndim != 3 or feats.shape[1:] != (self.n_mels, self.window_frames) or not 1 <= m <= self.windows:
            raise ValueError(f"expected 1 to {self.windows} windows of ({self.n_mels}, {self.window_frames}) "
                             f"features, got {features.shape}")
        if out is None:
            out = np.zeros(self.input_shape, np.float32)
        else:
            out[...] = 0.0
        flat = out[..., 0]
        for k, (lo, hi) in enumerate(self.owners(m)):
            s = k * self.hop_frames
            flat[:, lo:hi] = feats[k, :, lo - s:hi - s]
        return out

    def pooling(self) -> np.ndarray:
        """(windows, columns) weights: row k averages the columns window k alone would have, by overlap."""
        own = COLUMN_STRIDE * math.ceil(self.window_frames / COLUMN_STRIDE)  # frames a lone window's columns own
        col_lo = COLUMN_STRIDE * np.arange(self.columns) - COLUMN_OFFSET
        col_hi = col_lo + COLUMN_STRIDE
        w = np.zeros((self.windows, self.columns), np.float64)
        for k in range(self.windows):
            lo = k * self.hop_frames - COLUMN_OFFSET
            w[k] = np.clip(np.minimum(col_hi, lo + own) - np.maximum(col_lo, lo), 0, None)
        return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def hop_frames_of(hop_s: float, frontend) -> int:
    """The bundle's hop in whole frames; SegmentError if it is not one."""
    frames = hop_s * frontend.sample_rate / frontend.hop_length
    if abs(frames - round(frames)) > 1e-6 or round(frames) < 1:
        raise SegmentError(f"segment inference needs hop_s to be a whole number of frames: {hop_s} s is "
                           f"{frames:.3f} frames of {frontend.hop_length} samples at {frontend.sample_rate} Hz")
    return int(round(frames))


def score_windows(spec: SegmentSpec, predict: Callable[[np.ndarray], np.ndarray], features: np.ndarray) -> np.ndarray:
    """Scores (n, classes) for n consecutive windows of one stretch of audio, ``spec.windows`` per invoke from
    the first: what the edge computes for the same windows. ``predict(segment_input) -> (windows, classes)``."""
    rows = []
    scratch = np.zeros(spec.input_shape, np.float32)
    for i in range(0, len(features), spec.windows):
        chunk = features[i:i + spec.windows]
        rows.append(np.asarray(predict(spec.assemble(chunk, out=scratch)))[: len(chunk)])
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

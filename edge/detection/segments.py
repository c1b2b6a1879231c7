"""Segment inference in the pipeline: windows collected and scored ``windows`` per invoke.

A segment bundle (``edge.contract.segment``) scores W consecutive windows
with one invoke. The pipeline makes its windows exactly as for a per-window
model (same starts, tail window, short-segment padding and signal guard);
``SegmentBatch`` places each window's normalised features into the model's
one input (a reused buffer) as it comes, and keeps its offset and time,
until W are there (or the pipeline's segment ends, or the model is
swapped); then it runs the model once and hands back the real windows' rows
in order - what ``edge.contract.segment.score_windows`` computes for the same
windows (``SegmentSpec.assemble``'s input, built window by window: each
window is written over its whole span, and the next one overwrites the
frames nearer its own centre).

A window the signal guard refuses keeps its slot, so the chunks are always
W consecutive windows of the stream: its features are zeros (what the
contract puts past the last window: the model's neutral input, where the
normalised silence or DC would be anything) and its row is replaced by
the no-signal score. A segment whose windows are all refused is not
invoked at all.

Latency: a window is scored with the last window of its chunk, up to
``(W - 1) x hop`` after a per-window model would have scored it
(``delay_s``).
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Callable

import numpy as np

from edge.contract.segment import SegmentSpec


class SegmentBatch:
    """The windows of one chunk of a segment model, waiting for its invoke."""

    def __init__(self, spec: SegmentSpec):
        self.spec = spec
        self.input = np.zeros(spec.input_shape, np.float32)
        self._flat = self.input[..., 0]
        self._own_from = [lo for lo, _ in spec.owners()]  # where window k's frames begin (window k-1's end)
        self.slots: list[tuple[float, datetime, bool]] = []  # (offset_s, start_utc, has signal)

    @property
    def full(self) -> bool:
        return len(self.slots) >= self.spec.windows

    def clear(self) -> None:
        """Drop the windows collected (a new source begins)."""
        self.slots.clear()

    def delay_s(self, hop_s: float) -> float:
        """How much later than a per-window model a window can be scored (its chunk's other windows)."""
        return (self.spec.windows - 1) * hop_s

    def add(self, features: np.ndarray | None, offset_s: float, start_utc: datetime) -> None:
        """The next window: its normalised features (None: refused by the signal guard), offset and time."""
        k = len(self.slots)
        sp = self.spec
        lo, start, end = self._own_from[k], k * sp.hop_frames, k * sp.hop_frames + sp.window_frames
        if features is None:
            self._flat[:, lo:end] = 0.0
        else:
            self._flat[:, lo:end] = features.reshape(sp.n_mels, sp.window_frames)[:, lo - start:]
        self.slots.append((offset_s, start_utc, features is not None))

    def assembled(self, m: int) -> np.ndarray:
        """The model input of the first ``m`` windows collected: ``spec.assemble`` of their features (zeros
        after the last one's end)."""
        self._flat[:, (m - 1) * self.spec.hop_frames + self.spec.window_frames:] = 0.0
        return self.input

    def score(self, predict: Callable[[np.ndarray], np.ndarray], n_labels: int, no_signal: float,
              stats: dict) -> list[tuple[float, datetime, np.ndarray]]:
        """(offset, time, scores) of every window collected, in order, after one invoke; the batch is empty
        after. ``stats``: the assembly's time goes to ``frontend_s``, the model's to ``invoke_s``."""
        slots, self.slots = self.slots, []
        m = len(slots)
        if not m:
            return []
        signal = np.array([ok for _, _, ok in slots], bool)
        rows = np.full((m, n_labels), no_signal, np.float32)
        if signal.any():
            t0 = time.perf_counter()
            x = self.assembled(m)
            t1 = time.perf_counter()
            got = np.asarray(predict(x), dtype=np.float32)[:m]
            stats["frontend_s"] += t1 - t0
            stats["invoke_s"] += time.perf_counter() - t1
            rows[signal] = got[signal]
        return [(off, utc, rows[k]) for k, (off, utc, _) in enumerate(slots)]

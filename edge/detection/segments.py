"""Segment inference in the pipeline: windows collected and scored ``windows`` per invoke.

A segment bundle (``edge.contract.segment``) scores W consecutive windows
with one invoke. The pipeline makes its windows exactly as for a per-window
model (same starts, tail window, short-segment padding and signal guard);
``SegmentBatch`` holds each window's normalised features, offset and time
until W are there (or the pipeline's segment ends, or the model is
swapped), then assembles them into the model's one input (a reused buffer),
runs the model once and hands back the real windows' rows in order - what
``edge.contract.segment.score_windows`` computes for the same windows.

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
        self.features = np.zeros((spec.windows, spec.n_mels, spec.window_frames), np.float32)
        self.input = np.zeros(spec.input_shape, np.float32)
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
        if features is None:
            self.features[k] = 0.0
        else:
            self.features[k] = features.reshape(self.features.shape[1:])
        self.slots.append((offset_s, start_utc, features is not None))

    def score(self, predict: Callable[[np.ndarray], np.ndarray], n_labels: int, no_signal: float,
              stats: dict) -> list[tuple[float, datetime, np.ndarray]]:
        """(offset, time, scores) of every window collected, in order, after one invoke; the batch is empty
        after. ``stats``: the assembly's time goes to ``frontend_s``, the model's to ``invoke_s``."""
        slots, self.slots = self.slots, []
        m = len(slots)
        signal = np.array([ok for _, _, ok in slots], bool)
        if not m:
            return []
        rows = np.full((m, n_labels), no_signal, np.float32)
        if signal.any():
            t0 = time.perf_counter()
            x = self.spec.assemble(self.features[:m], out=self.input)
            t1 = time.perf_counter()
            got = np.asarray(predict(x), dtype=np.float32)[:m]
            stats["frontend_s"] += t1 - t0
            stats["invoke_s"] += time.perf_counter() - t1
            rows[signal] = got[signal]
        return [(off, utc, rows[k]) for k, (off, utc, _) in enumerate(slots)]

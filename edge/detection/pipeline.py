"""Blocks of samples -> windows -> int8 model scores -> detection events.

Pure logic, no I/O: the runtime (``edge.service.runtime``) owns the source, the
sink and the threads. Samples are framed once: log-mel frames are computed
as the samples arrive (``LogMel.frames`` on the new samples plus the few
left over from the last block) and every window - overlapping or not - is
a slice of that frame sequence, so overlap costs only the per-window
normalisation and the model call.

A segment is a stretch of contiguous samples. It ends at the end of a file,
at a block flagged ``discontinuity`` (samples were lost), or at a model
swap whose front-end differs. At its end the part after the last window is
covered by one more window aligned to the segment's end, and a segment
shorter than a window (but at least ``MIN_SEGMENT_S``) is zero-padded to one.

``set_model(bundle, model)`` may be called from any thread; the swap takes
effect before the next block (so between two windows, and no sample is
skipped); open events of the old model are closed first. With the same
front-end the frames already computed are kept and the next window follows
the last one by the new model's hop; with another front-end the segment
restarts at that block.

A segment bundle (``bundle.segment``) scores ``W`` windows per invoke: the
windows are made the same way, collected and scored ``W`` at a time
(``edge.detection.segments``); the windows collected are scored by the
model that made them at the end of a segment and before any swap.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

import numpy as np

from edge.contract.frontend import LogMel
from edge.detection.guard import SignalGuard
from edge.detection.postprocess import ModelInfo, PostProcessor, SourceInfo, unknown_labels
from edge.detection.segments import SegmentBatch
from edge.contract.record import Detection
from edge.types import AudioBlock

log = logging.getLogger(__name__)

MIN_SEGMENT_S = 1.0
FEED_FRAMES = 1024  # frames computed per LogMel.frames call (an 8 s block at a 10 ms hop: one call)
NO_SIGNAL_SCORE = -1.0  # a window the signal guard refuses: below every threshold (thresholds are in 0..1)


class PipelineError(ValueError):
    """Settings the pipeline cannot use with this model."""


def window_hop_frames(bundle, overlap_s: float | None) -> int:
    """Hop between windows in frames, from the overlap (None: the bundle's hop)."""
    fe = bundle.frontend
    hop_s = bundle.hop_s if overlap_s is None else fe.window_s - float(overlap_s)
    if overlap_s is not None and not 0 <= overlap_s < fe.window_s:
        raise PipelineError(f"overlap (model.overlap_s, --overlap) {overlap_s} s does not fit the model's "
                            f"{fe.window_s} s window: allowed 0 <= overlap < {fe.window_s}")
    frames = max(1, int(round(hop_s * fe.sample_rate / fe.hop_length)))
    spec = bundle.segment
    if spec is not None and frames != spec.hop_frames:
        raise PipelineError(f"overlap (model.overlap_s, --overlap) {overlap_s} s: model {bundle.name} "
                            f"{bundle.version} scores {spec.windows} windows per invoke at its own hop of "
                            f"{bundle.hop_s:g} s (overlap {fe.window_s - bundle.hop_s:g} s); leave the overlap unset")
    return frames


class _NoEvents(PostProcessor):
    """Post-processing that makes no events (``Pipeline.windows_only``)."""

    def __init__(self, post: PostProcessor):
        self.__dict__.update(post.__dict__)

    def add(self, index: int, offset_s: float, start_utc: datetime, scores: np.ndarray) -> list[Detection]:
        return []

    def close(self) -> list[Detection]:
        return []


class Pipeline:
    """Feeds one source's blocks through the model; ``begin`` before each source."""

    _head: list[np.ndarray]
    _next_start: int
    _last_start: int

    def __init__(self, bundle, model, *, detection=None, overlap_s: float | None = None,
                 device_id: str = "recorder", clock=None, strict_labels: bool = True):
        self.detection = detection
        self.overlap_s = overlap_s
        self.device_id = device_id
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: tuple | None = None
        self.stats = {"frontend_s": 0.0, "invoke_s": 0.0, "post_s": 0.0, "windows": 0, "samples": 0}
        #: optional callable(offset_s, start_utc, scores) called for every window (clips, debugging, tests)
        self.on_window = None
        #: score windows (``on_window``) without making events: a parallel replay's workers, whose parent
        #: makes the events from every piece's windows in order (set before ``begin``)
        self.windows_only = False
        if detection is not None and strict_labels:
            unknown = unknown_labels([lab.label for lab in bundle.labels], detection)
            if unknown:
                raise PipelineError(f"detection settings (include, exclude, thresholds) name species the model "
                                    f"{bundle.name} {bundle.version} does not know: {unknown[:10]}")
        self.guard = SignalGuard(bundle.frontend.hop_length)  # silence, constant or non-finite: no detection
        self._install(bundle, model)
        self._source = SourceInfo(device_id, "", "replay-time")
        self._post = self._new_post()
        self._index = 0  # window count given to post-processing
        self._reset_segment()

    # -- model -------------------------------------------------------------
    def _install(self, bundle, model) -> None:
        self.bundle, self.model = bundle, model
        self.params = bundle.frontend
        self.logmel = LogMel(self.params)
        self.sample_rate = self.params.sample_rate
        self.hop_frames = window_hop_frames(bundle, self.overlap_s)
        self.n_frames = self.params.n_frames
        self.hop_s = self.hop_frames * self.params.hop_length / self.sample_rate
        self.model_info = ModelInfo.from_bundle(bundle)
        spec = bundle.segment
        self._batch = SegmentBatch(spec) if spec is not None else None

    def set_model(self, bundle, model) -> None:
        """Swap the model between two windows (thread-safe). Same sample rate required."""
        if bundle.frontend.sample_rate != self.sample_rate:
            raise PipelineError(
                f"new model wants {bundle.frontend.sample_rate} Hz, the pipeline runs at {self.sample_rate} Hz: "
                "reopen the source"
            )
        window_hop_frames(bundle, self.overlap_s)  # validates the overlap for the new window
        with self._lock:
            self._pending = (bundle, model)

    def _apply_pending(self) -> list[Detection]:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return []
        same_frontend = pending[0].frontend == self.params
        out: list[Detection] = []
        if not same_frontend and self._seg_samples:
            out += self._end_segment()  # the old model covers the old segment's tail
        out += self._flush()  # the old model scores the windows it collected
        out += self._post.close()
        old = self.bundle.version
        self._install(*pending)
        if self.detection is not None:
            unknown = unknown_labels(self.model_info.labels, self.detection)
            if unknown:
                log.warning("detection settings name species model %s does not know: %s", self.bundle.version, unknown)
        if same_frontend:
            if self._last_start >= 0:  # keep the frames; the new hop counts from the last window
                self._next_start = self._last_start + self.hop_frames
        else:
            self._reset_segment()
        self._post = self._new_post()
        log.info("model swapped: %s -> %s (front-end %s)", old, self.bundle.version,
                 "kept" if same_frontend else "changed, segment restarted")
        return out

    def _new_post(self) -> PostProcessor:
        post = PostProcessor(self.model_info, self._source, self.detection, self.clock)
        return _NoEvents(post) if self.windows_only else post

    # -- sources -----------------------------------------------------------
    def begin(self, source_name: str, time_source: str) -> None:
        """Start a new source: clears all state (call ``finish`` on the previous one first)."""
        if self._pending is not None:
            self._apply_pending()
        self._source = SourceInfo(self.device_id, source_name, time_source)
        self._post = self._new_post()
        if self._batch is not None:
            self._batch.clear()
        self._reset_segment()

    def _reset_segment(self) -> None:
        cap = self.n_frames + self.hop_frames + FEED_FRAMES + 1
        self._frames = np.empty((cap, self.params.n_mels), dtype=np.float32)
        self._nbuf = 0  # frames held in self._frames
        self._frame0 = 0  # segment frame index of self._frames[0]
        self._residual = np.zeros(0, dtype=np.float32)  # samples not yet framed
        self._seg_samples = 0
        self._head = []  # the first samples of a short segment (for zero-padding)
        self._next_start = 0  # segment frame index where the next window starts
        self._last_start = -1  # segment frame index of the last window's start
        self._anchors: list[tuple[int, datetime, float]] = []
        self.guard.reset()

    def feed(self, block: AudioBlock) -> list[Detection]:
        out: list[Detection] = []
        if self._pending is not None:  # swaps happen between blocks, so between two windows
            out += self._apply_pending()
        if block.discontinuity and self._seg_samples:
            out += self._end_segment()
        x = self.guard.clean(np.asarray(block.samples, dtype=np.float32))
        if not len(x):
            return out
        self._anchors.append((self._seg_samples, block.start_utc, block.offset_s))
        if self._seg_samples < self.params.window_samples:
            self._head.append(x[: self.params.window_samples - self._seg_samples].copy())  # not a view: it
            # would keep the whole block (or the resampler's 5 s output) alive for the segment
        self._seg_samples += len(x)
        self.stats["samples"] += len(x)
        hop = self.params.hop_length
        t0 = time.perf_counter()
        buf = np.concatenate([self._residual, x]) if len(self._residual) else x
        total = self.logmel.n_frames_for(len(buf))
        done = 0
        while done < total:  # frames straight into the frame buffer, FEED_FRAMES at a time, windows as they fill
            m = min(FEED_FRAMES, total - done)
            seg = buf[done * hop : (done + m - 1) * hop + self.params.n_fft]
            self.logmel.frames(seg, out=self._reserve(m))
            self._nbuf += m
            done += m
            t1 = time.perf_counter()
            self.stats["frontend_s"] += t1 - t0
            out += self._run_windows()
            t0 = time.perf_counter()
        self._residual = buf[total * hop :].copy()
        self.stats["frontend_s"] += time.perf_counter() - t0
        return out

    def finish(self) -> list[Detection]:
        """End of the source: the tail window, then every open event."""
        return self._end_segment()

    # -- internals ---------------------------------------------------------
    def _reserve(self, n: int) -> np.ndarray:
        """Room for ``n`` more frames at the end of the frame buffer (a view to write them into)."""
        if self._nbuf + n > len(self._frames):
            # drop frames no window can use any more (the tail window may start after the last one)
            keep_from = max(0, min(self._next_start, self._last_start + 1) - self._frame0)
            keep_from = min(keep_from, self._nbuf)
            kept = self._nbuf - keep_from
            self._frames[:kept] = self._frames[keep_from : self._nbuf]
            self._frame0 += keep_from
            self._nbuf = kept
            self.guard.forget_before(self._frame0 * self.params.hop_length)
            if self._nbuf + n > len(self._frames):
                grown = np.empty((self._nbuf + n + self.n_frames, self._frames.shape[1]), dtype=np.float32)
                grown[: self._nbuf] = self._frames[: self._nbuf]
                self._frames = grown
        return self._frames[self._nbuf : self._nbuf + n]

    def _run_windows(self) -> list[Detection]:
        out: list[Detection] = []
        end = self._frame0 + self._nbuf
        while True:
            start = self._next_start
            if start + self.n_frames > end:
                return out
            i = start - self._frame0
            out += self._score(self._frames[i : i + self.n_frames], start * self.params.hop_length)
            self._last_start = start
            self._next_start = start + self.hop_frames
            if self._head:  # only a segment without a window pads its head (_end_segment)
                self._head = []

    def _score(self, window_frames: np.ndarray | None, start_sample: int, features: np.ndarray | None = None) -> list[Detection]:
        t0 = time.perf_counter()
        n = self.params.window_samples if features is None else min(self._seg_samples, self.params.window_samples)
        signal = self.guard.has_signal(start_sample, n)  # refused: the model never sees it
        if signal and features is None:
            assert window_frames is not None  # a window of frames, or the padded segment's features
            features = self.logmel.features(window_frames)
        t1 = time.perf_counter()
        if self._batch is not None:  # a segment model: scored with its chunk's windows (a refused one keeps its slot)
            self.stats["frontend_s"] += t1 - t0
            self._batch.add(features if signal else None, *self._when(start_sample))
            return self._flush() if self._batch.full else []
        if signal:
            scores = self.model.predict(features)
        else:
            scores = np.full(len(self.model_info.labels), NO_SIGNAL_SCORE, np.float32)
        return self._emit(*self._when(start_sample), scores, t0, t1, time.perf_counter())

    def _flush(self) -> list[Detection]:
        """The windows a segment model collected: scored with one invoke, post-processed in order."""
        if self._batch is None or not self._batch.slots:
            return []
        out: list[Detection] = []
        n = len(self.model_info.labels)
        for offset, utc, scores in self._batch.score(self.model.predict, n, NO_SIGNAL_SCORE, self.stats):
            t = time.perf_counter()
            out += self._emit(offset, utc, scores, t, t, t)
        return out

    @property
    def delay_s(self) -> float:
        """How much later than a per-window model a window may be scored (segment models; 0 otherwise)."""
        return self._batch.delay_s(self.hop_s) if self._batch is not None else 0.0

    def _emit(self, offset: float, utc: datetime, scores: np.ndarray, t0: float, t1: float, t2: float) -> list[Detection]:
        """One window's scores to ``on_window`` and post-processing (t0..t2: its front-end and model times)."""
        if self.on_window is not None:
            self.on_window(offset, utc, scores)
        dets = self._post.add(self._index, offset, utc, scores)
        self._index += 1
        t3 = time.perf_counter()
        self.stats["frontend_s"] += t1 - t0
        self.stats["invoke_s"] += t2 - t1
        self.stats["post_s"] += t3 - t2
        self.stats["windows"] += 1
        return dets

    def _when(self, start_sample: int) -> tuple[float, datetime]:
        a = self._anchors
        j = len(a) - 1
        while j > 0 and a[j][0] > start_sample:
            j -= 1
        if j > 0:
            del a[:j]  # later windows start no earlier
        seg0, utc, off = a[0]
        d = (start_sample - seg0) / self.sample_rate
        return off + d, utc + timedelta(seconds=d)

    def _end_segment(self) -> list[Detection]:
        out: list[Detection] = []
        end = self._frame0 + self._nbuf
        if self._last_start >= 0 and end > self._last_start + self.n_frames:
            # the tail after the last window: one window aligned to the end
            start = end - self.n_frames
            i = start - self._frame0
            if i >= 0:
                out += self._score(self._frames[i : i + self.n_frames], start * self.params.hop_length)
        elif self._last_start < 0 and self._seg_samples >= MIN_SEGMENT_S * self.sample_rate:
            head = np.concatenate(self._head)[: self.params.window_samples]
            padded = np.zeros(self.params.window_samples, dtype=np.float32)
            padded[: len(head)] = head
            t0 = time.perf_counter()
            feats = self.logmel.window_features(padded)
            self.stats["frontend_s"] += time.perf_counter() - t0
            out += self._score(None, 0, features=feats)
        elif self._seg_samples:
            log.debug("segment of %.2f s too short for a window", self._seg_samples / self.sample_rate)
        out += self._flush()  # a chunk is never scored across a gap
        # events end with their segment: windows either side of a gap are not consecutive
        out += self._post.close()
        self._reset_segment()
        return out

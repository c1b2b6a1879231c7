"""Window scores -> detection events: thresholds, species lists, merging.

Pure logic on arrays, no I/O. Per window, a species is *hit* when its score
reaches its threshold. Thresholds come, most specific first, from the
config's per-species ``thresholds``, its ``default_threshold``, the bundle's
tuned per-class thresholds, else 0.5. ``include`` (when not empty) keeps only
the species listed; ``exclude`` drops species.

Hits of one species in consecutive windows - allowing up to
``merge_gap_windows`` quiet windows between them - form one event, from the
start of its first hit window to the end of its last, with the maximum and
mean score over its hit windows. An event is reported when it has at least
``min_windows`` hit windows (with no merge gap: that many consecutive
windows): the config's value, else the bundle's operating point, else 1. The
event is emitted when it ends (its species falls quiet, or the segment
closes), the same way in live capture and replay; an event that ends
unconfirmed - one lone window, also the last window of a file or of a run
that is stopped - is dropped by design.

Event ids are stable: a UUID5 of (device, source, label, start, model
sha256), where the start is the offset in the source for files and the UTC
start time for live capture, so replaying the same file with the same model
and settings yields the same ids (the store and MQTT consumers de-duplicate
on them).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional
from datetime import datetime, timedelta, timezone

import numpy as np

from edge.contract.record import Detection, format_utc

log = logging.getLogger(__name__)

FALLBACK_THRESHOLD = 0.5
ID_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-5b7a-9c4e-2d3f1a0b9e77")


def detection_id(device_id: str, source: str, label: str, start_key: str, model_sha256: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, "\x1f".join((device_id, source, label, start_key, model_sha256))))


def resolve_thresholds(labels: list[str], bundle_thresholds: dict[str, float], detection=None) -> np.ndarray:
    """Per-label thresholds (float32 array in label order)."""
    out = np.empty(len(labels), dtype=np.float32)
    default = getattr(detection, "default_threshold", None)
    overrides = dict(getattr(detection, "thresholds", {}) or {})
    for i, lab in enumerate(labels):
        if lab in overrides:
            out[i] = overrides[lab]
        elif default is not None:
            out[i] = default
        else:
            out[i] = bundle_thresholds.get(lab, FALLBACK_THRESHOLD)
    return out


def resolve_min_windows(bundle_min_windows: int, detection=None) -> int:
    """Windows that confirm an event: the config's ``min_windows`` when set, else the bundle's."""
    v = getattr(detection, "min_windows", None)
    return int(bundle_min_windows if v is None else v)


def active_mask(labels: list[str], detection=None) -> np.ndarray:
    include = set(getattr(detection, "include", []) or [])
    exclude = set(getattr(detection, "exclude", []) or [])
    return np.array([(not include or lab in include) and lab not in exclude for lab in labels], dtype=bool)


def unknown_labels(labels: list[str], detection) -> list[str]:
    """Labels named in the detection config that the model does not know."""
    named = set(detection.include) | set(detection.exclude) | set(detection.thresholds)
    return sorted(named - set(labels))


@dataclass
class ModelInfo:
    """What post-processing needs to know of the model."""

    labels: list[str]
    common_names: list[str]
    thresholds: dict[str, float]
    version: str
    sha256: str
    window_s: float
    min_windows: int = 1  # the bundle's event rule (operating point)

    @classmethod
    def from_bundle(cls, bundle) -> "ModelInfo":
        labs = bundle.labels
        return cls([lab.label for lab in labs], [lab.common_name for lab in labs], bundle.thresholds,
                   bundle.version, bundle.sha256, bundle.frontend.window_s, bundle.min_windows)


@dataclass
class SourceInfo:
    """Where the windows come from; ``time_source`` 'clock' means live capture."""

    device_id: str
    source: str
    time_source: str


@dataclass
class _Open:
    k: int
    first: int
    last: int
    offset_s: float
    start_utc: datetime
    end_offset_s: float
    end_utc: datetime
    max: float
    total: float
    n: int


@dataclass
class PostProcessor:
    """Turns a stream of window scores into Detection events; call ``close()`` at a segment's end."""

    model: ModelInfo
    source: SourceInfo
    detection: object = None  # edge.config.DetectionConfig or None for defaults
    clock: Optional[Callable[[], datetime]] = None  # "now" (UTC); tests pass a fixed one
    thresholds: np.ndarray = field(init=False)
    active: np.ndarray = field(init=False)
    _open: dict[int, _Open] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        d = self.detection
        self.min_windows = resolve_min_windows(self.model.min_windows, d)
        self.merge_gap = int(getattr(d, "merge_gap_windows", 0))
        self.thresholds = resolve_thresholds(self.model.labels, self.model.thresholds, d)
        self.active = active_mask(self.model.labels, d)
        self._masked_thresholds = np.where(self.active, self.thresholds, np.inf).astype(np.float32)
        self._last_index = -1

    def add(self, index: int, offset_s: float, start_utc: datetime, scores: np.ndarray) -> list[Detection]:
        """One window's scores; ``index`` counts windows within the segment (increasing)."""
        out: list[Detection] = []
        hits = np.flatnonzero(scores >= self._masked_thresholds)
        # close events whose gap is now too long
        for k in [k for k, ev in self._open.items() if index - ev.last - 1 > self.merge_gap]:
            out += self._emit(self._open.pop(k))
        w = self.model.window_s
        for k in hits.tolist():
            s = float(scores[k])
            ev = self._open.get(k)
            if ev is None:
                self._open[k] = _Open(k, index, index, offset_s, start_utc, offset_s + w,
                                      start_utc + timedelta(seconds=w), s, s, 1)
            else:
                ev.last, ev.end_offset_s, ev.end_utc = index, offset_s + w, start_utc + timedelta(seconds=w)
                ev.max, ev.total, ev.n = max(ev.max, s), ev.total + s, ev.n + 1
        self._last_index = index
        return out

    def add_many(self, first_index: int, offsets: list[float], utcs: list[datetime], scores: np.ndarray) -> list[Detection]:
        out: list[Detection] = []
        for i in range(len(offsets)):
            out += self.add(first_index + i, offsets[i], utcs[i], scores[i])
        return out

    def close(self) -> list[Detection]:
        """End of a segment (end of file, discontinuity, model swap): emit open events."""
        out: list[Detection] = []
        for ev in sorted(self._open.values(), key=lambda e: (e.first, e.k)):
            out += self._emit(ev)
        self._open.clear()
        return out

    def _emit(self, ev: _Open) -> list[Detection]:
        if ev.n < self.min_windows:
            return []
        k = ev.k
        label = self.model.labels[k]
        src = self.source
        start_key = f"utc:{format_utc(ev.start_utc)}" if src.time_source == "clock" else f"offset:{ev.offset_s:.3f}"
        now = self.clock() if self.clock else datetime.now(timezone.utc)
        return [Detection(
            id=detection_id(src.device_id, src.source, label, start_key, self.model.sha256),
            device_id=src.device_id,
            source=src.source,
            start_utc=format_utc(ev.start_utc),
            end_utc=format_utc(ev.end_utc),
            offset_s=round(ev.offset_s, 3),
            end_offset_s=round(ev.end_offset_s, 3),
            label=label,
            common_name=self.model.common_names[k],
            score=round(ev.max, 4),
            mean_score=round(ev.total / ev.n, 4),
            n_windows=ev.n,
            model_version=self.model.version,
            model_sha256=self.model.sha256,
            created_utc=format_utc(now),
            time_source=src.time_source,
        )]

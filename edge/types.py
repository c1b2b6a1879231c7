"""The interfaces between the edge's stages, in one place.

Each stage knows only the one before it through these types: an
``AudioSource`` yields ``AudioBlock``s; the pipeline turns them into
``Detection`` events; a ``DetectionSink`` takes them (the store, a writer).
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Iterator

import numpy as np


@dataclass
class AudioBlock:
    """Mono float32 samples at the pipeline's rate.

    ``start_utc`` is the wall-clock time of the first sample; ``offset_s`` is
    its position in the source. ``discontinuity`` is True when samples were
    lost before this block (overflow, device loss): the pipeline must not
    stitch across it.
    """

    samples: np.ndarray
    start_utc: datetime
    offset_s: float
    discontinuity: bool = False


class AudioSource(ABC):
    """Where audio comes from: a file, a microphone."""

    name: str
    sample_rate: int
    #: how start_utc was known: "file-name", "config", "replay-time", "clock"
    time_source: str = "clock"

    @abstractmethod
    def blocks(self, stop: threading.Event) -> Iterator[AudioBlock]:
        """Yield blocks until the source ends or ``stop`` is set."""

    def close(self) -> None:  # pragma: no cover - default no-op
        pass


@dataclass
class Detection:
    """One detection event: consecutive windows of one species merged."""

    id: str
    device_id: str
    source: str
    start_utc: str
    end_utc: str
    offset_s: float
    end_offset_s: float
    label: str
    common_name: str
    score: float
    mean_score: float
    n_windows: int
    model_version: str
    model_sha256: str
    created_utc: str
    time_source: str

    def to_dict(self) -> dict:
        return asdict(self)


class DetectionSink(ABC):
    """Takes detection events: the store, an output writer."""

    @abstractmethod
    def handle(self, detections: list[Detection]) -> None:
        ...

    def close(self) -> None:  # pragma: no cover - default no-op
        pass

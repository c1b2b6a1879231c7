"""The interfaces between the edge's stages, declared in one place.

Data flows one way: an ``AudioSource`` yields ``AudioBlock``s; the pipeline
(``edge.detection``) turns them into ``Detection`` records
(``edge.contract.record``); the runtime (``edge.service.runtime``) commits
them to the store, then hands the new ones to each ``DetectionSink`` and
``Service``. The MQTT publisher reads the store as an ``Outbox``; the status
message reads a ``HealthSource``.

Imports from edge: contract.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from edge.contract.record import Detection

__all__ = ["AudioBlock", "AudioSource", "Detection", "DetectionSink", "HealthSource", "Outbox", "Service",
           "SourceCounters"]


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


@dataclass(frozen=True)
class SourceCounters:
    """Audio a source lost so far: overflowed blocks, dropped frames, device losses (a file loses none)."""

    overflows: int = 0
    dropped_frames: int = 0
    device_losses: int = 0


class AudioSource(ABC):
    """Where audio comes from: a file, a microphone."""

    name: str
    sample_rate: int
    #: how start_utc was known: one of ``edge.contract.record.TIME_SOURCES``
    time_source: str = "clock"

    @abstractmethod
    def blocks(self, stop: threading.Event) -> Iterator[AudioBlock]:
        """Yield blocks until the source ends or ``stop`` is set."""

    def describe(self) -> dict[str, Any]:
        """What a listening session (the effort row) records about this source: device or file, rates, channels."""
        return {"source": self.name, "time_source": self.time_source}

    def counters(self) -> SourceCounters:
        """Audio lost so far (health numbers)."""
        return SourceCounters()

    def close(self) -> None:  # noqa: B027 - optional: most sources close when their blocks end
        """Release the device or file."""


class DetectionSink(ABC):
    """Takes detection records: an output writer, the clip writer. The runtime calls it after the store.

    ``begin_source``/``end_source`` bracket each source's detections (a
    writer's per-file table); ``add_audio`` sees every block (the clip
    writer keeps recent audio). Only ``handle`` is required.
    """

    @abstractmethod
    def handle(self, detections: Sequence[Detection]) -> None:
        """New detections, in order, already committed to the store when there is one."""

    def begin_source(self, name: str) -> None:  # noqa: B027 - optional
        """A source starts (its name: the file path or the device)."""

    def end_source(self) -> None:  # noqa: B027 - optional
        """The source ended; every one of its detections was handled."""

    def add_audio(self, block: AudioBlock) -> None:  # noqa: B027 - optional
        """A block of the source's audio, before its detections."""

    def close(self) -> None:  # noqa: B027 - optional
        """Flush and release what the sink holds."""


class Service(ABC):
    """A long-running part the runtime starts after the store and the model, and stops in reverse order.

    Every service receives each batch of newly stored detections through
    ``handle`` (store first, then services: the MQTT publisher sends what is
    already safe); a service that does not use them keeps the default.
    """

    name: str = "service"

    @abstractmethod
    def start(self) -> None:
        """Start its threads; return promptly."""

    @abstractmethod
    def stop(self) -> None:
        """Stop and join its threads (the runtime's stop event is already set)."""

    def handle(self, detections: Sequence[Detection]) -> None:  # noqa: B027 - most services ignore detections
        """New detections, already committed to the store."""

    def drain(self, timeout_s: float) -> None:  # noqa: B027 - most services hold nothing back
        """Before a planned stop (the end of a replay): finish outstanding work, waiting at most ``timeout_s``."""


@runtime_checkable
class Outbox(Protocol):
    """What the MQTT publisher needs of the store (``edge.outputs.store.Store`` is one)."""

    def unpublished(self, limit: int) -> Sequence[Mapping[str, Any]]:
        """Stored detections not yet acknowledged by the broker, oldest first."""
        ...

    def mark_published(self, ids: Sequence[str], when: str | None = None, acked_t: float | None = None) -> int:
        """Record the broker's acknowledgement of ``ids``: ``when`` (UTC text), ``acked_t`` (outbox clock)."""
        ...

    def requeue_acked_since(self, since_t: float) -> Sequence[str]:
        """Put back what was first acknowledged at or after ``since_t`` (outbox clock); returns the ids."""
        ...

    def last_acked_t(self) -> float | None:
        """The latest first acknowledgement stored (outbox clock), or None."""
        ...

    def outbox_depth(self) -> int:
        """How many detections wait."""
        ...

    def count(self) -> int:
        """How many detections are stored."""
        ...


class HealthSource(Protocol):
    """The numbers the status message carries (``edge.service.health.Health`` is one)."""

    def snapshot(self) -> Mapping[str, Any]:
        """Plain scalars by name (the MQTT status message's health fields)."""
        ...

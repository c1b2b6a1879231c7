"""The interfaces between the edge's stages, declared in one place.

Data flows one way: an ``AudioSource`` yields ``AudioBlock``s; the pipeline
(``edge.detection``) turns them into ``Detection`` records
(``edge.contract.record``); the runtime (``edge.service.runtime``) commits
them to the store, then hands the new ones to each ``DetectionSink`` and
``Service``. The MQTT publisher reads the store as an ``Outbox``; the status
message reads a ``HealthSource``.

May import: the standard library, numpy and ``edge.contract`` only.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from edge.contract.record import Detection

__all__ = ["AudioBlock", "AudioSource", "Detection", "DetectionSink", "HealthSource", "Outbox", "Service"]


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
    #: how start_utc was known: one of ``edge.contract.record.TIME_SOURCES``
    time_source: str = "clock"

    @abstractmethod
    def blocks(self, stop: threading.Event) -> Iterator[AudioBlock]:
        """Yield blocks until the source ends or ``stop`` is set."""

    def close(self) -> None:  # noqa: B027 - optional: most sources close when their blocks end
        """Release the device or file."""


class DetectionSink(ABC):
    """Takes detection records: an output writer, the clip writer. The runtime calls it after the store."""

    @abstractmethod
    def handle(self, detections: Sequence[Detection]) -> None:
        """New detections, in order, already committed to the store when there is one."""

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

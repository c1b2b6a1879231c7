"""``detection:`` thresholds, species lists and how windows merge into events (``edge.detection.postprocess``)."""
from __future__ import annotations

from pydantic import Field, field_validator

from edge.config.base import Section

MAX_MIN_WINDOWS = 10  # the most a bundle may ask for (edge.contract.bundle.MAX_MIN_WINDOWS; a test keeps them equal)


class DetectionConfig(Section):
    default_threshold: float | None = Field(None, ge=0, le=1)  # None: the bundle's per-class thresholds
    thresholds: dict[str, float] = {}
    include: list[str] = []
    exclude: list[str] = []
    # None: the bundle's operating point (1 if it has none); at most what a bundle may ask for
    min_windows: int | None = Field(None, ge=1, le=MAX_MIN_WINDOWS)
    merge_gap_windows: int = Field(0, ge=0)

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not 0 <= x <= 1}
        if bad:
            raise ValueError(f"thresholds must be between 0 and 1, got {bad}")
        return v

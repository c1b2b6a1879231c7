"""The records every part of dawnchorus agrees on: the detection, UTC times, model output kinds.

``Detection`` is the one definition of a detection event. The store's
columns, the MQTT payload, the CSV/JSON/Raven columns and the JSON Schema
(``edge/schemas/detection.json``) follow from ``DETECTION_FIELDS`` and are
checked against it in ``tests/test_record.py``. A new field: add it here,
then to the store's migrations and the schema (the test says what is
missing).

Times are ISO 8601 UTC text with milliseconds and a ``Z``
(``2024-05-01T05:30:00.000Z``): ``format_utc`` writes them, ``parse_utc``
reads them (and any ISO 8601 time; no zone means UTC), ``utc_now`` is now.
Text in this format sorts as time does, which the store's queries rely on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any, Literal, Mapping, get_args, get_type_hints

#: "probability": the model ends in a sigmoid. "logit": the edge applies the
#: sigmoid after dequantizing, which keeps int8 resolution for small scores
#: (a sigmoid quantized to 1/256 steps flattens every score below 0.004).
OutputKind = Literal["probability", "logit"]
OUTPUT_KINDS: tuple[str, ...] = get_args(OutputKind)
DEFAULT_OUTPUT_KIND: OutputKind = "probability"  # bundles written before output kinds existed

#: how a detection's start_utc was known (``time_source``); "guano" and "audiomoth": the recorder's
#: header (``edge.sources.metadata``)
TIME_SOURCES = ("file-name", "config", "replay-time", "clock", "guano", "audiomoth")


def format_utc(t: datetime, *, ms: bool = True) -> str:
    """``t`` as ISO 8601 UTC with a ``Z``: milliseconds, or whole seconds with ``ms=False``."""
    t = t.astimezone(timezone.utc)
    if ms:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now(*, ms: bool = True) -> str:
    """Now, as ``format_utc`` writes it."""
    return format_utc(datetime.now(timezone.utc), ms=ms)


def parse_utc(text: str) -> datetime:
    """An ISO 8601 time (``Z`` or an offset; none means UTC) as an aware UTC datetime; ValueError if not one."""
    t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


@dataclass(frozen=True)
class Detection:
    """One detection event: consecutive windows of one species merged (``edge.detection.postprocess``).

    ``id`` is stable (same device, source, label, start and model: same id),
    the key on which the store and MQTT consumers de-duplicate. Times are
    ``format_utc`` text; offsets are seconds into the source.
    """

    id: str
    device_id: str
    source: str  # file path or capture device name
    start_utc: str
    end_utc: str
    offset_s: float
    end_offset_s: float
    label: str  # scientific name with '_'
    common_name: str
    score: float  # maximum window score, 0..1
    mean_score: float
    n_windows: int
    model_version: str
    model_sha256: str
    created_utc: str
    time_source: str  # one of TIME_SOURCES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Detection":
        """From a stored row or a decoded message (extra keys such as ``seq`` are ignored).

        ValueError naming the field when one is missing, null or not of its type.
        """
        values: dict[str, Any] = {}
        for name, typ in FIELD_TYPES.items():
            v = row.get(name)
            if v is None:
                raise ValueError(f"detection {row.get('id')!r} lacks {name}")
            try:
                values[name] = typ(v)
            except (TypeError, ValueError):
                raise ValueError(f"detection {row.get('id')!r}: {name} {v!r} is not a {typ.__name__}") from None
        return cls(**values)


DETECTION_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Detection))
#: each field's Python type, from the annotations above
FIELD_TYPES: Mapping[str, type] = {f: get_type_hints(Detection)[f] for f in DETECTION_FIELDS}

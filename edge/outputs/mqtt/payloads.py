"""JSON payloads of the MQTT messages. Their JSON Schemas are in ``edge/schemas/``.

Every payload is a JSON object with ``"schema"`` naming its kind and version,
so consumers can tell messages apart and evolve with them.
"""
from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any, Mapping, Optional

from edge.contract.record import Detection, utc_now

DETECTION_SCHEMA = "dawnchorus/detection/1"
STATUS_SCHEMA = "dawnchorus/status/1"


#: health numbers (all optional but outbox_depth) in the status message
HEALTH_FIELDS = (
    "uptime_s", "windows_processed", "inference_latency_ms", "overflows", "gaps",
    "disk_free_mb", "model_version", "model_sha256", "outbox_depth", "detections_total",
)


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN/inf are not JSON and become null."""
    return json.dumps(_finite(payload), separators=(",", ":"), ensure_ascii=False).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def location_dict(location: Any) -> dict:
    """From a ``LocationConfig`` (or None, or a mapping)."""
    if location is None:
        return {"name": "", "latitude": None, "longitude": None}
    get = location.get if isinstance(location, Mapping) else lambda k, d=None: getattr(location, k, d)
    return {"name": get("name", "") or "", "latitude": get("latitude"), "longitude": get("longitude")}


def detection(det: Detection, location: Any = None) -> dict:
    """A detection message: the schema name, every field of the record, the location."""
    missing = [f for f in ("id", "device_id", "start_utc", "label") if not getattr(det, f)]
    if missing:
        raise ValueError(f"detection {det.id!r} lacks {', '.join(missing)}")
    return {"schema": DETECTION_SCHEMA, **det.to_dict(), "location": location_dict(location)}


def status(device_id: str, state: str, health: Optional[Mapping[str, Any]] = None,
           mqtt: Optional[Mapping[str, Any]] = None) -> dict:
    """``online``/``offline``; with ``health`` it is the periodic health message."""
    if state not in ("online", "offline"):
        raise ValueError(f"status state must be online or offline, got {state!r}")
    out: dict[str, Any] = {"schema": STATUS_SCHEMA, "device_id": device_id, "state": state, "ts": utc_now()}
    if health is not None:
        h = {k: health.get(k) for k in HEALTH_FIELDS}
        extra = {("daemon_state" if k == "state" else k): v for k, v in health.items()
                 if k not in h and k != "device_id" and _is_scalar(v)}
        h.update(extra)
        out["health"] = h
    if mqtt is not None:
        out["mqtt"] = dict(mqtt)
    return out


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def load_schema(name: str) -> dict:
    """A committed JSON Schema: ``detection``, ``status`` or ``ha_discovery``."""
    return json.loads(resources.files("edge").joinpath("schemas", f"{name}.json").read_text())

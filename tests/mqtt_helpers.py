"""Helpers shared by the MQTT tests: detections, schema checks, publishers on a real store."""
from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone

import jsonschema

from edge.config import MQTTConfig
from edge.outputs.mqtt.payloads import load_schema
from edge.detection.postprocess import detection_id
from edge.outputs.mqtt.publisher import Publisher
from edge.contract.record import Detection

SCHEMAS = {name: jsonschema.Draft202012Validator(load_schema(name)) for name in ("detection", "status", "ha_discovery")}
SHA = hashlib.sha256(b"test model").hexdigest()
T0 = datetime(2024, 5, 1, 5, 30, tzinfo=timezone.utc)


def validate(kind: str, payload: bytes | dict) -> dict:
    obj = json.loads(payload) if isinstance(payload, (bytes, str)) else payload
    SCHEMAS[kind].validate(obj)
    return obj


def make_detections(n: int, device_id: str = "dev1", start: int = 0, source: str = "test.wav") -> list[Detection]:
    labels = ["Coereba_flaveola", "Loxigilla_portoricensis", "Tyrannus_dominicensis"]
    out = []
    for i in range(start, start + n):
        t = T0 + timedelta(seconds=3 * i)
        label = labels[i % len(labels)]
        out.append(Detection(
            id=detection_id(device_id, source, label, t.isoformat(), SHA), device_id=device_id, source=source,
            start_utc=t.isoformat().replace("+00:00", "Z"),
            end_utc=(t + timedelta(seconds=3)).isoformat().replace("+00:00", "Z"),
            offset_s=3.0 * i, end_offset_s=3.0 * i + 3, label=label, common_name=label.replace("_", " "),
            score=0.5 + (i % 5) / 10, mean_score=0.5, n_windows=1, model_version="test-1", model_sha256=SHA,
            created_utc=datetime.now(timezone.utc).isoformat(), time_source="config"))
    return out


def mqtt_config(broker, **kw) -> MQTTConfig:
    base = dict(enabled=True, host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0,
                health_interval_s=60, max_backlog_rate=200, keepalive_s=10)
    base.update(kw)
    return MQTTConfig(**base)


def unique_client() -> str:
    return f"dawnchorus-test-{uuid.uuid4().hex[:8]}"


def start_publisher(broker, store, device_id: str = "dev1", **kw) -> Publisher:
    health = kw.pop("health", None)
    location = kw.pop("location", {"name": "El Yunque", "latitude": 18.3, "longitude": -65.8})
    kw.setdefault("client_id", unique_client())
    p = Publisher(mqtt_config(broker, **kw), device_id, store, location=location, health=health)
    p.start()
    return p


def store_then_publish(store, pub, detections) -> None:
    """What the runtime does with each batch (``Runtime.deliver``): commit to the store, hand the new ones over."""
    pub.handle(store.insert(detections))

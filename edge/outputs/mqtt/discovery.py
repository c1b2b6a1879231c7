"""Home Assistant MQTT discovery: announce the recorder's entities, remove them when they go.

Each entity (four sensors and a "no signal" problem binary sensor) is one
retained config on ``<discovery_prefix>/<component>/dawnchorus_<device_id>/<key>/config``
(schema: ``edge/schemas/ha_discovery.json``), following Home Assistant's
current conventions:

* ``default_entity_id`` (``sensor.dawnchorus_<device>_last_species``) instead
  of ``object_id``, which HA deprecated in 2025.10 and drops in 2026.4;
* an ``origin`` block (name, sw_version, support_url) and a shared ``device``
  block; entity names that do not repeat the device name;
* availability from the retained status topic (``online``/``offline``, the
  last will);
* a retained ``<prefix>/<device_id>/last_detection`` (the newest detection
  message), so HA shows the last species and its time straight after a
  restart instead of "unknown";
* on HA's birth message (``<discovery_prefix>/status`` = ``online``) the
  configs and the last detection are announced again.

What was announced (config topics and the retained last-detection topic) is
remembered in ``<state_dir>/ha_discovery.json``. On each connection,
remembered topics that are no longer wanted -- discovery turned off, or a
new ``device_id`` -- get an empty retained message, which is how HA removes
an entity and how a broker forgets a retained message. Nothing is ever sent
to topics this recorder did not announce (a broker ACL would refuse it).

The publisher calls ``connected(publisher)`` after each (re)connection and
``sent(message, publisher)`` for each detection message it sends; both run
on the publisher's thread.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Mapping, Optional

from edge.contract.record import Detection
from edge.outputs.mqtt import payloads
from edge.outputs.mqtt.topics import Topics
from edge.files import atomic_write

log = logging.getLogger(__name__)

ORIGIN_NAME = "dawnchorus"
SUPPORT_URL = "https://github.com/dawnchorus/dawnchorus"
STATE_FILE = "ha_discovery.json"


def package_version() -> str:
    try:
        return importlib_metadata.version("dawnchorus")
    except importlib_metadata.PackageNotFoundError:  # a source checkout that is not installed
        return "0+unknown"


def entity_slug(text: str) -> str:
    """An HA object id: lower case letters, digits and single underscores, none at either end."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]", "_", text.lower())).strip("_") or "dawnchorus"


def configs(topics: Topics, *, location_name: str = "", sw_version: str = "") -> dict[str, dict]:
    """Every discovery config of one recorder, by config topic."""
    node = topics.ha_node_id
    version = sw_version or package_version()
    device = {
        "identifiers": [node],
        "name": f"dawnchorus {topics.device_id}" + (f" ({location_name})" if location_name else ""),
        "manufacturer": "dawnchorus",
        "model": "passive acoustic bird recorder",
        "sw_version": version,
    }
    if location_name:
        device["suggested_area"] = location_name
    common = {
        "device": device,
        "origin": {"name": ORIGIN_NAME, "sw_version": version, "support_url": SUPPORT_URL},
        "availability": [{
            "topic": topics.status,
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }],
        "qos": 1,
    }
    last = topics.last_detection
    entities = {
        "last_species": {
            "name": "Last species",
            "state_topic": last,
            "value_template": "{{ value_json.common_name or value_json.label }}",
            "json_attributes_topic": last,
            "json_attributes_template": (
                "{{ {'label': value_json.label, 'score': value_json.score, 'start_utc': value_json.start_utc, "
                "'id': value_json.id, 'model_version': value_json.model_version} | tojson }}"),
            "icon": "mdi:bird",
        },
        "last_detection": {
            "name": "Last detection",
            "state_topic": last,
            "value_template": "{{ value_json.start_utc }}",
            "device_class": "timestamp",
            "icon": "mdi:clock-outline",
        },
        "detections_count": {
            "name": "Detections",
            "state_topic": topics.status,
            "value_template": ("{{ value_json.health.detections_total if value_json.health is defined "
                               "else this.state }}"),
            "state_class": "total_increasing",
            "unit_of_measurement": "detections",
            "icon": "mdi:counter",
        },
        "outbox_depth": {
            "name": "MQTT outbox",
            "state_topic": topics.status,
            "value_template": ("{{ value_json.health.outbox_depth if value_json.health is defined "
                               "else this.state }}"),
            "state_class": "measurement",
            "unit_of_measurement": "detections",
            "entity_category": "diagnostic",
            "icon": "mdi:tray-full",
        },
        "no_signal": {
            "component": "binary_sensor",
            "name": "No signal",
            "state_topic": topics.status,
            # the signal guard's streak of windows without signal (digital silence, constant, non-finite)
            "value_template": ("{{ 'ON' if value_json.health is defined and "
                               "(value_json.health.no_signal_streak or 0) > 0 else 'OFF' }}"),
            "device_class": "problem",
            "entity_category": "diagnostic",
        },
    }
    out = {}
    for key, entity in entities.items():
        component = entity.pop("component", "sensor")
        ident = f"{node}_{key}"
        out[topics.ha_config(key, component)] = {
            **entity,
            "unique_id": ident,
            "default_entity_id": f"{component}.{entity_slug(ident)}",
            **common,
        }
    return out


class Discovery:
    """Announces and withdraws one recorder's HA entities (see the module's docstring)."""

    def __init__(self, topics: Topics, *, enabled: bool, location_name: str = "", sw_version: str = "",
                 state_dir: Optional[str | Path] = None):
        self.topics = topics
        self.enabled = enabled
        self.location_name = location_name
        self.sw_version = sw_version
        self.state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
        self._announced: set[str] = set(self._load())
        self._latest: Optional[dict] = None  # the newest detection message seen (by start_utc)
        self._lock = threading.Lock()
        self._subscribed = False

    @classmethod
    def for_publisher(cls, cfg: Any, topics: Topics, *, location: Any = None, sw_version: str = "",
                      state_dir: Optional[str | Path] = None) -> "Discovery":
        """From the publisher's ``MQTTConfig``."""
        name = (location.get("name") if isinstance(location, Mapping) else getattr(location, "name", "")) or ""
        return cls(topics, enabled=bool(cfg.homeassistant.enabled), location_name=name, sw_version=sw_version,
                   state_dir=state_dir)

    # ---- what is wanted, what was announced ------------------------------------
    def wanted(self) -> dict[str, dict]:
        if not self.enabled:
            return {}
        return configs(self.topics, location_name=self.location_name, sw_version=self.sw_version)

    @property
    def announced(self) -> set[str]:
        with self._lock:
            return set(self._announced)

    def _load(self) -> list[str]:
        if self.state_path is None:
            return []
        try:
            data = json.loads(self.state_path.read_text())
            return [t for t in data.get("topics", []) if isinstance(t, str)]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s: unreadable, starting afresh (entities announced before may stay in Home Assistant): %s",
                        self.state_path, exc)
            return []

    def _save(self) -> None:
        if self.state_path is None:
            return
        with self._lock:
            data = {"topics": sorted(self._announced)}
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.state_path, json.dumps(data, indent=1) + "\n")
        except OSError as exc:
            log.error("cannot record the announced Home Assistant entities in %s: %s", self.state_path, exc)

    # ---- hooks called by the publisher -----------------------------------------
    def connected(self, publisher: Any) -> None:
        """After each (re)connection: withdraw what is no longer wanted, announce what is."""
        wanted = self.wanted()
        keep = set(wanted) | ({self.topics.last_detection} if self.enabled else set())
        stale = sorted(self.announced - keep)
        for topic in stale:
            if publisher.publish(topic, b"", qos=1, retain=True) is not None:
                with self._lock:
                    self._announced.discard(topic)
        if stale:
            log.info("Home Assistant: withdrew %d retained topic(s) no longer announced (%s)", len(stale),
                     "discovery turned off" if not self.enabled else "device id or entities changed")
        if self.enabled:
            self._announce(publisher, wanted)
            if not self._subscribed:
                self._subscribed = True
                publisher.subscribe(f"{self.topics.discovery_prefix}/status",
                                    lambda _t, payload: self._on_ha_status(publisher, payload), max_bytes=64)
            latest = self._latest or self._newest_stored(publisher)
            if latest is not None:
                self._publish_last(publisher, latest)
        self._save()

    def sent(self, message: Mapping[str, Any], publisher: Any) -> None:
        """A detection message went out: it becomes the retained last detection if it is the newest."""
        if not self.enabled:
            return
        with self._lock:
            newer = self._latest is None or str(message.get("start_utc", "")) >= str(self._latest.get("start_utc", ""))
        if newer:
            self._publish_last(publisher, dict(message))

    # ---- internals ---------------------------------------------------------------
    def _announce(self, publisher: Any, wanted: Mapping[str, dict]) -> None:
        for topic, config in wanted.items():
            if publisher.publish(topic, payloads.encode(config), qos=1, retain=True) is not None:
                with self._lock:
                    self._announced.add(topic)

    def _publish_last(self, publisher: Any, message: dict) -> None:
        with self._lock:
            self._latest = message
        if publisher.publish(self.topics.last_detection, payloads.encode(message), qos=1, retain=True) is not None:
            with self._lock:
                fresh = self.topics.last_detection not in self._announced
                self._announced.add(self.topics.last_detection)
            if fresh:
                self._save()

    def _on_ha_status(self, publisher: Any, payload: bytes) -> None:
        if payload.strip() != b"online":
            return
        log.info("Home Assistant came online: announcing the entities again")
        self._announce(publisher, self.wanted())
        with self._lock:
            latest = self._latest
        if latest is not None:
            publisher.publish(self.topics.last_detection, payloads.encode(latest), qos=1, retain=True)

    def _newest_stored(self, publisher: Any) -> Optional[dict]:
        """The newest stored detection as a message (the outbox is the publisher's store), or None."""
        store = getattr(publisher, "_outbox", None)
        db = getattr(store, "db", None)
        if db is None:
            return None
        try:
            rows = list(db.query("SELECT * FROM detections ORDER BY start_utc DESC, seq DESC LIMIT 1"))
        except Exception as exc:  # noqa: BLE001 - the last detection is a nicety, never fatal
            log.warning("Home Assistant: cannot read the last detection from the store: %s", exc)
            return None
        if not rows:
            return None
        return payloads.detection(Detection.from_row(rows[0]), getattr(publisher, "location", None))


"""Every MQTT topic name, in one place.

Device topics live under ``<prefix>/<device_id>/``; the fleet-wide model
channels under ``<prefix>/models/<channel>``. Home Assistant discovery
topics follow HA's ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``.
"""
from __future__ import annotations

from dataclasses import dataclass

_FORBIDDEN = set("+#/\0")


def check_segment(value: str, what: str) -> str:
    """A topic level must be non-empty and free of wildcards and separators."""
    if not value or any(c in _FORBIDDEN for c in value):
        raise ValueError(f"{what} {value!r} cannot be used in an MQTT topic (empty, or contains + # / or NUL)")
    return value


def check_prefix(prefix: str) -> str:
    """The prefix may have several levels (``site/dawnchorus``) but no wildcards."""
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or any(c in "+#\0" for c in prefix):
        raise ValueError(f"MQTT prefix {prefix!r} must be non-empty, have no leading/trailing '/', no + or #")
    return prefix


@dataclass(frozen=True)
class Topics:
    """The topics of one device."""

    prefix: str
    device_id: str
    discovery_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        check_segment(self.device_id, "device_id")
        check_prefix(self.discovery_prefix)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def detections(self) -> str:
        """One JSON message per detection event, QoS 1."""
        return f"{self.base}/detections"

    @property
    def status(self) -> str:
        """Retained: online/offline (last will) and the periodic health message."""
        return f"{self.base}/status"

    @property
    def last_detection(self) -> str:
        """Retained: the newest detection message (Home Assistant shows it after a restart)."""
        return f"{self.base}/last_detection"

    @property
    def model(self) -> str:
        """Retained: the active model and the last update tried (issue 6)."""
        return f"{self.base}/model"

    @property
    def model_set(self) -> str:
        """A bundle pushed to this one device."""
        return f"{self.base}/model/set"

    def model_channel(self, channel: str) -> str:
        """A bundle pushed (retained) to every device on a channel."""
        return f"{self.prefix}/models/{check_segment(channel, 'channel')}"

    @property
    def all_model_channels(self) -> str:
        return f"{self.prefix}/models/#"

    # Home Assistant MQTT discovery
    @property
    def ha_node_id(self) -> str:
        return f"dawnchorus_{self.device_id}".replace(".", "_").replace("-", "_")

    def ha_config(self, object_id: str, component: str = "sensor") -> str:
        return f"{self.discovery_prefix}/{component}/{self.ha_node_id}/{object_id}/config"



def device_wildcard(prefix: str, what: str = "detections") -> str:
    """What a consumer subscribes to for the whole fleet, e.g. ``dawnchorus/+/detections``."""
    return f"{check_prefix(prefix)}/+/{what}"

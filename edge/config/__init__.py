"""The recorder's configuration (YAML, pydantic, unknown keys refused), one module per section.

``base`` (the strict ``Section`` model, ``ConfigError``, YAML reading, the
default paths), then one module per concern: ``location``, ``model``,
``detection``, ``audio``, ``store``, ``clips``, ``mqtt`` (also the small
settings ``trainer push`` reads, and the password), ``updates``, ``logs``, ``web``;
``root`` holds ``Config``, one field per section. Every option is
documented in ``config.example.yaml``.

``load_config(path)`` raises ``ConfigError`` whose message names each bad
key by its dotted path, the value given and what is allowed.

May import: pydantic, yaml and the standard library only, so every part can
read its settings without pulling in another (one exception: ``web`` checks
``listen`` with the dashboard's standard-library parser).

Imports from edge: config.
"""
from __future__ import annotations

from pathlib import Path

from edge.config.audio import AudioConfig
from edge.config.base import (DEFAULT_BUNDLE, DEFAULT_PUBLIC_KEY, DEFAULT_STATE_DIR, PACKAGE_DIR, ConfigError,
                              Section, format_validation_error, read_yaml, validate)
from edge.config.clips import ClipsConfig
from edge.config.detection import DetectionConfig
from edge.config.location import LocationConfig
from edge.config.logs import LoggingConfig
from edge.config.model import ModelConfig
from edge.config.mqtt import HomeAssistantConfig, MQTTConfig, MQTTSettings, TLSConfig, load_mqtt_settings
from edge.config.notify import NotifyConfig
from edge.config.root import Config
from edge.config.store import StoreConfig
from edge.config.updates import UpdatesConfig
from edge.config.web import WebConfig

__all__ = [
    "DEFAULT_BUNDLE", "DEFAULT_PUBLIC_KEY", "DEFAULT_STATE_DIR", "PACKAGE_DIR", "AudioConfig", "ClipsConfig", "Config",
    "ConfigError", "DetectionConfig", "HomeAssistantConfig", "LocationConfig", "LoggingConfig", "MQTTConfig",
    "MQTTSettings", "ModelConfig", "NotifyConfig", "Section", "StoreConfig", "TLSConfig", "UpdatesConfig", "WebConfig",
    "format_validation_error", "load_config", "load_mqtt_settings", "parse_config",
]


def parse_config(data: object, origin: str = "config") -> Config:
    """``data`` (parsed YAML) as the daemon's ``Config``; raises ``ConfigError``."""
    return validate(Config, data, origin)


def load_config(path: str | Path) -> Config:
    """The daemon's ``Config`` from the YAML file at ``path``; raises ``ConfigError``."""
    return parse_config(read_yaml(path), str(Path(path)))

"""``mqtt:`` the broker, TLS, credentials, rates; and what ``trainer push`` reads of a recorder's config.

``MQTTSettings``/``load_mqtt_settings`` read only the keys a tool that talks
to the fleet needs (``device_id``, ``mqtt``, ``updates``, ``model``), so
``trainer push`` does not depend on the daemon's whole configuration; the
other sections of the same file are left to the daemon.
``read_password`` is the one way the broker password is read (a file or an
environment variable, never the config file itself).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import ConfigDict, Field

from edge.config.base import ConfigError, Section, read_yaml, validate
from edge.config.model import ModelConfig
from edge.config.updates import UpdatesConfig

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class TLSConfig(Section):
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    insecure: bool = False  # skip hostname verification (test brokers only)


class HomeAssistantConfig(Section):
    enabled: bool = False
    discovery_prefix: str = "homeassistant"


class MQTTConfig(Section):
    enabled: bool = False
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = "dawnchorus"
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    client_id: Optional[str] = None  # default: dawnchorus-<device_id>
    keepalive_s: int = Field(60, ge=5, le=3600)
    username: Optional[str] = None
    password_file: Optional[Path] = None
    password_env: Optional[str] = None
    tls: Optional[TLSConfig] = None
    health_interval_s: float = Field(60, ge=1)
    max_backlog_rate: float = Field(50, gt=0)  # re-sent detections per second after an outage
    resend_window_s: float = Field(60, ge=0)  # after an unclean connection loss, re-send what was acked this recently; 0: off
    reconnect_min_s: float = Field(1, gt=0)
    reconnect_max_s: float = Field(120, gt=0)
    max_message_kb: int = Field(64, ge=1)  # larger messages on subscribed topics are dropped (model topics excepted)
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()


class MQTTSettings(Section):
    """The part of a recorder's config file a fleet tool needs; the daemon's other sections are ignored."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    device_id: str = Field("recorder", pattern=DEVICE_ID_PATTERN)
    mqtt: MQTTConfig = MQTTConfig()
    updates: UpdatesConfig = UpdatesConfig()
    model: ModelConfig = ModelConfig()


def load_mqtt_settings(path: str | Path) -> MQTTSettings:
    """The MQTT, updates and model sections of the YAML file at ``path``; raises ``ConfigError``."""
    return validate(MQTTSettings, read_yaml(path), str(path))


def read_password(cfg: MQTTConfig) -> Optional[str]:
    """The broker password from ``password_file`` or ``password_env``; None without either; raises ``ConfigError``."""
    if cfg.password_file is not None:
        try:
            return Path(cfg.password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file {cfg.password_file}: cannot read it ({exc.strerror})") from None
    if cfg.password_env:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise ConfigError(f"mqtt.password_env: environment variable {cfg.password_env} is not set")
        return value
    return None

"""The daemon's whole configuration: one field per section.

Add a section: a module ``edge/config/<name>.py`` with a ``Section``
subclass, and its field (plus import) here; document it in
``config.example.yaml``.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from edge.config.audio import AudioConfig
from edge.config.base import DEFAULT_STATE_DIR, Section
from edge.config.clips import ClipsConfig
from edge.config.detection import DetectionConfig
from edge.config.location import LocationConfig
from edge.config.logs import LoggingConfig
from edge.config.model import ModelConfig
from edge.config.mqtt import DEVICE_ID_PATTERN, MQTTConfig
from edge.config.notify import NotifyConfig
from edge.config.store import StoreConfig
from edge.config.updates import UpdatesConfig
from edge.config.web import WebConfig


class Config(Section):
    device_id: str = Field("recorder", pattern=DEVICE_ID_PATTERN)
    state_dir: Path = DEFAULT_STATE_DIR
    location: LocationConfig = LocationConfig()
    model: ModelConfig = ModelConfig()
    detection: DetectionConfig = DetectionConfig()
    audio: AudioConfig = AudioConfig()
    store: StoreConfig = StoreConfig()
    clips: ClipsConfig = ClipsConfig()
    mqtt: MQTTConfig = MQTTConfig()
    updates: UpdatesConfig = UpdatesConfig()
    notify: NotifyConfig = NotifyConfig()
    logging: LoggingConfig = LoggingConfig()
    web: WebConfig = WebConfig()
    status_interval_s: float = Field(30, ge=1)

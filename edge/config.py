"""The daemon's configuration: one pydantic model, unknown keys refused.

``load_config(path)`` raises ``ConfigError`` whose message names each bad key
by its dotted path, the value given and what is allowed. Every option here
is documented in ``config.example.yaml``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_BUNDLE = PACKAGE_DIR / "models" / "default.bundle"
DEFAULT_PUBLIC_KEY = PACKAGE_DIR / "models" / "default.pub"
DEFAULT_STATE_DIR = Path("/var/lib/dawnchorus")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LocationConfig(_Section):
    name: str = ""
    latitude: Optional[float] = Field(None, ge=-90, le=90)
    longitude: Optional[float] = Field(None, ge=-180, le=180)


class ModelConfig(_Section):
    bundle: Optional[Path] = None  # None: the bundled default model
    public_key: Optional[Path] = None  # None: the bundled default model's key
    models_dir: Optional[Path] = None  # where updates are installed; default <state_dir>/models
    num_threads: int = Field(1, ge=1, le=16)
    overlap_s: Optional[float] = Field(None, ge=0)  # None: window_s - bundle hop_s
    max_bundle_mb: float = Field(32, gt=0, le=512)

    @property
    def bundle_path(self) -> Path:
        return self.bundle or DEFAULT_BUNDLE

    @property
    def public_key_path(self) -> Path:
        return self.public_key or DEFAULT_PUBLIC_KEY


class DetectionConfig(_Section):
    default_threshold: Optional[float] = Field(None, ge=0, le=1)  # None: the bundle's per-class thresholds
    thresholds: dict[str, float] = {}
    include: list[str] = []
    exclude: list[str] = []
    min_windows: int = Field(1, ge=1)
    merge_gap_windows: int = Field(0, ge=0)

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not 0 <= x <= 1}
        if bad:
            raise ValueError(f"thresholds must be between 0 and 1, got {bad}")
        return v


class AudioConfig(_Section):
    device: Union[int, str, None] = None  # name substring or index; None: the system default input
    sample_rate: Optional[int] = Field(None, ge=8000, le=192000)  # None: ask for the bundle's rate
    channels: int = Field(1, ge=1, le=32)
    channel: Optional[int] = Field(None, ge=0)  # None: mix all channels down
    gain_db: float = Field(0.0, ge=-40, le=60)
    block_s: float = Field(0.5, gt=0, le=10)
    ring_buffer_s: float = Field(30.0, ge=5, le=600)
    retry_initial_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(60.0, gt=0)

    @field_validator("device")
    @classmethod
    def _device_not_blank(cls, v):
        if isinstance(v, str) and not v.strip():
            raise ValueError("device must be an index, part of a device name, or null for the default input")
        if isinstance(v, int) and v < 0:
            raise ValueError("a device index is 0 or more (python -m edge devices lists them)")
        return v

    @field_validator("channel")
    @classmethod
    def _channel_in_range(cls, v, info):
        channels = info.data.get("channels")
        if v is not None and channels is not None and v >= channels:
            raise ValueError(f"channel {v} does not exist with channels: {channels} "
                             f"(numbered from 0: allowed 0..{channels - 1}, or null to mix all down)")
        return v

    @field_validator("retry_max_s")
    @classmethod
    def _retry_order(cls, v, info):
        first = info.data.get("retry_initial_s")
        if first is not None and v < first:
            raise ValueError(f"must be at least retry_initial_s ({first})")
        return v

    @field_validator("ring_buffer_s")
    @classmethod
    def _ring_holds_blocks(cls, v, info):
        block = info.data.get("block_s")
        if block is not None and v < 2 * block:
            raise ValueError(f"must hold at least two blocks (block_s is {block})")
        return v


class StoreConfig(_Section):
    path: Path = DEFAULT_STATE_DIR / "detections.db"


class ClipsConfig(_Section):
    enabled: bool = False
    dir: Path = DEFAULT_STATE_DIR / "clips"
    padding_s: float = Field(1.0, ge=0, le=30)
    max_disk_mb: float = Field(1024, gt=0)


class TLSConfig(_Section):
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    insecure: bool = False  # skip hostname verification (test brokers only)


class HomeAssistantConfig(_Section):
    enabled: bool = False
    discovery_prefix: str = "homeassistant"


class MQTTConfig(_Section):
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


class UpdatesConfig(_Section):
    enabled: bool = True
    channel: str = "stable"
    allow_downgrade: bool = False
    crash_loop_window_s: float = Field(300, gt=0)
    crash_loop_max: int = Field(3, ge=1)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


from edge.outputs.web.settings import WebConfig  # noqa: E402


class Config(_Section):
    device_id: str = Field("recorder", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    state_dir: Path = DEFAULT_STATE_DIR
    location: LocationConfig = LocationConfig()
    model: ModelConfig = ModelConfig()
    detection: DetectionConfig = DetectionConfig()
    audio: AudioConfig = AudioConfig()
    store: StoreConfig = StoreConfig()
    clips: ClipsConfig = ClipsConfig()
    mqtt: MQTTConfig = MQTTConfig()
    updates: UpdatesConfig = UpdatesConfig()
    logging: LoggingConfig = LoggingConfig()
    web: WebConfig = WebConfig()
    status_interval_s: float = Field(30, ge=1)


def format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid configuration:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; remove it or check its spelling (see config.example.yaml)")
            continue
        given = err.get("input")
        lines.append(f"  {key}: {err['msg']} (given: {given!r})")
    return "\n".join(lines)


def parse_config(data: object, origin: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the configuration ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_config(data, str(p))

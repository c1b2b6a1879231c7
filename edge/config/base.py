"""What every configuration section shares: the strict base model, the error, the paths, YAML reading.

A section is a ``Section`` subclass (unknown keys refused, assignments
validated). ``read_yaml`` and ``validate`` turn a file into a model and every
problem into one ``ConfigError`` that names the key by its dotted path, the
value given and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edge.config.safe_yaml import YAMLConfigError, cap, load_yaml

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the edge package
DEFAULT_BUNDLE = PACKAGE_DIR / "models" / "default.bundle"
DEFAULT_PUBLIC_KEY = PACKAGE_DIR / "models" / "default.pub"
DEFAULT_STATE_DIR = Path("/var/lib/dawnchorus")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


class Section(BaseModel):
    """One section of the configuration file: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


M = TypeVar("M", bound=BaseModel)


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


def validate(model: type[M], data: object, origin: str = "config") -> M:
    """``data`` (parsed YAML) as ``model``; raises ``ConfigError`` naming every bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(cap(format_validation_error(exc, origin))) from None


def read_yaml(path: str | Path) -> object:
    """The parsed YAML document at ``path``; raises ``ConfigError`` (one line naming the file) if it cannot
    be read or parsed: bounded size, UTF-8 only, duplicate keys and alias bombs refused (``safe_yaml``)."""
    try:
        return load_yaml(path)
    except YAMLConfigError as exc:
        raise ConfigError(str(exc)) from None

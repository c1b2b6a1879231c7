"""Shared fixtures. Each part keeps its own fixtures in tests/fixtures_<part>.py,
listed in pytest_plugins below."""
import pytest

pytest_plugins: list[str] = [
    "fixtures_mqtt",
    "fixtures_updates",
    "fixtures_alsa",
    "fixtures_trainer",
    "fixtures_replay",
    "fixtures_segment",
]

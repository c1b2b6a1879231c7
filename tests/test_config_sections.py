"""The configuration split by concern: one module per section, and the small settings ``trainer push`` reads."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import Config, ConfigError, Section, load_config, load_mqtt_settings

REPO = Path(__file__).resolve().parents[1]


def test_every_section_is_strict_and_in_its_own_module():
    for name, field in Config.model_fields.items():
        typ = field.annotation
        if isinstance(typ, type) and issubclass(typ, Section):
            assert typ.model_config["extra"] == "forbid", name
            assert typ.__module__.startswith("edge.config."), (name, typ.__module__)
            assert typ.__module__ != "edge.config.root", name


def test_push_settings_read_the_daemons_file(tmp_path):
    full = load_config(REPO / "config.example.yaml")
    s = load_mqtt_settings(REPO / "config.example.yaml")
    assert (s.device_id, s.mqtt, s.updates, s.model) == (full.device_id, full.mqtt, full.updates, full.model)


def test_push_settings_ignore_other_sections_but_check_their_own(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("device_id: r1\naudio: {device: 3}\nclips: {enabled: true}\nmqtt: {host: broker, port: 1884}\n")
    s = load_mqtt_settings(p)
    assert (s.device_id, s.mqtt.host, s.mqtt.port) == ("r1", "broker", 1884)
    p.write_text("mqtt: {hots: broker}\n")
    with pytest.raises(ConfigError, match=r"mqtt\.hots: unknown key"):
        load_mqtt_settings(p)
    p.write_text("mqtt: {port: 0}\n")
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_mqtt_settings(p)


def test_the_event_rule_bound_is_the_bundles():
    from edge.config.detection import MAX_MIN_WINDOWS
    from edge.contract.bundle import MAX_MIN_WINDOWS as BUNDLE_MAX

    assert MAX_MIN_WINDOWS == BUNDLE_MAX

"""The integrations' configuration keys: notify, store retention, location.timezone."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_example_documents_every_integration_key():
    cfg = load_config(REPO / "config.example.yaml")
    text = (REPO / "config.example.yaml").read_text()
    assert not cfg.notify.enabled and cfg.store.keep_days is None and cfg.location.timezone is None
    for key in [*type(cfg.notify).model_fields, "keep_days", "max_mb", "prune_interval_s", "timezone"]:
        assert f"\n  {key}:" in text, key


@pytest.mark.parametrize("data, match", [
    ({"notify": {"enabled": True}}, r"notify.*no notify\.urls or notify\.urls_file"),
    ({"notify": {"url": ["x"]}}, r"notify\.url: unknown key"),
    ({"notify": {"min_score": 2}}, r"notify\.min_score"),
    ({"store": {"keep_days": 0}}, r"store\.keep_days"),
    ({"store": {"max_mb": -1}}, r"store\.max_mb"),
    ({"location": {"timezone": "Europe/Berlln"}}, r"location\.timezone.*unknown time zone 'Europe/Berlln'"),
])
def test_bad_values_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_good_values():
    cfg = parse_config({"notify": {"enabled": True, "urls": ["ntfy://ntfy.sh/birds"], "watch_list": ["Coereba flaveola"]},
                        "store": {"keep_days": 30, "max_mb": 500}, "location": {"timezone": "America/Puerto_Rico"}})
    assert cfg.notify.watch_list == ["Coereba flaveola"] and cfg.store.max_mb == 500
    assert cfg.location.timezone == "America/Puerto_Rico"


def test_check_config_names_a_notify_url_apprise_cannot_use(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("apprise")
    urls = tmp_path / "urls"
    urls.write_text("# ok\njson://127.0.0.1:9/hook\nnotaservice://x\n")
    p = tmp_path / "c.yaml"
    p.write_text(f"notify: {{enabled: true, urls: ['ntfy://ntfy.sh/birds', 'bogus://token@host'], urls_file: {urls}}}\n"
                 "store: {keep_days: 30}\n")
    r = subprocess.run([sys.executable, "-m", "edge", "check-config", str(p)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert "notify.urls[1]: Apprise cannot use bogus://" in r.stderr and "token" not in r.stderr
    assert "notify.urls_file line 2: Apprise cannot use notaservice://" in r.stderr
    assert "notify.urls[0]" not in r.stderr and "retention up to 30 days" in r.stdout
    p.write_text("notify: {enabled: true, urls: ['ntfy://ntfy.sh/birds']}\n")
    r = subprocess.run([sys.executable, "-m", "edge", "check-config", str(p)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "notifications on" in r.stdout

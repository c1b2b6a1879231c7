"""The model page's facts: the active bundle's manifest and the model store's state file.

Read with zipfile and json only (the bundle was verified when the daemon
loaded it; this page only shows it), so the web process loads no numpy.
"""
from __future__ import annotations

import json
import logging
import zipfile
from typing import Any
from pathlib import Path

log = logging.getLogger(__name__)


def read_manifest(path: Path) -> dict | None:
    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("manifest.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        log.warning("cannot read the manifest of %s: %s", path, exc)
        return None


def read_state(models_dir: Path | None) -> dict | None:
    if not models_dir:
        return None
    try:
        return json.loads((Path(models_dir) / "state.json").read_text())
    except (OSError, ValueError):
        return None


def flat_metrics(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested metrics as (dotted name, value) rows, numbers and short strings only."""
    out: list[tuple[str, object]] = []
    for k, v in metrics.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += flat_metrics(v, name + ".")
        elif isinstance(v, (int, float, str)) and not isinstance(v, bool) and len(str(v)) < 120:
            out.append((name, v))
    return out


def model_facts(models_dir: Path | None, configured: Path | None) -> dict:
    state = read_state(models_dir)
    active = (state or {}).get("active")
    path = Path(active["file"]) if active and active.get("file") else configured
    manifest = read_manifest(path) if path else None
    facts: dict[str, Any] = {"path": str(path) if path else None, "manifest": manifest, "state": state, "installed": bool(active)}
    if manifest:
        names = {lab["label"]: lab for lab in manifest.get("labels", [])}
        thr = manifest.get("thresholds", {})
        facts["labels"] = [{"label": k, "common_name": names[k].get("common_name", ""),
                            "scientific_name": names[k].get("scientific_name", ""), "threshold": thr.get(k)}
                           for k in names]
        facts["metrics"] = flat_metrics(manifest.get("metrics", {}))
        facts["sha256"] = manifest.get("members", {}).get("model.tflite", {}).get("sha256", "")
    return facts


def label_names(models_dir: Path | None, configured: Path | None) -> list[dict]:
    """The model's labels (for naming the right species in a review)."""
    return model_facts(models_dir, configured).get("labels", [])

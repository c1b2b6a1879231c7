"""Where the clip of a detection lives: ``<dir>/<YYYY-MM-DD>/<YYYYmmddTHHMMSSZ>_<label>_<id8>.wav``.

Its own module (standard library only) so that readers of clips (the
dashboard, the review export) find them without importing the writer's numpy.
"""
from __future__ import annotations

import re
from pathlib import Path

from edge.contract.record import parse_utc

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def clip_path(directory: str | Path, start_utc: str, label: str, det_id: str) -> Path:
    """Where the clip of a detection is (or would be) written (``edge.outputs.clips.ClipWriter``)."""
    try:
        when = parse_utc(start_utc)
        stamp, day = when.strftime("%Y%m%dT%H%M%SZ"), when.strftime("%Y-%m-%d")
    except ValueError:
        stamp, day = "unknown", "unknown"
    return Path(directory) / day / f"{stamp}_{_SAFE.sub('_', label)}_{det_id[:8]}.wav"

"""Query parameters, checked: anything a page does not understand is a 400 naming it, never a traceback."""
from __future__ import annotations

import math
from datetime import date

from edge.outputs.reviews import LABEL_RE


class BadRequest(ValueError):
    """A request the dashboard refuses; the message is shown to the person (status 400)."""


def check_known(query, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(query.keys()) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}: this page takes {', '.join(allowed) or 'none'}")
    for k in query.keys():
        if len(query.getlist(k)) > 1:
            raise BadRequest(f"parameter {k!r} given more than once")


def get_date(query, name: str = "date") -> date | None:
    text = query.get(name, "").strip()
    if not text:
        return None
    try:
        d = date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name} must be a day as YYYY-MM-DD, not {text[:40]!r}") from None
    if not 1970 <= d.year <= 2200:
        raise BadRequest(f"{name} {text!r} is out of range (1970..2200)")
    return d


def get_score(query, name: str = "min_score") -> float | None:
    text = query.get(name, "").strip()
    if not text:
        return None
    try:
        v = float(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number between 0 and 1, not {text[:40]!r}") from None
    if math.isnan(v) or not 0 <= v <= 1:
        raise BadRequest(f"{name} must be between 0 and 1, not {text[:40]!r}")
    return v


def get_int(query, name: str, default: int, lo: int, hi: int) -> int:
    text = query.get(name, "").strip()
    if not text:
        return default
    if not text.lstrip("-").isdigit() or not lo <= int(text) <= hi:
        raise BadRequest(f"{name} must be a whole number from {lo} to {hi}, not {text[:40]!r}")
    return int(text)


def get_label(query, name: str = "species") -> str | None:
    text = query.get(name, "").strip()
    if not text:
        return None
    if not LABEL_RE.match(text):
        raise BadRequest(f"{name} must be a species label such as Coereba_flaveola, not {text[:40]!r}")
    return text


def check_label(text: str) -> str:
    if not LABEL_RE.match(text):
        raise BadRequest(f"not a species label: {text[:40]!r}")
    return text


def check_id(text: str) -> str:
    if not (8 <= len(text) <= 64) or not all(c.isalnum() or c == "-" for c in text):
        raise BadRequest(f"not a detection id: {text[:40]!r}")
    return text

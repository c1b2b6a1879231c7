"""The signed manifest's shape: every field the edge reads, with its type, checked before use.

A correctly signed manifest can still be wrong (a trainer bug, a hand-edited
file signed again): a hop that is a string, thresholds that are a list, a
version that is a number. ``check_manifest`` refuses each with a one-line
``ManifestError`` naming the field, what it holds and what is expected, so
nothing later meets a type it did not expect.
"""
from __future__ import annotations

import math
import re
from typing import Any

FORMAT = "dawnchorus-bundle"
FORMAT_VERSION = 1
REQUIRED = ("name", "version", "created_utc", "labels", "frontend", "hop_s", "thresholds", "tensors", "selftest",
            "members")
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest field of the wrong type or value; the message names it."""


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _want(ok: bool, field: str, value: Any, expected: str) -> None:
    if not ok:
        raise ManifestError(f"manifest field {field} is {type(value).__name__} {_show(value)}, expected {expected}")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) for x in v)


def check_manifest(m: Any, model: str, selftest: str) -> None:
    """Raise ManifestError unless ``m`` has every field the edge reads, of the right type."""
    if not isinstance(m, dict):
        raise ManifestError(f"manifest is {type(m).__name__}, not a JSON object")
    if m.get("format") != FORMAT:
        raise ManifestError(f"manifest format is {_show(m.get('format'))}, expected {FORMAT!r}")
    if m.get("format_version") != FORMAT_VERSION or isinstance(m.get("format_version"), bool):
        raise ManifestError(f"bundle format version {_show(m.get('format_version'))} is not supported "
                            f"(only {FORMAT_VERSION})")
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise ManifestError(f"manifest lacks {missing}")
    for key in ("name", "version", "created_utc"):
        _want(isinstance(m[key], str) and 0 < len(m[key]) <= 200, key, m[key], "a non-empty string")
    for key in ("training", "metrics"):
        _want(isinstance(m.get(key, {}), dict), key, m.get(key), "a mapping")
    _want(isinstance(m["frontend"], dict), "frontend", m["frontend"], "a mapping")
    _want(is_number(m["hop_s"]), "hop_s", m["hop_s"], "a number of seconds")
    if "window_s" in m:
        _want(is_number(m["window_s"]), "window_s", m["window_s"], "a number of seconds")
    labels = m["labels"]
    _want(isinstance(labels, list) and len(labels) > 0, "labels", labels, "a non-empty list")
    for lab in labels:
        if not isinstance(lab, dict) or set(lab) != {"label", "scientific_name", "common_name"} \
                or not all(isinstance(v, str) for v in lab.values()):
            raise ManifestError(f"malformed label entry {_show(lab)} (expected label, scientific_name and "
                                "common_name strings)")
    names = [lab["label"] for lab in labels]
    if len(set(names)) != len(names):
        raise ManifestError("duplicate labels in manifest")
    th = m["thresholds"]
    _want(isinstance(th, dict), "thresholds", th, "a mapping of label to a number in 0..1")
    bad = [k for k, v in th.items() if k not in names or not is_number(v) or not 0.0 <= v <= 1.0]
    if bad:
        raise ManifestError(f"thresholds for unknown labels or not a number in 0..1: {_show(bad)}")
    t = m["tensors"]
    _want(isinstance(t, dict), "tensors", t, "a mapping")
    for key in ("input_shape", "output_shape"):
        _want(_int_list(t.get(key)), f"tensors.{key}", t.get(key), "a list of integers")
    for key in ("input_dtype", "output_dtype"):
        _want(isinstance(t.get(key), str), f"tensors.{key}", t.get(key), "a string")
    if "output_kind" in t:
        _want(isinstance(t["output_kind"], str), "tensors.output_kind", t["output_kind"], "a string")
    st = m["selftest"]
    _want(isinstance(st, dict), "selftest", st, "a mapping")
    _want(_int_list(st.get("output")), "selftest.output", st.get("output"), "a list of integers")
    _want(_is_int(st.get("tolerance", 0)) and st.get("tolerance", 0) >= 0, "selftest.tolerance",
          st.get("tolerance"), "a non-negative integer")
    members = m["members"]
    _want(isinstance(members, dict), "members", members, "a mapping of member name to sha256 and size")
    for name in (model, selftest):
        if name not in members:
            raise ManifestError(f"manifest does not pin {name}")
    for name, pin in members.items():
        _want(bool(_MEMBER_NAME.match(name)), "members", name, "plain member names")
        _want(isinstance(pin, dict) and isinstance(pin.get("sha256"), str) and bool(_SHA256.match(pin["sha256"]))
              and _is_int(pin.get("size")) and pin["size"] >= 0,
              f"members.{name}", pin, "{sha256: 64 hex digits, size: bytes}")

"""The on-device models directory: atomic installs and a small state file.

Layout of ``models_dir``::

    <name>-<version>-<sha12>.bundle   installed bundles (active and previous only)
    state.json                        which bundle is active, which was before it

Every write is atomic: the bytes go to a temporary file in the same
directory, which is fsynced, renamed over its final name and then the
directory itself is fsynced. A crash (power cut, SIGKILL) at any point leaves
either the old file or the new one, never a half-written one; the state file
is switched only after the bundle it names is durable, so it always names
loadable files. Temporary leftovers are removed on the next start.

The state also carries the crash-loop counter: the starts of the daemon
since the last swap that have not (yet) reached "healthy". It lives on disk
so it survives the crashes it counts. Each start is [boot id, seconds since
boot] (``edge.clock``), never the wall clock: an NTP step (a Pi has no
real-time clock) cannot make it forget a crash.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from edge.contract.record import utc_now as record_utc_now

from edge import files
from edge.clock import boot_id, boot_time

log = logging.getLogger(__name__)

STATE_NAME = "state.json"
STATE_SCHEMA = 1
TMP_PREFIX = ".tmp-"
MAX_REFUSED = 32
MAX_ROLLBACKS = 16


def utc_now() -> str:
    """Whole seconds: the model state's times (``edge.contract.record.utc_now``)."""
    return record_utc_now(ms=False)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new content, whole and durable
    (``edge.files``; the temporary name starts with TMP_PREFIX, so a start removes leftovers)."""
    path = Path(path)
    files.atomic_write(path, data, durable=True, mode=0o600,
                       tmp=path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{threading.get_ident()}"))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)[:64] or "_"


def same(a: dict | None, b: dict | None) -> bool:
    """Two state entries name the same model (version and model hash)."""
    return bool(a and b and a["version"] == b["version"] and a["sha256"] == b["sha256"])


def entry_for(bundle, path: Path | str) -> dict[str, Any]:
    """The state's description of one bundle file."""
    return {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256,
            "file": str(path), "since_utc": utc_now()}


class ModelStore:
    """The models directory and its state file. Not thread-safe: one owner (the update service)."""

    def __init__(self, models_dir: str | Path, clock=boot_time):
        self.dir = Path(models_dir)
        self.state_path = self.dir / STATE_NAME
        self._clock = clock  # seconds since boot: a wall-clock step cannot make the counter forget a crash
        self._boot = boot_id()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = self._read_state()

    # -- state file -------------------------------------------------------
    def _read_state(self) -> dict[str, Any]:
        empty: dict[str, Any] = {"schema": STATE_SCHEMA, "active": None, "previous": None, "swap_utc": None,
                 "healthy": True, "starts": [], "refused": [], "rollbacks": [], "last_update": None}
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return empty
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
                raise ValueError(f"unknown state schema {data.get('schema') if isinstance(data, dict) else data!r}")
        except ValueError as exc:
            # Cannot happen through our own atomic writes; keep the file for a human and start over.
            bad = self.state_path.with_suffix(".corrupt")
            os.replace(self.state_path, bad)
            log.error("model state %s unreadable (%s); moved to %s, starting from the configured model",
                      self.state_path, exc, bad)
            return empty
        return {**empty, **data}

    def save(self) -> None:
        atomic_write(self.state_path, json.dumps(self.state, indent=1, sort_keys=True).encode())

    @property
    def active(self) -> dict | None:
        return self.state.get("active")

    @property
    def previous(self) -> dict | None:
        return self.state.get("previous")

    def is_refused(self, version: str, sha256: str) -> bool:
        """True for a model this device rolled back from: it is never re-installed by itself."""
        return f"{version}@{sha256}" in self.state["refused"]

    # -- files ------------------------------------------------------------
    def install(self, data: bytes, bundle) -> Path:
        """Write a verified bundle's bytes durably into the models directory; returns its path."""
        path = self.dir / f"{_safe(bundle.name)}-{_safe(bundle.version)}-{bundle.sha256[:12]}.bundle"
        if path.exists() and path.read_bytes() == data:
            return path
        atomic_write(path, data)
        log.info("installed %s %s as %s", bundle.name, bundle.version, path)
        return path

    def cleanup(self) -> None:
        """Remove temporary leftovers of interrupted writes, and bundles the state no longer names."""
        keep = {Path(e["file"]).name for e in (self.active, self.previous) if e}
        for p in self.dir.iterdir():
            stale_tmp = p.name.startswith(TMP_PREFIX)
            unused = p.suffix == ".bundle" and p.name not in keep
            if stale_tmp or unused:
                try:
                    p.unlink()
                    log.info("removed %s %s", "interrupted write" if stale_tmp else "unused bundle", p.name)
                except OSError as exc:
                    log.warning("cannot remove %s: %s", p, exc)

    # -- transitions ------------------------------------------------------
    def record_running(self, entry: dict) -> None:
        """Name the bundle running now as active when the state disagrees (first start, fallback)."""
        act = self.active
        if act is not None and same(act, entry) and act["file"] == entry["file"]:
            return
        self.state.update(active=entry, healthy=True, starts=[])
        if same(self.previous, entry):
            self.state["previous"] = None
        self.save()

    def activate(self, entry: dict) -> None:
        """A new bundle becomes active; the old one is kept as previous. This run counts as a start."""
        old = self.active
        self.state.update(previous=old if old and not same(old, entry) else self.previous,
                          active=entry, swap_utc=utc_now(), healthy=False, starts=[self._stamp()])
        self.save()
        self.cleanup()

    def rollback(self, reason: str) -> dict | None:
        """Make the previous bundle active again; the failed one is never re-installed by itself."""
        bad, prev = self.active, self.previous
        if bad:
            self.state["refused"] = (self.state["refused"] + [f"{bad['version']}@{bad['sha256']}"])[-MAX_REFUSED:]
        self.state.update(active=prev, previous=None, healthy=True, starts=[])
        self.state["rollbacks"] = (self.state["rollbacks"] + [{
            "utc": utc_now(), "reason": reason,
            "from": bad and {k: bad[k] for k in ("version", "sha256")},
            "to": prev and {k: prev[k] for k in ("version", "sha256")},
        }])[-MAX_ROLLBACKS:]
        self.save()
        self.cleanup()
        log.warning("rolled back from %s to %s: %s", bad and bad["version"], prev and prev["version"], reason)
        return prev

    # -- crash-loop counter -----------------------------------------------
    def record_start(self, window_s: float, max_crashes: int) -> str | None:
        """Count this start. Returns the reason to roll back when the active model is crash-looping.

        Each earlier start since the swap that neither reached healthy nor
        stopped cleanly ended in a crash; those within ``window_s`` count.
        """
        if self.state["healthy"] or not self.active:
            return None
        now = self._stamp()
        crashes = [s for s in self.state["starts"] if self._within(s, now, window_s)]
        self.state["starts"] = crashes + [now]
        self.save()
        if len(crashes) >= max_crashes:
            return (f"crash loop: {len(crashes)} crash(es) within {window_s:g} s of running "
                    f"{self.active['version']} (limit {max_crashes})")
        return None

    def _stamp(self) -> list:
        """A start: [boot id, seconds since boot] (never the wall clock, which NTP steps)."""
        return [self._boot, self._clock()]

    @staticmethod
    def _within(start, now: list, window_s: float) -> bool:
        """A start of this boot counts within ``window_s``; one of another boot (the interval is unknown: the
        device was off in between) or an old wall-clock number counts too (the safe side: a rollback)."""
        if isinstance(start, (list, tuple)) and len(start) == 2 and start[0] == now[0]:
            return now[1] - start[1] <= window_s
        return True

    def record_clean_stop(self) -> None:
        """A clean stop is not a crash: forget this run's start."""
        if not self.state["healthy"] and self.state["starts"]:
            self.state["starts"] = self.state["starts"][:-1]
            self.save()

    def mark_healthy(self) -> None:
        if not self.state["healthy"]:
            self.state.update(healthy=True, starts=[])
            self.save()
            log.info("model %s is healthy; crash-loop counter cleared", self.active and self.active["version"])

    def set_last_update(self, report: dict) -> None:
        self.state["last_update"] = report
        self.save()

"""Retention: prune old detections (and their clips) by age and by the store's size, losing nothing owed.

``store.keep_days`` removes detections stored more than that many days ago;
``store.max_mb`` removes the oldest until the database's used pages fit
(SQLite reuses the freed pages, so the file stops growing at the cap; it is
not shrunk). Oldest first means in the order they were stored (``seq``), and
age is the time they were stored (``created_utc``): replaying a 2016 archive
does not see it deleted at the next pass.

Never deleted:

* a detection not yet acknowledged by the MQTT broker (``published_utc`` is
  NULL) while MQTT is enabled: the outbox is the store;
* a detection with a review (the ``reviews`` table, ``edge.outputs.reviews``),
  nor its clip: reviews and their clips are the training data the dashboard
  collects. If a ``reviews`` table exists but has no ``detection_id`` column,
  nothing is pruned (and the log says why) rather than guess;
* the effort and gaps rows (small, and needed to read the detections).

Clips of deleted detections (``edge.outputs.clip_paths``) are deleted with
them; a reviewed detection's clip copy (``edge.outputs.reviews``) is never
touched.

``Retention`` is a service: ``start()`` prunes once on its own thread at
start, then every ``interval_s``; ``prune()`` does one pass and returns what
it did. Deletes go in small transactions so the daemon's inserts never wait
long.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from edge.contract.record import format_utc
from edge.types import Service

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class PruneReport:
    """What one pass did."""

    deleted: int = 0
    by_age: int = 0
    by_size: int = 0
    clips_deleted: int = 0
    clip_bytes: int = 0
    db_used_mb: float = 0.0
    #: over the size cap but the rest is protected (unpublished or reviewed)
    over_cap: bool = False
    skipped: str = ""  # why nothing was pruned
    ids: list[str] = field(default_factory=list)


class Retention(Service):
    """Prunes one store (and its clips directory) by ``keep_days`` and ``max_mb``."""

    name = "retention"

    def __init__(self, store: Any, *, keep_days: Optional[float] = None, max_mb: Optional[float] = None,
                 clips_dir: Optional[str | Path] = None, mqtt_enabled: bool = False, interval_s: float = 3600.0,
                 stop: Optional[threading.Event] = None, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        """``store``: an ``edge.outputs.store.Store`` or a zero-argument callable opening one (on the service's thread)."""
        self._store_arg = store
        self._store = None
        self.keep_days = keep_days or None
        self.max_bytes = int(max_mb * 1e6) if max_mb else None
        self.clips_dir = Path(clips_dir) if clips_dir else None
        self.protect_unpublished = mqtt_enabled
        self.interval_s = interval_s
        self.stop_event = stop or threading.Event()
        self._clock = clock
        self._thread: Optional[threading.Thread] = None
        self.reports: list[PruneReport] = []
        self._warned_cap = False

    @classmethod
    def from_config(cls, cfg: Any, store: Any = None, stop: Optional[threading.Event] = None) -> Optional["Retention"]:
        """From the daemon's ``Config``; None when neither ``store.keep_days`` nor ``store.max_mb`` is set."""
        sc = cfg.store
        if not (getattr(sc, "keep_days", None) or getattr(sc, "max_mb", None)):
            return None
        from edge.outputs.store import Store

        path = sc.path
        return cls(store if store is not None else (lambda: Store(path)), keep_days=sc.keep_days, max_mb=sc.max_mb,
                   clips_dir=cfg.clips.dir, mqtt_enabled=cfg.mqtt.enabled,
                   interval_s=getattr(sc, "prune_interval_s", 3600.0), stop=stop)

    # ---- service -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def handle(self, detections) -> None:  # the runtime hands every service new detections; not needed here
        pass

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.reports.append(self.prune())
                del self.reports[:-10]
            except Exception:  # noqa: BLE001 - a failed pass is retried at the next interval
                log.exception("retention: pruning failed; trying again in %gs", self.interval_s)
            if self.stop_event.wait(self.interval_s):
                break
        if self._store is not None and self._store is not self._store_arg:
            self._store.close()

    # ---- one pass ------------------------------------------------------------------
    @property
    def store(self):
        if self._store is None:
            o = self._store_arg
            self._store = o if hasattr(o, "db") else o()
        return self._store

    def prune(self) -> PruneReport:
        """One pass: by age, then by size; deletes the clips of what it deleted."""
        rep = PruneReport()
        db = self.store.db
        protect, why = self._protection(db)
        if protect is None:
            rep.skipped = why
            log.error("retention: %s; nothing pruned", why)
            return rep
        if self.keep_days:
            cutoff = format_utc(self._clock() - timedelta(days=self.keep_days))
            rep.by_age = self._delete(db, protect, rep, lambda rows: [r for r in rows if r[3] < cutoff],
                                      stop_at=lambda r: r[3] >= cutoff)
        if self.max_bytes:
            while self._used_bytes(db) > self.max_bytes and not self.stop_event.is_set():
                n = self._delete(db, protect, rep, lambda rows: rows, limit=self._rows_over(db))
                rep.by_size += n
                if n == 0:
                    rep.over_cap = True
                    break
            if rep.over_cap and not self._warned_cap:
                self._warned_cap = True
                log.warning("retention: the store uses %.1f MB, over store.max_mb (%.1f), but every detection left is "
                            "%s; nothing more can be pruned", self._used_bytes(db) / 1e6, self.max_bytes / 1e6,
                            "unpublished (MQTT outbox) or reviewed" if self.protect_unpublished else "reviewed")
        rep.deleted = rep.by_age + rep.by_size
        rep.db_used_mb = round(self._used_bytes(db) / 1e6, 3)
        if rep.deleted or rep.clips_deleted:
            log.info("retention: deleted %d detections (%d by age, %d by size) and %d clips (%.1f MB); store uses "
                     "%.1f MB", rep.deleted, rep.by_age, rep.by_size, rep.clips_deleted, rep.clip_bytes / 1e6,
                     rep.db_used_mb)
        return rep

    def _protection(self, db) -> tuple[Optional[str], str]:
        """The SQL condition a prunable row meets, or (None, why) when pruning would be unsafe."""
        conds = ["1"]
        if self.protect_unpublished:
            conds.append("d.published_utc IS NOT NULL")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
        if "reviews" in tables:
            cols = {r[1] for r in db.execute("PRAGMA table_info(reviews)").fetchall()}
            if "detection_id" not in cols:
                return None, "the reviews table has no detection_id column, so reviewed detections cannot be told apart"
            conds.append("NOT EXISTS (SELECT 1 FROM reviews r WHERE r.detection_id = d.id)")
        return " AND ".join(conds), ""

    def _delete(self, db, protect: str, rep: PruneReport, choose, *, limit: int = 1 << 62,
                stop_at=lambda r: False) -> int:
        """Delete prunable rows oldest first (by seq) in small transactions; returns how many."""
        done = 0
        after = 0
        while done < limit and not self.stop_event.is_set():
            rows = db.execute(
                f"SELECT d.seq, d.id, d.start_utc, d.created_utc, d.label FROM detections d WHERE d.seq > ? AND {protect} "
                f"ORDER BY d.seq LIMIT ?", [after, min(BATCH, limit - done)]).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            chosen = choose(rows)
            if chosen:
                with getattr(self.store, "_lock", contextlib.nullcontext()):
                    gone = self._delete_rows(db, protect, [r[0] for r in chosen])
                deleted = [r for r in chosen if r[0] in gone]
                done += len(deleted)
                rep.ids.extend(r[1] for r in deleted)
                self._delete_clips(deleted, rep)
            if len(chosen) < len(rows) or any(stop_at(r) for r in rows):
                break
        return done

    @staticmethod
    def _delete_rows(db, protect: str, seqs: list[int]) -> set[int]:
        """Delete these rows if they are still prunable (checked inside the transaction: a row may have been
        reviewed, or requeued to the outbox, since it was read); returns the seqs deleted."""
        db.execute("BEGIN IMMEDIATE")
        try:
            marks = ",".join("?" * len(seqs))
            still = [s for (s,) in db.execute(
                f"SELECT d.seq FROM detections d WHERE d.seq IN ({marks}) AND {protect}", seqs).fetchall()]
            if still:
                db.execute(f"DELETE FROM detections WHERE seq IN ({','.join('?' * len(still))})", still)
            db.execute("COMMIT")
        except BaseException:
            db.conn.rollback()
            raise
        return set(still)

    # ---- size --------------------------------------------------------------------------
    @staticmethod
    def _used_bytes(db) -> int:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        count = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((count - free) * page)

    def _rows_over(self, db) -> int:
        """About how many rows to delete to get under the cap (at least a batch's worth of progress)."""
        used = self._used_bytes(db)
        n = db.execute("SELECT count(*) FROM detections").fetchone()[0] or 1
        per_row = max(1.0, used / n)
        return max(100, int((used - (self.max_bytes or used)) / per_row * 1.1) + 1)

    # ---- clips ---------------------------------------------------------------------------
    def _delete_clips(self, rows, rep: PruneReport) -> None:
        if self.clips_dir is None or not rows:
            return
        from edge.outputs.clip_paths import clip_path

        for _seq, det_id, start_utc, _created, label in rows:
            p = clip_path(self.clips_dir, start_utc, label, det_id)
            try:
                size = p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("retention: cannot delete clip %s: %s", p, exc)
                continue
            rep.clips_deleted += 1
            rep.clip_bytes += size
            day = p.parent
            try:
                os.rmdir(day)  # only when empty
            except OSError:
                pass


def service_factory(ctx: Any) -> Optional[Retention]:
    """For the daemon's service list: retention when ``store.keep_days`` or ``store.max_mb`` is set."""
    return Retention.from_config(ctx.cfg, stop=ctx.stop)

"""The SQLite store: detections (also the MQTT outbox), listening effort, gaps.

One file, WAL mode, schema version in ``PRAGMA user_version`` and the
migrations that reach it in ``MIGRATIONS`` below (the only place the SQL
schema lives). Opening a store migrates it; a store newer than this code is
refused rather than guessed at.

Detections are keyed by their stable ``id`` (see ``edge.detection.postprocess``):
inserting one that is already there changes nothing, so replays and
retries never duplicate. ``seq`` orders rows by insertion; the outbox is the
rows whose ``published_utc`` is NULL, drained oldest first.

A ``Store`` may be shared by threads (one connection behind a lock); other
processes may open the same file (WAL, busy timeout).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

from edge.contract.record import DETECTION_FIELDS, Detection, utc_now

log = logging.getLogger(__name__)

#: the record's fields, one column each (``tests/test_record.py`` checks the CREATE TABLE below against them)
DETECTION_COLUMNS = DETECTION_FIELDS
#: the columns the store adds: insertion order, and the outbox's state
STORE_COLUMNS = ("seq", "published_utc", "acked_t")

MIGRATIONS: list[str] = [
    # 1: detections (and the outbox), effort, gaps
    """
    CREATE TABLE detections (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        device_id TEXT NOT NULL,
        source TEXT NOT NULL,
        start_utc TEXT NOT NULL,
        end_utc TEXT NOT NULL,
        offset_s REAL NOT NULL,
        end_offset_s REAL NOT NULL,
        label TEXT NOT NULL,
        common_name TEXT NOT NULL,
        score REAL NOT NULL,
        mean_score REAL NOT NULL,
        n_windows INTEGER NOT NULL,
        model_version TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        created_utc TEXT NOT NULL,
        time_source TEXT NOT NULL,
        published_utc TEXT
    );
    CREATE INDEX detections_start ON detections(start_utc);
    CREATE INDEX detections_label_start ON detections(label, start_utc);
    CREATE INDEX detections_source ON detections(source, offset_s);
    CREATE INDEX detections_outbox ON detections(seq) WHERE published_utc IS NULL;
    CREATE TABLE effort (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        source TEXT NOT NULL,
        start_utc TEXT NOT NULL,
        end_utc TEXT,
        model_version TEXT,
        model_sha256 TEXT,
        settings TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX effort_start ON effort(start_utc);
    CREATE TABLE gaps (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        source TEXT NOT NULL,
        start_utc TEXT NOT NULL,
        end_utc TEXT NOT NULL,
        reason TEXT NOT NULL,
        samples_lost INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX gaps_start ON gaps(start_utc);
    """,
    # 2: the outbox remembers when the broker FIRST acknowledged each detection, on the re-send window's
    # timeline (edge.clock.OutboxClock: monotonic seconds continued across restarts), so the
    # window survives a restart and a clock step, and a re-send does not refresh it
    """
    ALTER TABLE detections ADD COLUMN acked_t REAL;
    CREATE INDEX detections_acked ON detections(acked_t) WHERE acked_t IS NOT NULL;
    CREATE INDEX detections_outbox_new ON detections(seq) WHERE published_utc IS NULL AND acked_t IS NULL;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """A store that cannot be opened or used; the message says why."""


class Store:
    """Detections, effort and gaps in one SQLite file."""

    def __init__(self, path: str | Path, *, timeout_s: float = 10.0):
        from sqlite_utils import Database

        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=timeout_s, check_same_thread=False)
            self.db = Database(conn, execute_plugins=False)
            self.db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("%s: journal mode is %s, not WAL", self.path, mode)
            self.db.execute("PRAGMA synchronous = NORMAL")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open the store ({exc})") from exc
        self._lock = threading.RLock()
        self.migrate()

    # -- schema -----------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        with self._lock:
            try:
                version = self.schema_version
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path}: not an SQLite database ({exc})") from exc
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this dawnchorus ({SCHEMA_VERSION}); upgrade it"
                )
            for v in range(version, SCHEMA_VERSION):
                try:
                    self.db.execute("BEGIN IMMEDIATE")
                    for stmt in MIGRATIONS[v].split(";"):
                        if stmt.strip():
                            self.db.execute(stmt)
                    self.db.execute(f"PRAGMA user_version = {v + 1}")
                    self.db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self.db.conn.rollback()
                    raise StoreError(f"{self.path}: migration to schema {v + 1} failed ({exc})") from exc
                log.info("%s: migrated to schema version %d", self.path, v + 1)

    # -- detections -------------------------------------------------------
    def insert(self, detections: Iterable[Detection]) -> list[Detection]:
        """Insert detections not yet stored (by id); returns the new ones, in order."""
        rows = list(detections)
        if not rows:
            return []
        sql = (f"INSERT OR IGNORE INTO detections ({', '.join(DETECTION_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(DETECTION_COLUMNS))})")
        new: list[Detection] = []
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for d in rows:
                    cur = self.db.execute(sql, [getattr(d, c) for c in DETECTION_COLUMNS])
                    if cur.rowcount == 1:
                        new.append(d)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.conn.rollback()
                raise
        return new

    # -- the outbox (edge.outputs.mqtt.publisher) ---------------------------
    def unpublished(self, limit: int = 100) -> list[dict]:
        """The outbox, oldest first (with ``seq``): never acknowledged rows first, then re-sends.

        A re-send (a row the broker acknowledged once, back after a crash)
        never jumps ahead of the real backlog.
        """
        sql = "SELECT * FROM detections WHERE published_utc IS NULL AND acked_t IS {} NULL ORDER BY seq LIMIT ?"
        with self._lock:
            rows = list(self.db.query(sql.format(""), [int(limit)]))
            if len(rows) < limit:
                rows += self.db.query(sql.format("NOT"), [int(limit) - len(rows)])
            return rows

    def mark_published(self, ids: Iterable[str], when: str | None = None, acked_t: float | None = None) -> int:
        """Record the broker's acknowledgement; returns how many rows changed.

        ``when``: wall-clock UTC (``published_utc``, for people). ``acked_t``:
        the re-send window's time (``OutboxClock``), kept from the FIRST
        acknowledgement: a re-send never refreshes it.
        """
        ids = list(ids)
        if not ids:
            return 0
        when = when or utc_now()
        n = 0
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(ids), 500):
                    part = ids[i : i + 500]
                    cur = self.db.execute(
                        f"UPDATE detections SET published_utc = ?, acked_t = coalesce(acked_t, ?) "
                        f"WHERE published_utc IS NULL AND id IN ({', '.join('?' * len(part))})", [when, acked_t, *part])
                    n += cur.rowcount
                self.db.execute("COMMIT")
            except BaseException:
                self.db.conn.rollback()
                raise
        return n

    def _requeue(self, where: str, arg) -> list[str]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                ids = [r[0] for r in self.db.execute(
                    f"SELECT id FROM detections WHERE published_utc IS NOT NULL AND {where} ORDER BY seq", [arg]
                ).fetchall()]
                if ids:
                    self.db.execute(f"UPDATE detections SET published_utc = NULL "
                                    f"WHERE published_utc IS NOT NULL AND {where}", [arg])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.conn.rollback()
                raise
        return ids

    def requeue_published_since(self, since_utc: str) -> list[str]:
        """Put detections marked published at or after ``since_utc`` (ISO UTC, compared as text) back in the outbox."""
        return self._requeue("published_utc >= ?", since_utc)

    def requeue_acked_since(self, since_t: float) -> list[str]:
        """Put detections FIRST acknowledged at or after ``since_t`` (``acked_t``) back in the outbox; their ids.

        For re-sending what a crashed broker acknowledged but may have lost
        (``mqtt.resend_window_s``). Rows in the outbox already are left alone.
        """
        return self._requeue("acked_t >= ?", float(since_t))

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another process's lock (``edge.outputs.journal.StoreGuard`` shortens it
        while the store is failing, so retries do not stall the audio)."""
        with self._lock:
            self.db.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def last_acked_t(self) -> float | None:
        """The latest first acknowledgement (``acked_t``) stored, or None."""
        with self._lock:
            v = self.db.execute("SELECT max(acked_t) FROM detections WHERE acked_t IS NOT NULL").fetchone()[0]
        return None if v is None else float(v)

    def outbox_depth(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT count(*) FROM detections WHERE published_utc IS NULL").fetchone()[0])

    def detections(self, *, label: str | None = None, source: str | None = None, since: str | None = None,
                   until: str | None = None, limit: int | None = None, order: str = "start_utc") -> list[dict]:
        """Stored detections, filtered; times are ISO UTC strings compared as text."""
        where, params = [], []
        for col, op, val in (("label", "=", label), ("source", "=", source),
                             ("start_utc", ">=", since), ("start_utc", "<", until)):
            if val is not None:
                where.append(f"{col} {op} ?")
                params.append(val)
        if order not in ("start_utc", "seq", "offset_s"):
            raise ValueError(f"order must be start_utc, seq or offset_s, not {order!r}")
        sql = "SELECT * FROM detections" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY {order}, seq" + (f" LIMIT {int(limit)}" if limit else "")
        with self._lock:
            return list(self.db.query(sql, params))

    def count(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT count(*) FROM detections").fetchone()[0])

    def species_counts(self) -> dict[str, int]:
        with self._lock:
            return {r["label"]: r["n"] for r in self.db.query(
                "SELECT label, count(*) AS n FROM detections GROUP BY label ORDER BY n DESC, label")}

    # -- effort and gaps --------------------------------------------------
    def open_effort(self, *, id: str, device_id: str, source: str, start_utc: str, model_version: str | None = None,
                    model_sha256: str | None = None, settings: dict | None = None, end_utc: str | None = None) -> str:
        """Start (or, same id, replace) a listening session; returns its id."""
        with self._lock:
            self.db.execute(
                "INSERT OR REPLACE INTO effort (id, device_id, source, start_utc, end_utc, model_version, model_sha256,"
                " settings) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [id, device_id, source, start_utc, end_utc, model_version, model_sha256,
                 json.dumps(settings or {}, sort_keys=True, default=str)])
        return id

    def close_effort(self, id: str, end_utc: str | None = None) -> None:
        with self._lock:
            self.db.execute("UPDATE effort SET end_utc = ? WHERE id = ?", [end_utc or utc_now(), id])

    def effort(self) -> list[dict]:
        with self._lock:
            return list(self.db.query("SELECT * FROM effort ORDER BY start_utc"))

    def add_gap(self, *, device_id: str, source: str, start_utc: str, end_utc: str, reason: str,
                samples_lost: int = 0) -> int:
        with self._lock:
            cur = self.db.execute(
                "INSERT INTO gaps (device_id, source, start_utc, end_utc, reason, samples_lost) VALUES (?, ?, ?, ?, ?, ?)",
                [device_id, source, start_utc, end_utc, reason, int(samples_lost)])
            return int(cur.lastrowid or 0)

    def gaps(self) -> list[dict]:
        with self._lock:
            return list(self.db.query("SELECT * FROM gaps ORDER BY start_utc"))

    def close(self) -> None:
        with self._lock:
            try:
                self.db.conn.close()
            except sqlite3.Error:  # pragma: no cover
                pass

"""Reviews of detections by a person: correct, wrong, or another species. Their own table.

A review never changes the detection row: each mark is a new row in
``reviews`` (the newest per detection is the one that counts; the history
stays). When a review is made, the detection's clip is copied into the
reviewed-clips folder, outside the clips' disk budget, so the labelled audio
outlives the ring of clips.

``export_reviews`` writes the reviewed clips as a folder-per-class dataset,
the layout ``trainer.data.read_folder_layout`` reads::

    OUT/<Scientific name>_<Common name>/<detection id>.wav   correct, or the species named
    OUT/.wrong/<label>/<detection id>.wav                      wrong with no species named
                                                               (a dot folder: the trainer skips it)
    OUT/reviews.csv                                            one row per exported review

Schema: the store's own tables are versioned by ``PRAGMA user_version``
(``edge.outputs.store``); tables and indexes added by other parts are versioned
per part in ``aux_schema`` (``migrate_aux``), so the two never collide.
"""
from __future__ import annotations

import csv
import logging
import re
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from edge.contract.record import utc_now
from edge.files import atomic_file

log = logging.getLogger(__name__)

VERDICTS = ("correct", "wrong", "species")
LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9 _.'()-]{1,80}$")

MIGRATIONS: list[str | list[str]] = [
    """
    CREATE TABLE IF NOT EXISTS reviews (
        id INTEGER PRIMARY KEY,
        detection_id TEXT NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('correct', 'wrong', 'species')),
        label TEXT,
        common_name TEXT NOT NULL DEFAULT '',
        created_utc TEXT NOT NULL,
        reviewer TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX IF NOT EXISTS reviews_detection ON reviews(detection_id, id);
    """,
]


class ReviewError(ValueError):
    """A review that cannot be recorded; the message says why."""


def connect(path: str | Path, *, timeout_s: float = 10.0, readonly: bool = False) -> sqlite3.Connection:
    """A plain sqlite3 connection to the store (rows as sqlite3.Row), shared by threads behind the caller's lock."""
    uri = f"file:{Path(path).resolve()}" + ("?mode=ro" if readonly else "")
    conn = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    return conn


def migrate_aux(conn: sqlite3.Connection, name: str, migrations: list[str | list[str]]) -> int:
    """Bring part ``name``'s tables/indexes to ``len(migrations)``; returns how many steps ran.

    A step is SQL text split on ``;``, or a list of statements (for triggers, whose bodies hold ``;``).
    All of a step runs in one transaction with its version bump.
    """
    conn.execute("CREATE TABLE IF NOT EXISTS aux_schema (name TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM aux_schema WHERE name = ?", [name]).fetchone()
    have = int(row[0]) if row else 0
    if have > len(migrations):
        raise sqlite3.DatabaseError(f"{name} schema version {have} is newer than this dawnchorus ({len(migrations)})")
    for v in range(have, len(migrations)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            step = migrations[v]
            for stmt in (step.split(";") if isinstance(step, str) else step):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("INSERT OR REPLACE INTO aux_schema (name, version) VALUES (?, ?)", [name, v + 1])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("store: %s schema now version %d", name, v + 1)
    return len(migrations) - have


@dataclass
class Reviews:
    conn: sqlite3.Connection
    kept_dir: Path | None = None  # where reviewed clips are copied
    clips_dir: Path | None = None

    def __post_init__(self) -> None:
        migrate_aux(self.conn, "reviews", MIGRATIONS)

    def add(self, detection_id: str, verdict: str, label: str | None = None, common_name: str = "", *,
            reviewer: str = "", note: str = "") -> int:
        """Record a review; returns its id. Refuses an unknown detection, verdict or label."""
        if verdict not in VERDICTS:
            raise ReviewError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
        det = self.conn.execute("SELECT id, label, common_name, start_utc FROM detections WHERE id = ?",
                                [detection_id]).fetchone()
        if det is None:
            raise ReviewError(f"no detection with id {detection_id!r}")
        if verdict == "correct":
            label, common_name = det["label"], det["common_name"]
        elif verdict == "wrong":
            label, common_name = None, ""
        else:
            label = (label or "").strip().replace(" ", "_")
            if not LABEL_RE.match(label):
                raise ReviewError("name the right species by its label, e.g. Coereba_flaveola (letters, digits, _ - .)")
            if label == det["label"]:
                verdict, common_name = "correct", det["common_name"]
            elif not common_name:
                known = self.conn.execute("SELECT common_name FROM detections WHERE label = ? LIMIT 1",
                                          [label]).fetchone()
                common_name = known[0] if known else ""
        cur = self.conn.execute(
            "INSERT INTO reviews (detection_id, verdict, label, common_name, created_utc, reviewer, note) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", [detection_id, verdict, label, common_name or "", utc_now(), reviewer, note[:500]])
        self._keep_clip(det)
        return int(cur.lastrowid or 0)

    def _keep_clip(self, det) -> None:
        if not (self.kept_dir and self.clips_dir):
            return
        from edge.outputs.clip_paths import clip_path

        src = clip_path(self.clips_dir, det["start_utc"], det["label"], det["id"])
        dst = self.kept_dir / f"{det['id']}.wav"
        if dst.exists() or not src.exists():
            return
        try:
            self.kept_dir.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fsrc, atomic_file(dst) as fdst:
                shutil.copyfileobj(fsrc, fdst)
        except OSError as exc:
            log.error("cannot keep the clip of reviewed detection %s: %s", det["id"], exc)

    def latest(self, detection_id: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM reviews WHERE detection_id = ? ORDER BY id DESC LIMIT 1",
                                [detection_id]).fetchone()
        return dict(row) if row else None

    def latest_for(self, ids: Iterable[str]) -> dict[str, dict]:
        ids = list(ids)
        out: dict[str, dict] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for row in self.conn.execute(
                    f"SELECT r.* FROM reviews r JOIN (SELECT detection_id, max(id) AS id FROM reviews "
                    f"WHERE detection_id IN ({', '.join('?' * len(part))}) GROUP BY detection_id) m ON r.id = m.id", part):
                out[row["detection_id"]] = dict(row)
        return out

    def latest_all(self) -> list[dict]:
        """The newest review of every reviewed detection, with the detection's fields (d_ prefix)."""
        return [dict(r) for r in self.conn.execute(
            "SELECT r.*, d.label AS d_label, d.common_name AS d_common_name, d.score AS d_score, "
            "d.start_utc AS d_start_utc, d.end_utc AS d_end_utc, d.model_version AS d_model_version "
            "FROM reviews r JOIN (SELECT detection_id, max(id) AS id FROM reviews GROUP BY detection_id) m "
            "ON r.id = m.id LEFT JOIN detections d ON d.id = r.detection_id ORDER BY r.id")]

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(DISTINCT detection_id) FROM reviews").fetchone()[0])


@dataclass
class ExportSummary:
    out: Path
    written: int = 0
    per_class: dict = field(default_factory=dict)
    wrong: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (detection id, reason)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9 _.'()-]+", "_", text).strip() or "_"


def class_folder(label: str, common_name: str) -> str:
    """``Scientific name_Common name`` (the trainer reads both), or the label alone."""
    sci = label.replace("_", " ")
    return _safe(f"{sci}_{common_name}") if common_name and " " in sci else _safe(label)


def export_reviews(reviews: Reviews, out: Path) -> ExportSummary:
    """Copy each reviewed clip into ``out`` by class; see the module doc for the layout."""
    from edge.outputs.clip_paths import clip_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(out)
    rows = []
    latest = reviews.latest_all()
    names: dict[str, str] = {}  # one folder per label, whatever name each review carried
    for r in latest:
        if r["label"] and r["common_name"]:
            names.setdefault(r["label"], r["common_name"])
    for r in latest:
        det_id = r["detection_id"]
        candidates = []
        if reviews.kept_dir:
            candidates.append(reviews.kept_dir / f"{det_id}.wav")
        if reviews.clips_dir and r["d_label"] is not None:
            candidates.append(clip_path(reviews.clips_dir, r["d_start_utc"], r["d_label"], det_id))
        src = next((c for c in candidates if c.exists()), None)
        if src is None:
            summary.missing.append((det_id, "its clip is gone (clips off, or removed by the disk budget before the review)"))
            continue
        if r["verdict"] == "wrong":
            folder = Path(".wrong") / _safe(r["d_label"] or "unknown")
            summary.wrong += 1
        else:
            folder = Path(class_folder(r["label"], names.get(r["label"], "")))
            summary.per_class[r["label"]] = summary.per_class.get(r["label"], 0) + 1
        dst = out / folder / f"{det_id}.wav"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        summary.written += 1
        rows.append({"file": str(dst.relative_to(out)), "detection_id": det_id, "verdict": r["verdict"],
                     "label": r["label"] or "", "detected_label": r["d_label"] or "", "score": r["d_score"],
                     "start_utc": r["d_start_utc"], "model_version": r["d_model_version"],
                     "reviewed_utc": r["created_utc"], "reviewer": r["reviewer"], "note": r["note"]})
    with open(out / "reviews.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "detection_id", "verdict", "label", "detected_label", "score",
                                           "start_utc", "model_version", "reviewed_utc", "reviewer", "note"])
        w.writeheader()
        w.writerows(rows)
    return summary

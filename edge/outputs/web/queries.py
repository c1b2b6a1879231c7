"""What the dashboard reads from the store: one method per page, each a few indexed queries.

Times in the store are ISO UTC text (``2026-05-01T05:12:30.500Z``) compared as
text. Days and hours shown to people are in the dashboard's time zone
(``web.timezone``, default the system's): a day is turned into its UTC bounds
before it reaches SQL, and hours are grouped with SQLite's ``strftime`` and the
zone's offset. Lists are paged by keyset (``start_utc, seq``), never OFFSET,
so page 1,000 costs what page 1 does.

What these queries need beyond the store's own schema is created here
(``WEB_MIGRATIONS``, versioned in ``aux_schema`` as part ``web``): an index, and
``web_hourly``, detections per species and UTC hour kept current by triggers,
which the species pages and counts read instead of scanning the detections.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any
from datetime import date, datetime, timedelta, timezone, tzinfo

from edge.contract.record import format_utc, parse_utc
from edge.outputs.reviews import migrate_aux

WEB_MIGRATIONS: list[str | list[str]] = [
    # 1: species page (best detections) and the detections list filtered by species and score
    "CREATE INDEX IF NOT EXISTS detections_label_score ON detections(label, score)",
    # 2: detections per species and UTC hour, kept by triggers as rows come and go (the store's
    # inserts, retention's deletes), so the species charts and counts cost the same at a million
    # rows as at a thousand. Filled from the rows already there in the same transaction.
    [
        "CREATE TABLE IF NOT EXISTS web_hourly (label TEXT NOT NULL, hour TEXT NOT NULL, n INTEGER NOT NULL, "
        "PRIMARY KEY (label, hour)) WITHOUT ROWID",
        "INSERT INTO web_hourly (label, hour, n) SELECT label, substr(start_utc, 1, 13), count(*) FROM detections "
        "WHERE true GROUP BY 1, 2 ON CONFLICT (label, hour) DO UPDATE SET n = excluded.n",
        "CREATE TRIGGER IF NOT EXISTS web_hourly_insert AFTER INSERT ON detections BEGIN "
        "INSERT INTO web_hourly (label, hour, n) VALUES (NEW.label, substr(NEW.start_utc, 1, 13), 1) "
        "ON CONFLICT (label, hour) DO UPDATE SET n = n + 1; END",
        "CREATE TRIGGER IF NOT EXISTS web_hourly_delete AFTER DELETE ON detections BEGIN "
        "UPDATE web_hourly SET n = n - 1 WHERE label = OLD.label AND hour = substr(OLD.start_utc, 1, 13); END",
    ],
    # 3: the detections list filtered by score alone, when few match (see Queries._source)
    "CREATE INDEX IF NOT EXISTS detections_score ON detections(score)",
]
OUTBOX_COUNT_CAP = 100_000
REVIEWED = ("any", "correct", "wrong", "species")
REVIEW_FILTERS = ("none", *REVIEWED)
SCORE_PLAN_CAP = 1_000  # the least matches read by score
PAGE_COST = 50  # a page's rows, for the plan choice


iso_z = format_utc  # the store's UTC text (edge.contract.record)


@dataclass(frozen=True)
class Cursor:
    start_utc: str
    seq: int

    def encode(self) -> str:
        return f"{self.start_utc}~{self.seq}"

    @classmethod
    def decode(cls, text: str) -> "Cursor":
        """Raises ValueError (the caller turns it into a 400)."""
        when, _, seq = text.partition("~")
        parse_utc(when)
        if not seq.isdigit():
            raise ValueError("the page cursor is not one this dashboard made")
        return cls(when, int(seq))


class Queries:
    def __init__(self, conn, tz: tzinfo, *, lock: threading.Lock | None = None):
        self.conn = conn
        self.tz = tz
        self.lock = lock or threading.Lock()
        self._species_cache: tuple[float, list[dict]] | None = None

    def migrate(self) -> None:
        with self.lock:
            migrate_aux(self.conn, "web", WEB_MIGRATIONS)

    def _all(self, sql: str, params=()) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.conn.execute(sql, params)]

    def _one(self, sql: str, params=()):
        with self.lock:
            return self.conn.execute(sql, params).fetchone()

    # -- time helpers ---------------------------------------------------------
    def day_bounds(self, day: date) -> tuple[str, str]:
        start = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        end = start + timedelta(days=1)
        end = datetime(end.year, end.month, end.day, tzinfo=self.tz)  # across a DST change
        return iso_z(start), iso_z(end)

    def local_hour(self, utc_hour: str) -> datetime:
        """A UTC hour bucket (``substr(start_utc, 1, 13)``: ``2026-05-01T04``) as local time.

        Hours are grouped in UTC by SQL and placed here, zone-aware (right across
        DST changes; zones with half-hour offsets place a bucket by its start).
        """
        h = utc_hour
        return datetime(int(h[0:4]), int(h[5:7]), int(h[8:10]), int(h[11:13]), tzinfo=timezone.utc).astimezone(self.tz)

    def offset_sql(self, first_utc: str, last_utc: str) -> str:
        """SQL giving the zone's UTC offset in minutes for a ``web_hourly.hour`` between the two times:
        a constant, or a CASE over the zone's changes (DST) in that range, found per day then per hour."""
        def off(t: datetime) -> int:
            return int((t.astimezone(self.tz).utcoffset() or timedelta(0)).total_seconds() // 60)

        d0 = parse_utc(first_utc).replace(minute=0, second=0, microsecond=0)
        d1 = parse_utc(last_utc)
        cur = off(d0)
        changes: list[tuple[str, int]] = []
        t = d0
        while t <= d1:
            nxt = t + timedelta(days=1)
            if off(nxt) != cur:  # a change within this day: find its hour
                h = t
                while off(h) == cur:
                    h += timedelta(hours=1)
                cur = off(h)
                changes.append((h.strftime("%Y-%m-%dT%H"), cur))
            t = nxt
        if not changes:
            return str(off(d0))
        whens, prev = [], off(d0)
        for hour, value in changes:
            whens.append(f"WHEN hour < '{hour}' THEN {prev}")
            prev = value
        return f"(CASE {' '.join(whens)} ELSE {prev} END)"

    def today(self) -> date:
        return datetime.now(self.tz).date()

    def local(self, utc_text: str | None) -> datetime | None:
        return parse_utc(utc_text).astimezone(self.tz) if utc_text else None

    def local_date(self, utc_text: str) -> date:
        return parse_utc(utc_text).astimezone(self.tz).date()

    # -- today ------------------------------------------------------------------
    def latest_day(self) -> date | None:
        row = self._one("SELECT max(start_utc) FROM detections")
        return self.local_date(row[0]) if row and row[0] else None

    def day_summary(self, day: date) -> list[dict]:
        a, b = self.day_bounds(day)
        # SQLite takes a bare column (id) from the row holding the one max() of the query: the best one
        rows = self._all(
            "SELECT label, common_name, count(*) AS n, min(start_utc) AS first, max(start_utc) AS last, "
            "max(score) AS best, id AS best_id FROM detections WHERE start_utc >= ? AND start_utc < ? "
            "GROUP BY label ORDER BY n DESC, label", [a, b])
        hours: dict[str, list[int]] = {r["label"]: [0] * 24 for r in rows}
        for h in self._all(
                "SELECT label, substr(start_utc, 1, 13) AS h, count(*) AS n FROM detections "
                "WHERE start_utc >= ? AND start_utc < ? GROUP BY label, h", [a, b]):
            hours[h["label"]][self.local_hour(h["h"]).hour] += h["n"]  # at most 24 per species
        for r in rows:
            r["hours"] = hours[r["label"]]
        return rows

    def latest_of_day(self, day: date, limit: int = 8) -> list[dict]:
        a, b = self.day_bounds(day)
        return self._all("SELECT id, start_utc, label, common_name, score FROM detections "
                         "WHERE start_utc >= ? AND start_utc < ? ORDER BY start_utc DESC, seq DESC LIMIT ?", [a, b, limit])

    # -- detections list --------------------------------------------------------
    def detections_page(self, *, label: str | None = None, day: date | None = None, min_score: float | None = None,
                        review: str | None = None, before: Cursor | None = None, after: Cursor | None = None,
                        limit: int = 50):
        """(rows newest first, cursor of an older page or None, cursor of a newer page or None).

        ``review``: ``none`` (not reviewed yet), ``any`` (reviewed), or the newest review's
        verdict (``correct``, ``wrong``, ``species``).
        """
        where: list[str] = []
        params: list[Any] = []
        if label:
            where.append("label = ?")
            params.append(label)
        if day:
            a, b = self.day_bounds(day)
            where += ["start_utc >= ?", "start_utc < ?"]
            params += [a, b]
        if min_score is not None:
            where.append("score >= ?")
            params.append(min_score)
        if review == "none":  # dense: by time (or score), each row probed in the reviews index
            where.append("NOT EXISTS (SELECT 1 FROM reviews r WHERE r.detection_id = detections.id)")
        if review in REVIEWED:  # few: from the reviews (CROSS JOIN keeps them the outer loop), then sorted
            verdict = "" if review == "any" else (
                "WHERE verdict = ? AND id IN (SELECT max(id) FROM reviews GROUP BY detection_id)")
            src = (f"(SELECT DISTINCT detection_id AS rid FROM reviews {verdict}) AS rv "
                   "CROSS JOIN detections ON detections.id = rv.rid")
            params = ([] if review == "any" else [review]) + params  # the source's parameter comes first
        else:
            src = self._source(label, day, min_score)
        ascending = after is not None and before is None
        page_where, page_params = list(where), list(params)
        if before is not None:
            page_where.append("(start_utc, seq) < (?, ?)")
            page_params += [before.start_utc, before.seq]
        elif after is not None:
            page_where.append("(start_utc, seq) > (?, ?)")
            page_params += [after.start_utc, after.seq]
        order = "ASC" if ascending else "DESC"
        sql = ("SELECT seq, id, start_utc, end_utc, label, common_name, score, n_windows, model_version, source "
               f"FROM {src}" + (" WHERE " + " AND ".join(page_where) if page_where else "")
               + f" ORDER BY start_utc {order}, seq {order} LIMIT ?")
        rows = self._all(sql, [*page_params, limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        if ascending:
            rows.reverse()
        if not rows:
            return rows, None, None
        first, last = Cursor(rows[0]["start_utc"], rows[0]["seq"]), Cursor(rows[-1]["start_utc"], rows[-1]["seq"])
        if ascending:
            older = last if self._exists(src, where, params, "<", last) else None
            newer = first if more else None
        else:
            older = last if more else None
            newer = first if (before is not None and self._exists(src, where, params, ">", first)) else None
        return rows, older, newer

    def _source(self, label: str | None, day: date | None, min_score: float | None) -> str:
        """The table, with the index to read it by when a score filter is selective.

        Newest first by the time index is right when matches are dense (a page is found
        in the first few thousand rows); when they are few, walking the time index
        until the end costs a scan of the whole table. So: count the matches through
        the score index, up to sqrt(50 x rows) (7,000 at a million rows, where the two
        costs meet; at least SCORE_PLAN_CAP); fewer than that, read them all by score and
        sort them (cost: the matches); else by time. A day bounds the scan anyway.
        """
        if min_score is None or day is not None:
            return "detections"
        index = "detections_label_score" if label else "detections_score"
        cond, params = (("label = ? AND score >= ?", [label, min_score]) if label else ("score >= ?", [min_score]))
        # reading m matches by score costs ~m; finding a page of p by time costs ~p * rows / m: equal at sqrt(p * rows)
        rows = self._one("SELECT max(seq) FROM detections")[0] or 0
        cap = max(SCORE_PLAN_CAP, int(math.sqrt(PAGE_COST * rows)))
        n = self._one(f"SELECT count(*) FROM (SELECT 1 FROM detections INDEXED BY {index} WHERE {cond} LIMIT ?)",
                      [*params, cap])[0]
        if n < cap:
            return f"detections INDEXED BY {index}"
        # dense: by time, which the planner would not pick by itself (two constraints on the score index)
        return "detections INDEXED BY " + ("detections_label_start" if label else "detections_start")

    def _exists(self, src, where, params, op, cur: Cursor) -> bool:
        sql = (f"SELECT 1 FROM {src} WHERE " + " AND ".join([*where, f"(start_utc, seq) {op} (?, ?)"]) + " LIMIT 1")
        return self._one(sql, [*params, cur.start_utc, cur.seq]) is not None

    # -- one detection ----------------------------------------------------------
    def detection(self, det_id: str) -> dict | None:
        row = self._one("SELECT * FROM detections WHERE id = ?", [det_id])
        return dict(row) if row else None

    def neighbours(self, det: dict, span_s: float = 30.0, limit: int = 30) -> list[dict]:
        t = parse_utc(det["start_utc"])
        return self._all(
            "SELECT id, start_utc, end_utc, label, common_name, score FROM detections "
            "WHERE start_utc >= ? AND start_utc <= ? ORDER BY start_utc, seq LIMIT ?",
            [iso_z(t - timedelta(seconds=span_s)), iso_z(t + timedelta(seconds=span_s)), limit])

    def step(self, det: dict, newer: bool, unreviewed: bool = False) -> str | None:
        """The id of the next detection in time (newer or older), or of the next one not yet reviewed."""
        op, order = (">", "ASC") if newer else ("<", "DESC")
        cond = " AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.detection_id = detections.id)" if unreviewed else ""
        row = self._one(f"SELECT id FROM detections INDEXED BY detections_start WHERE (start_utc, seq) {op} (?, ?)"
                        f"{cond} ORDER BY start_utc {order}, seq {order} LIMIT 1", [det["start_utc"], det["seq"]])
        return row[0] if row else None

    # -- species ----------------------------------------------------------------
    def species_list(self, max_age_s: float = 60.0) -> list[dict]:
        """Every label in the store with its common name (skip-scan of the label index; cached briefly)."""
        now = time.monotonic()
        if self._species_cache and now - self._species_cache[0] < max_age_s:
            return self._species_cache[1]
        labels = [r["x"] for r in self._all(
            "WITH RECURSIVE l(x) AS (SELECT min(label) FROM detections UNION ALL "
            "SELECT (SELECT min(label) FROM detections WHERE label > l.x) FROM l WHERE l.x IS NOT NULL) "
            "SELECT x FROM l WHERE x IS NOT NULL")]
        out = []
        for lab in labels:
            row = self._one("SELECT common_name FROM detections WHERE label = ? LIMIT 1", [lab])
            out.append({"label": lab, "common_name": row[0] if row else ""})
        self._species_cache = (now, out)
        return out

    def species_counts(self) -> dict[str, int]:
        return {r["label"]: r["n"] for r in self._all("SELECT label, sum(n) AS n FROM web_hourly GROUP BY label")}

    def species(self, label: str, days: int = 60) -> dict | None:
        # two queries: each is one step down the (label, start_utc) index; together they scan the label
        first = self._one("SELECT min(start_utc) FROM detections WHERE label = ?", [label])[0]
        if first is None:
            return None
        last = self._one("SELECT max(start_utc) FROM detections WHERE label = ?", [label])[0]
        last_day = self.local_date(last)
        first_day = last_day - timedelta(days=days - 1)
        # hours and days in SQL over web_hourly (a few thousand rows a year), each UTC hour shifted by the
        # zone's offset then (placed by the hour's start: zones with half-hour offsets round down)
        shift = self.offset_sql(first, last)
        local_minute = f"(CAST(substr(hour, 12, 2) AS INTEGER) * 60 + {shift})"
        by_hour = [0] * 24
        n = 0
        for r in self._all(f"SELECT (({local_minute} % 1440) + 1440) % 1440 / 60 AS h, sum(n) AS n FROM web_hourly "
                           "WHERE label = ? GROUP BY h", [label]):
            by_hour[r["h"]] = r["n"]
            n += r["n"]
        window = self.day_bounds(first_day)[0][:13]
        counts: dict[date, int] = {}
        for r in self._all(  # the UTC day, and -1, 0 or +1 day to the local one (integer division floored)
                f"SELECT substr(hour, 1, 10) AS d, ({local_minute} + 2880) / 1440 - 2 AS k, sum(n) AS n "
                "FROM web_hourly WHERE label = ? AND hour >= ? GROUP BY d, k", [label, window]):
            day_ = date.fromisoformat(r["d"]) + timedelta(days=r["k"])
            counts[day_] = counts.get(day_, 0) + r["n"]
        by_day = [(first_day + timedelta(days=i)) for i in range(days)]
        best = self._all("SELECT id, start_utc, score FROM detections WHERE label = ? ORDER BY score DESC LIMIT 5",
                         [label])
        recent = self._all("SELECT id, start_utc, score FROM detections WHERE label = ? "
                           "ORDER BY start_utc DESC LIMIT 10", [label])
        name = self._one("SELECT common_name FROM detections WHERE label = ? LIMIT 1", [label])
        return {"label": label, "common_name": name[0] if name else "", "n": n, "first": first, "last": last,
                "by_hour": by_hour, "days": by_day, "by_day": [counts.get(d, 0) for d in by_day],
                "best": best, "recent": recent}

    # -- effort and gaps --------------------------------------------------------
    def effort(self, last_day: date, days: int) -> dict:
        first_day = last_day - timedelta(days=days - 1)
        a, _ = self.day_bounds(first_day)
        _, b = self.day_bounds(last_day)
        now = iso_z(datetime.now(timezone.utc))
        sessions = self._all(
            "SELECT id, source, start_utc, coalesce(end_utc, ?) AS end_utc, end_utc IS NULL AS open, model_version "
            "FROM effort WHERE start_utc < ? AND coalesce(end_utc, ?) > ? ORDER BY start_utc", [now, b, now, a])
        gaps = self._all("SELECT start_utc, end_utc, reason, samples_lost, source FROM gaps "
                         "WHERE start_utc < ? AND end_utc > ? ORDER BY start_utc", [b, a])
        return {"first_day": first_day, "last_day": last_day, "sessions": sessions, "gaps": gaps}

    def latest_effort_day(self) -> date | None:
        row = self._one("SELECT max(start_utc) FROM effort")
        return self.local_date(row[0]) if row and row[0] else None

    # -- health -----------------------------------------------------------------
    def store_figures(self) -> dict:
        depth = self._one("SELECT count(*) FROM (SELECT 1 FROM detections WHERE published_utc IS NULL LIMIT ?)",
                          [OUTBOX_COUNT_CAP + 1])[0]
        last = self._one("SELECT id, start_utc, label, common_name, score FROM detections "
                         "ORDER BY start_utc DESC LIMIT 1")
        total = self._one("SELECT max(seq) FROM detections")[0] or 0
        return {"outbox_depth": depth, "outbox_capped": depth > OUTBOX_COUNT_CAP, "detections_max_seq": total,
                "last": dict(last) if last else None}

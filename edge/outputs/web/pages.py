"""The dashboard's pages, read-only: each checks its query, asks ``Queries`` and renders a template."""
from __future__ import annotations

from datetime import datetime, timedelta

from starlette.exceptions import HTTPException
from starlette.requests import Request

from edge.outputs.web import charts, modelinfo, sysinfo
from edge.outputs.web.params import (BadRequest, check_id, check_known, check_label, get_date, get_int, get_label,
                                     get_score)
from edge.outputs.web.queries import REVIEW_FILTERS, Cursor, parse_utc


def today(web):
    def page(request: Request):
        q = request.query_params
        check_known(q, ("date",))
        asked = get_date(q)
        day = asked or web.queries.today()
        rows = web.queries.day_summary(day)
        fallback = None
        if not rows and asked is None:
            latest = web.queries.latest_day()
            if latest and latest != day:
                fallback, day = day, latest
                rows = web.queries.day_summary(day)
        hours = [sum(r["hours"][h] for r in rows) for h in range(24)]
        return web.render(request, "today.html", title="Today" if day == web.queries.today() else day.isoformat(),
                          day=day, rows=rows, fallback=fallback, total=sum(r["n"] for r in rows),
                          prev_day=day - timedelta(days=1), next_day=day + timedelta(days=1),
                          is_today=day == web.queries.today(), latest=web.queries.latest_of_day(day) if rows else [],
                          chart=charts.bar_chart(hours, [f"{h:02d}" for h in range(24)], every=3,
                                                 title=f"detections per hour, {day.isoformat()}", width=520,
                                                 height=250))
    return page


def detections(web):
    def page(request: Request):
        q = request.query_params
        check_known(q, ("species", "date", "min_score", "review", "before", "after"))
        label, day, min_score = get_label(q), get_date(q), get_score(q)
        review = q.get("review", "").strip() or None
        if review is not None and review not in REVIEW_FILTERS:
            raise BadRequest(f"review must be one of {', '.join(REVIEW_FILTERS)}, not {review[:40]!r}")
        try:
            before = Cursor.decode(q["before"]) if q.get("before") else None
            after = Cursor.decode(q["after"]) if q.get("after") else None
        except ValueError:
            raise BadRequest("before/after must be a page cursor from this dashboard's own links") from None
        if before and after:
            raise BadRequest("give before or after, not both")
        rows, older, newer = web.queries.detections_page(label=label, day=day, min_score=min_score, review=review,
                                                         before=before, after=after, limit=web.ctx.page_size)
        reviews = web.reviews.latest_for([r["id"] for r in rows]) if rows else {}
        keep = {k: v for k, v in (("species", label), ("date", day and day.isoformat()),
                                  ("min_score", q.get("min_score", "").strip()), ("review", review)) if v}
        return web.render(request, "detections.html", title="Detections", rows=rows, reviews=reviews,
                          species=web.queries.species_list(), label=label, day=day,
                          min_score=q.get("min_score", "").strip(), review=review, keep=keep,
                          older=older and older.encode(), newer=newer and newer.encode())
    return page


def detection(web):
    def page(request: Request):
        check_known(request.query_params, ())
        det_id = check_id(request.path_params["det_id"])
        det = web.queries.detection(det_id)
        if det is None:
            raise HTTPException(404, f"no detection {det_id}")
        review = web.reviews.latest(det_id)
        from edge.outputs.web.forms import find_clip

        clip = find_clip(web, det)
        return web.render(request, "detection.html", title=det["common_name"] or det["label"], d=det,
                          review=review, neighbours=web.queries.neighbours(det), has_clip=clip is not None,
                          span=clip and event_span(clip, det, web.ctx.clip_padding_s),
                          prev_id=web.queries.step(det, newer=False), next_id=web.queries.step(det, newer=True),
                          unreviewed_id=web.queries.step(det, newer=False, unreviewed=True) if review else None,
                          labels=modelinfo.label_names(web.ctx.models_dir, web.ctx.bundle_path),
                          duration=(parse_utc(det["end_utc"]) - parse_utc(det["start_utc"])).total_seconds())
    return page


def event_span(clip, det: dict, padding_s: float) -> tuple[float, float] | None:
    """Where the event lies in its clip, as (x, width) out of 1000 (the clip starts ``padding_s``
    before the event, or at the start of its source)."""
    import wave

    try:
        with wave.open(str(clip), "rb") as w:
            total = w.getnframes() / w.getframerate()
    except (OSError, wave.Error, EOFError, ZeroDivisionError):
        return None
    if total <= 0:
        return None
    a = min(det["offset_s"], padding_s)
    b = min(a + det["end_offset_s"] - det["offset_s"], total)
    return round(1000 * a / total, 1), round(1000 * max(b - a, 0) / total, 1)


def species_index(web):
    def page(request: Request):
        check_known(request.query_params, ())
        return web.render(request, "species_index.html", title="Species", species=web.queries.species_list(),
                          counts=web.queries.species_counts())
    return page


def species(web):
    def page(request: Request):
        q = request.query_params
        check_known(q, ("days",))
        label = check_label(request.path_params["label"])
        days = get_int(q, "days", 60, 7, 366)
        s = web.queries.species(label, days=days)
        if s is None:
            raise HTTPException(404, f"no detections of {label}")
        every = max(1, days // 8)
        return web.render(
            request, "species.html", title=s["common_name"] or label, s=s, days=days,
            hour_chart=charts.bar_chart(s["by_hour"], [f"{h:02d}" for h in range(24)], every=3,
                                        title=f"{s['common_name'] or label}: detections by hour of day"),
            day_chart=charts.bar_chart(s["by_day"], [d.strftime("%d %b") for d in s["days"]], every=every,
                                       title=f"{s['common_name'] or label}: detections per day, last {days} days"))
    return page


def _hours(t: datetime, day_start: datetime) -> float:
    return (t - day_start).total_seconds() / 3600


def effort(web):
    def page(request: Request):
        q = request.query_params
        check_known(q, ("days", "until"))
        days = get_int(q, "days", 7, 1, 92)
        until = get_date(q, "until") or web.queries.latest_effort_day() or web.queries.today()
        e = web.queries.effort(until, days)
        rows, listened_s, lost_s = [], 0.0, 0.0
        for i in range(days):
            day = until - timedelta(days=i)
            a, b = (parse_utc(x) for x in web.queries.day_bounds(day))
            start_local = a.astimezone(web.tz)
            segs = []
            for kind, items in (("on", e["sessions"]), ("gap", e["gaps"])):
                for s in items:
                    s0, s1 = max(parse_utc(s["start_utc"]), a), min(parse_utc(s["end_utc"]), b)
                    if s1 > s0:
                        segs.append((_hours(s0, start_local), _hours(s1, start_local), kind))
                        if kind == "on":
                            listened_s += (s1 - s0).total_seconds()
                        else:
                            lost_s += (s1 - s0).total_seconds()
            rows.append((day.strftime("%a %d %b"), segs))
        return web.render(request, "effort.html", title="Effort and gaps", e=e, days=days, until=until,
                          listened_s=listened_s, lost_s=lost_s, gaps=e["gaps"][-200:][::-1],
                          sessions=e["sessions"][-50:][::-1], earlier=until - timedelta(days=days),
                          later=until + timedelta(days=days),
                          chart=charts.timeline(rows, title=f"listening and gaps, {days} days to {until.isoformat()}"))
    return page


def model(web):
    def page(request: Request):
        check_known(request.query_params, ())
        facts = modelinfo.model_facts(web.ctx.models_dir, web.ctx.bundle_path)
        labels = facts.get("labels") or []
        thr = [lab["threshold"] or 0 for lab in labels]
        chart = charts.bar_chart(thr, [lab["common_name"] or lab["label"] for lab in labels], width=720, height=200,
                                 every=max(1, len(labels) // 12), title="detection threshold per species") if labels else ""
        return web.render(request, "model.html", title="Model", f=facts, m=facts.get("manifest") or {}, chart=chart)
    return page


def health(web):
    def page(request: Request):
        check_known(request.query_params, ())
        report, age = web.ctx.read_health()
        h = (report or {}).get("health", report or {})
        level = next((h[k] for k in ("audio_level_dbfs", "audio_rms_dbfs") if h.get(k) is not None), None)
        stale = age is not None and age > 3 * max(web.ctx.status_interval_s, 10)
        return web.render(request, "health.html", title="Health", h=h, level=level, report=report or {}, age=age,
                          stale=stale,
                          mqtt=(report or {}).get("mqtt") or {}, store=web.queries.store_figures(),
                          machine=sysinfo.machine(web.ctx.state_dir, (report or {}).get("pid")))
    return page

"""What writes or serves files: login/logout, the review form, the clip and its spectrogram.

A review is the only write a person can make: it needs a session (the
password) and the form's CSRF token, and it only adds a row to ``reviews``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from edge.outputs.reviews import ReviewError
from edge.outputs.web.auth import COOKIE, SESSION_S, verify_password
from edge.outputs.web.params import BadRequest, check_id, check_known

log = logging.getLogger(__name__)
MAX_FORM = 8 * 1024


def find_clip(web, det: dict) -> Path | None:
    from edge.outputs.clip_paths import clip_path

    candidates = [web.ctx.reviewed_clips_dir / f"{det['id']}.wav"]
    if web.ctx.clips_dir:
        candidates.append(clip_path(web.ctx.clips_dir, det["start_utc"], det["label"], det["id"]))
    return next((c for c in candidates if c.is_file()), None)


def _detection_and_clip(web, request: Request) -> tuple[dict, Path]:
    check_known(request.query_params, ())
    det_id = check_id(request.path_params["det_id"])
    det = web.queries.detection(det_id)
    if det is None:
        raise HTTPException(404, f"no detection {det_id}")
    path = find_clip(web, det)
    if path is None:
        raise HTTPException(404, "no clip kept for this detection (clips off, or removed by the disk budget)")
    return det, path


def clip(web):
    def serve(request: Request):
        det, path = _detection_and_clip(web, request)
        return FileResponse(path, media_type="audio/wav", filename=f"{det['label']}_{det['id'][:8]}.wav",
                            content_disposition_type="inline", headers={"Cache-Control": "private, max-age=86400"})
    return serve


def spectrogram(web):
    def serve(request: Request):
        from edge.outputs.web.spectrogram import SpectrogramError, cached_png

        det, path = _detection_and_clip(web, request)
        try:
            png = cached_png(path, web.ctx.cache_dir, det["id"])
        except (SpectrogramError, OSError) as exc:
            log.warning("spectrogram of %s: %s", det["id"], exc)
            raise HTTPException(404, f"the clip cannot be drawn: {exc}") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})
    return serve


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM:
        raise BadRequest("form too large")
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype != "application/x-www-form-urlencoded":
        raise BadRequest("forms must be sent as application/x-www-form-urlencoded")
    try:
        data = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form could not be read") from None
    return {k: v[0] for k, v in data.items()}


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host")


def review(web):
    async def post(request: Request):
        check_known(request.query_params, ())
        det_id = check_id(request.path_params["det_id"])
        cookie = request.cookies.get(COOKIE)
        if not web.sessions.valid(cookie):
            return web.render(request, "error.html", 403, title="Log in to review",
                              reason="reviews need the dashboard password")
        form = await _form(request)
        if not _same_origin(request) or not web.sessions.csrf_ok(cookie, form.get("csrf")):
            return web.render(request, "error.html", 403, title="Form expired",
                              reason="the form's token did not match: reload the page and try again")
        verdict = form.get("verdict", "")
        try:
            with web.lock:
                web.reviews.add(det_id, verdict, form.get("label") or None, form.get("common_name", ""),
                                reviewer="dashboard", note=form.get("note", "").strip())
        except ReviewError as exc:
            raise BadRequest(str(exc)) from None
        log.info("review of %s: %s %s", det_id, verdict, form.get("label", ""))
        return RedirectResponse(f"/detections/{det_id}#review", status_code=303)
    return post


def _safe_next(target: str | None) -> str:
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_page(web):
    def page(request: Request):
        check_known(request.query_params, ("next",))
        return web.render(request, "login.html", title="Log in", next=_safe_next(request.query_params.get("next")))
    return page


def login(web):
    failures: list[float] = []

    async def post(request: Request):
        check_known(request.query_params, ())
        form = await _form(request)
        nxt = _safe_next(form.get("next"))
        stored = web.password_hash()
        if stored is None:
            return web.render(request, "login.html", 403, title="Log in", next=nxt,
                              error="no password is set: run python -m edge web --config FILE --set-password")
        if not _same_origin(request):
            return web.render(request, "login.html", 403, title="Log in", next=nxt, error="cross-site login refused")
        now = time.monotonic()
        failures[:] = [t for t in failures if now - t < 60]
        if len(failures) >= 10:
            return web.render(request, "login.html", 429, title="Log in", next=nxt,
                              error="too many wrong passwords: wait a minute")
        from starlette.concurrency import run_in_threadpool

        if not await run_in_threadpool(verify_password, form.get("password", ""), stored):
            failures.append(now)
            log.warning("wrong dashboard password from %s", request.client.host if request.client else "?")
            return web.render(request, "login.html", 401, title="Log in", next=nxt, error="wrong password")
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(COOKIE, web.sessions.new(), max_age=SESSION_S, httponly=True, samesite="strict", path="/")
        return resp
    return post


def logout(web):
    async def post(request: Request):
        cookie = request.cookies.get(COOKIE)
        form = await _form(request)
        if not web.sessions.csrf_ok(cookie, form.get("csrf")):
            raise BadRequest("the form's token did not match: reload the page")
        web.sessions.revoke(cookie)
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp
    return post

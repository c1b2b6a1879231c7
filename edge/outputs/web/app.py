"""The dashboard's ASGI application (Starlette), server-rendered with Jinja2.

``create_app(ctx)`` wires the pages (``pages``), the review and login forms
(``forms``), the static files vendored in ``static/`` and the error pages: a
refused query is a 400 page with the reason, a missing thing a 404, anything
unexpected a 500 page with no traceback (the log has it).

Access: when the dashboard listens on loopback only, pages are open and the
review form needs the password; bound anywhere else, every page needs it.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edge.outputs.web import charts, forms, pages
from edge.outputs.web.auth import COOKIE, PasswordError, Sessions, read_password_file
from edge.outputs.web.context import WebContext
from edge.outputs.web.params import BadRequest
from edge.outputs.web.queries import Queries, parse_utc

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
OPEN_PATHS = ("/login", "/static/")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
                               "script-src 'self'; form-action 'self'; frame-ancestors 'none'",
}


class Web:
    """The state the handlers share: context, store connections, sessions, templates."""

    def __init__(self, ctx: WebContext):
        from edge.outputs.reviews import Reviews, connect

        self.ctx = ctx
        self.tz = ctx.tz
        self.lock = threading.Lock()
        self.conn = connect(ctx.db_path)
        self.queries = Queries(self.conn, self.tz, lock=self.lock)
        self.queries.migrate()
        with self.lock:
            self.reviews = Reviews(self.conn, kept_dir=ctx.reviewed_clips_dir, clips_dir=ctx.clips_dir)
        self.sessions = Sessions()
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(local=self.local, hm=lambda t: self.local(t, "%H:%M"),
                                hms=lambda t: self.local(t, "%H:%M:%S"), day=lambda t: self.local(t, "%Y-%m-%d"),
                                score=lambda s: "" if s is None else f"{s:.2f}", pct=lambda v: f"{v:.0f}%",
                                spark=charts.sparkline, nice=_nice, dur=_duration)

    def password_hash(self) -> str | None:
        try:
            return read_password_file(self.ctx.password_file)
        except PasswordError:
            return None

    def local(self, utc_text: str | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
        if not utc_text:
            return ""
        try:
            return parse_utc(utc_text).astimezone(self.tz).strftime(fmt)
        except ValueError:
            return utc_text

    def logged_in(self, request: Request) -> bool:
        return self.sessions.valid(request.cookies.get(COOKIE))

    def render(self, request: Request, name: str, status: int = 200, **data) -> HTMLResponse:
        cookie = request.cookies.get(COOKIE)
        logged_in = self.sessions.valid(cookie)
        html = self.env.get_template(name).render(
            request=request, path=request.url.path, device_id=self.ctx.device_id, logged_in=logged_in,
            csrf=self.sessions.csrf_token(cookie) if logged_in and cookie else "", has_password=self.password_hash() is not None,
            require_login=self.ctx.require_login, now=datetime.now(self.tz), **data)
        return HTMLResponse(html, status_code=status)

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _nice(v, digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def create_app(ctx: WebContext) -> Starlette:
    web = Web(ctx)

    async def guard(request: Request, call_next):
        path = request.url.path
        if web.ctx.require_login and not path.startswith(OPEN_PATHS) and not web.logged_in(request):
            if request.method == "GET":
                return RedirectResponse(f"/login?next={path}", status_code=303)
            return web.render(request, "error.html", 403, title="Log in first", reason="this needs the password")
        try:
            response = await call_next(request)
        except BadRequest as exc:  # raised before the response started
            response = web.render(request, "error.html", 400, title="Bad request", reason=str(exc))
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    async def bad_request(request: Request, exc: Exception):
        return web.render(request, "error.html", 400, title="Bad request", reason=str(exc))

    async def http_error(request: Request, exc: HTTPException):
        title = {404: "Not found", 405: "Not allowed", 403: "Forbidden"}.get(exc.status_code, "Error")
        return web.render(request, "error.html", exc.status_code, title=title, reason=exc.detail)

    async def server_error(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        return HTMLResponse("<!doctype html><title>Error</title><h1>Something went wrong</h1>"
                            "<p>The dashboard logged the details.</p>", status_code=500)

    routes = [
        Route("/", pages.today(web)),
        Route("/detections", pages.detections(web)),
        Route("/detections/{det_id}", pages.detection(web)),
        Route("/detections/{det_id}/spectrogram.png", forms.spectrogram(web)),
        Route("/detections/{det_id}/clip.wav", forms.clip(web)),
        Route("/detections/{det_id}/review", forms.review(web), methods=["POST"]),
        Route("/species", pages.species_index(web)),
        Route("/species/{label}", pages.species(web)),
        Route("/effort", pages.effort(web)),
        Route("/model", pages.model(web)),
        Route("/health", pages.health(web)),
        Route("/login", forms.login_page(web), methods=["GET"]),
        Route("/login", forms.login(web), methods=["POST"]),
        Route("/logout", forms.logout(web), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    from starlette.middleware.base import BaseHTTPMiddleware

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        web.close()

    app = Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
                    exception_handlers={BadRequest: bad_request, HTTPException: http_error,  # type: ignore[dict-item]
                                        Exception: server_error},
                    lifespan=lifespan, max_body_size=64 * 1024)
    app.state.web = web
    return app

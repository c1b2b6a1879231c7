"""Running the dashboard: in the foreground (``python -m edge web``) or as a daemon service.

``check(ctx)`` refuses, with one line, what must not start: a dashboard
bound beyond loopback without a password file, or a store that cannot be
opened. ``WebService`` runs uvicorn on a thread of the daemon (start/stop,
the service interface); the daemon's live health numbers feed the health page.
"""
from __future__ import annotations

import logging
import sqlite3
import threading

from edge.outputs.web.context import WebContext

log = logging.getLogger(__name__)


class WebError(RuntimeError):
    """The dashboard cannot start; the message says why and what to do."""


def check(ctx: WebContext) -> None:
    from edge.outputs.web.auth import PasswordError, read_password_file

    if ctx.require_login:
        try:
            read_password_file(ctx.password_file)
        except PasswordError as exc:
            raise WebError(f"listening on {ctx.host} (beyond this machine) needs a password: {exc}") from None
    if not ctx.db_path.exists():
        raise WebError(f"{ctx.db_path}: no store yet (run the daemon or python -m edge replay first, or pass --db)")


def build(ctx: WebContext):
    from edge.outputs.web.app import create_app

    check(ctx)
    try:
        return create_app(ctx)
    except sqlite3.Error as exc:
        raise WebError(f"{ctx.db_path}: cannot open the store ({exc})") from None


def _server(app, ctx: WebContext):
    import uvicorn

    config = uvicorn.Config(app, host=ctx.host, port=ctx.port, log_level="warning", access_log=False,
                            lifespan="on", server_header=False, proxy_headers=False)
    return uvicorn.Server(config)


def serve(ctx: WebContext) -> None:
    server = _server(build(ctx), ctx)
    log.warning("dashboard on http://%s:%d/ (store %s)", ctx.host, ctx.port, ctx.db_path)
    print(f"dashboard on http://{ctx.host}:{ctx.port}/", flush=True)
    server.run()
    if not server.started:
        raise WebError(f"could not listen on {ctx.host}:{ctx.port} (in use, or not an address of this machine?)")


class WebService:
    """The dashboard as one of the daemon's services."""

    def __init__(self, ctx: WebContext):
        self.ctx = ctx
        self.server = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.server = _server(build(self.ctx), self.ctx)
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)
        self.thread.start()
        log.info("dashboard on http://%s:%d/", self.ctx.host, self.ctx.port)

    def stop(self, timeout: float = 5.0) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)

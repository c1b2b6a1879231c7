"""Serving the dashboard: the checks before it starts, the app, uvicorn in the foreground.

``check(ctx)`` refuses, with one line, what must not start: a dashboard
bound beyond loopback without a password file, or a store that does not
exist. ``serve(ctx)`` is ``python -m edge web``. Imports nothing of the edge
that loads numpy (``edge.types`` does): the standalone dashboard stays small.
The daemon's service is ``edge.outputs.web.service``.
"""
from __future__ import annotations

import logging
import sqlite3

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


def config_lines(cfg) -> tuple[str, list[str]]:
    """For ``check-config``: what the dashboard will do (one line), and its problems (``web.<key>: ...``)."""
    web = cfg.web
    ctx = WebContext.from_config(cfg)
    where = f"http://{ctx.host}:{ctx.port}/" + ("" if ctx.require_login else " (this machine only)")
    summary = (f"dashboard {'in the daemon' if web.enabled else 'off in the daemon'} on {where}; "
               f"password {'set' if ctx.password_file.is_file() else 'not set'} ({ctx.password_file})")
    problems = []
    if web.enabled and ctx.require_login and not ctx.password_file.is_file():
        problems.append(f"web.listen: {web.listen} is reachable beyond this machine and needs a password, but "
                        f"{ctx.password_file} does not exist: python -m edge web --config FILE --set-password")
    return summary, problems

"""The dashboard as one of the daemon's services (``web.enabled``).

``WebService`` runs uvicorn on a thread of the daemon (start/stop, the
service interface); the daemon's live health numbers feed the health page.
Serving itself is ``edge.outputs.web.server``.
"""
from __future__ import annotations

import logging
import threading

from edge.outputs.web.context import WebContext
from edge.outputs.web.server import WebError, _server, build, check
from edge.types import Service

log = logging.getLogger(__name__)


class WebService(Service):
    """The dashboard as one of the daemon's services."""

    name = "web"

    def __init__(self, ctx: WebContext):
        self.ctx = ctx
        self.server = None
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        """Check at once (a refusal is the caller's to report); open the store and serve on a thread:
        the first start on a large store builds the dashboard's indexes, which must not hold up listening."""
        check(self.ctx)
        self.thread = threading.Thread(target=self._run, name="web", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            server = _server(build(self.ctx), self.ctx)
        except Exception:  # noqa: BLE001 - the recorder goes on without its dashboard
            log.exception("the dashboard could not start")
            return
        with self._lock:
            if self._stopping:
                return
            self.server = server
        log.info("dashboard on http://%s:%d/", self.ctx.host, self.ctx.port)
        server.run()
        if not server.started:
            log.error("the dashboard could not listen on %s:%d (in use?)", self.ctx.host, self.ctx.port)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
            if self.server is not None:
                self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)

    def handle(self, detections) -> None:  # the Service interface: the pages read the store
        pass


def service_factory(ctx) -> WebService | None:
    """For the daemon's service list: the dashboard when ``web.enabled``, fed the daemon's live health.

    A dashboard that must not start (beyond loopback without a password file) is
    reported and left out: the recorder goes on recording.
    """
    cfg = ctx.cfg
    if not cfg.web.enabled:
        return None
    from edge.outputs.healthfile import report

    wctx = WebContext.from_config(cfg, health=lambda: report(ctx.health.snapshot, ctx.services.get("mqtt")))
    try:
        check(wctx)
    except WebError as exc:
        log.error("web: %s; the recorder runs without its dashboard", exc)
        return None
    return WebService(wctx)

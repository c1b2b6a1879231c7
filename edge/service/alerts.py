"""Notifications through Apprise: new species of the day, watch-list species, no signal, a failed model update.

One list of Apprise URLs (``notify.urls``, or ``notify.urls_file`` to keep
tokens out of the config file) reaches every service Apprise knows: ntfy,
Telegram, Pushover, e-mail, Matrix, a JSON webhook...

What is sent:

* **new species of the day**: the first detection of a species on the
  recorder's local day (``location.timezone``, else UTC). Species already
  stored for today when the daemon starts are not announced again;
* **watch list**: a detection of a species on ``notify.watch_list`` (label
  or common name, case and ``_`` ignored), at most once per species every
  ``notify.cooldown_s``;
* **no signal**: the signal guard's streak of windows without signal
  (``no_signal_streak`` in the health numbers) reaching
  ``notify.no_signal_after`` windows, at most once per ``cooldown_s``; and
  "signal back" when the streak ends;
* **model update failed**: a bundle the update service refused or a
  rollback.

A notifier that fails or hangs never blocks detection or storage:
``handle()`` only puts small messages on a bounded queue
(``notify.queue_size``; when full the newest is dropped and counted) and
one worker thread sends them. Sending is rate-limited to
``notify.max_per_hour`` (the rest are counted and the next message says how
many were suppressed). Apprise is imported on the worker thread, only when
URLs are configured (``pip install 'dawnchorus[notify]'``); without it the
service logs one error and stays idle while the daemon runs on.
"""
from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from edge.contract.record import format_utc, parse_utc
from edge.types import Service

log = logging.getLogger(__name__)

KINDS = ("new_species", "watch_list", "no_signal", "model_update_failed")


@dataclass(frozen=True)
class Alert:
    kind: str  # one of KINDS
    title: str
    body: str
    key: str  # alerts with the same key are sent at most once per cooldown (empty: no cooldown)
    level: str = "info"  # apprise notify type: info, success, warning, failure


def normalise(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name).strip().casefold()


def read_urls(urls: Iterable[str], urls_file: Optional[str | Path]) -> list[str]:
    """The configured URLs plus those in ``urls_file`` (one per line; blank lines and # comments skipped)."""
    out = [u.strip() for u in urls if u and u.strip()]
    if urls_file:
        try:
            text = Path(urls_file).read_text()
        except OSError as exc:
            raise ValueError(f"notify.urls_file {urls_file}: cannot read ({exc.strerror or exc})") from None
        out += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return out


def redact(url: str) -> str:
    """A URL for the log: its scheme only (hosts and paths of notification URLs often carry tokens)."""
    m = re.match(r"^([A-Za-z0-9+.-]+)://", url)
    return f"{m[1]}://..." if m else "<url>"


@contextlib.contextmanager
def _quiet_apprise():
    """Apprise logs an unparseable URL in full (tokens and all): hush it while adding; we log a redacted line."""
    logger = logging.getLogger("apprise")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def add_url(ap: Any, url: str) -> bool:
    with _quiet_apprise():
        return bool(ap.add(url))


def check_config(n: Any) -> list[str]:
    """Problems with a ``notify`` section that only Apprise can see (for ``check-config``), one line each."""
    if not n.enabled:
        return []
    try:
        urls = read_urls(n.urls, n.urls_file)
    except ValueError as exc:
        return [str(exc)]
    try:
        import apprise
    except ImportError:
        return ["notify.enabled: Apprise is not installed; install it with pip install 'dawnchorus[notify]'"]
    problems = []
    for i, url in enumerate(urls):
        if not add_url(apprise.Apprise(), url):
            where = f"notify.urls[{i}]" if i < len(n.urls) else f"notify.urls_file line {i - len(n.urls) + 1}"
            problems.append(f"{where}: Apprise cannot use {redact(url)} (check the scheme and its fields)")
    if not urls:
        problems.append(f"notify.urls_file {n.urls_file}: no URL in it")
    return problems


class Alerts(Service):
    """The notification service (``start``/``stop``/``handle``)."""

    name = "alerts"

    def __init__(self, urls: Sequence[str], *, device_id: str = "recorder", location_name: str = "",
                 zone: Optional[tzinfo] = None, new_species: bool = True, watch_list: Sequence[str] = (),
                 no_signal: bool = True, model_update_failed: bool = True, min_score: float = 0.0,
                 max_per_hour: int = 20, cooldown_s: float = 3600.0, no_signal_after: int = 20,
                 queue_size: int = 100, timeout_s: float = 10.0, check_s: float = 5.0, health: Optional[Callable[[], Mapping[str, Any]]] = None,
                 updates: Any = None, seen_today: Optional[Callable[[str], Iterable[str]]] = None,
                 stop: Optional[threading.Event] = None, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.urls = list(urls)
        self.device_id = device_id
        self.where = f"{device_id}" + (f" ({location_name})" if location_name else "")
        self.zone = zone or timezone.utc
        self.enabled = {"new_species": new_species, "watch_list": bool(watch_list), "no_signal": no_signal,
                        "model_update_failed": model_update_failed}
        self.watch = {normalise(w) for w in watch_list if w.strip()}
        self.min_score = min_score
        self.max_per_hour = max_per_hour
        self.cooldown_s = cooldown_s
        self.no_signal_after = no_signal_after
        self.timeout_s = timeout_s
        self.check_s = check_s
        self._health = health
        self._updates = updates
        self._seen_today = seen_today
        self._clock = clock
        self.stop_event = stop or threading.Event()
        self._stopping = threading.Event()  # stop() must not set the runtime's shared stop event
        self._queue: queue.Queue[Alert] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._day: Optional[str] = None
        self._seen: set[str] = set()
        self._last_sent: dict[str, float] = {}  # key -> monotonic time queued
        self._sent_times: collections.deque = collections.deque()
        self._no_signal_on = False
        self._updates_seen = 0
        # rollbacks after this (UTC text) are new; a rollback at this start (crash loop) happened moments ago
        self._rollbacks_after = format_utc(clock() - timedelta(seconds=120))
        self._thread: Optional[threading.Thread] = None
        self._watcher: Optional[threading.Thread] = None
        self._timeout_kw: dict = {}
        self._busy = threading.Event()  # the worker is loading Apprise
        self.stats: collections.Counter[str] = collections.Counter()
        #: (kind, title, body, ok) of every alert the worker tried to send
        self.history: collections.deque = collections.deque(maxlen=100)

    @classmethod
    def from_config(cls, cfg: Any, *, health=None, updates=None, seen_today=None,
                    stop: Optional[threading.Event] = None) -> Optional["Alerts"]:
        """From the daemon's ``Config`` (its ``notify`` section); None when notifications are off."""
        n = getattr(cfg, "notify", None)
        if n is None or not n.enabled:
            return None
        from edge.sources.metadata import load_zone

        loc = cfg.location
        return cls(read_urls(n.urls, n.urls_file), device_id=cfg.device_id, location_name=loc.name,
                   zone=load_zone(getattr(loc, "timezone", None)), new_species=n.new_species,
                   watch_list=n.watch_list, no_signal=n.no_signal, model_update_failed=n.model_update_failed,
                   min_score=n.min_score, max_per_hour=n.max_per_hour, cooldown_s=n.cooldown_s,
                   no_signal_after=n.no_signal_after,
                   queue_size=n.queue_size, timeout_s=n.timeout_s, health=health, updates=updates,
                   seen_today=seen_today, stop=stop)

    # ---- service -------------------------------------------------------------------
    def start(self) -> None:
        today = self._local_day(self._clock())
        seen: set[str] = set()
        if self._seen_today is not None:  # species already stored today are not "new" after a restart
            try:
                seen = set(self._seen_today(today))
            except Exception as exc:  # noqa: BLE001 - at worst a species is announced twice
                log.warning("alerts: cannot read today's species from the store: %s", exc)
        with self._lock:
            self._day, self._seen = today, seen
        self._thread = threading.Thread(target=self._send_loop, name="alerts", daemon=True)
        self._thread.start()
        self._watcher = threading.Thread(target=self._watch_loop, name="alerts-watch", daemon=True)
        self._watcher.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued within ``timeout``, then stop; a notifier still hanging is left behind (daemon
        thread): it never holds up the daemon's stop."""
        end = time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < end:
            if self._queue.unfinished_tasks == 0 and not self._busy.is_set():
                break
            time.sleep(0.02)
        self._stopping.set()
        for t in (self._watcher, self._thread):
            if t is not None:
                t.join(max(0.1, end - time.monotonic()))

    # ---- detections (the runtime's thread: only cheap work here) ---------------------
    def handle(self, detections: Sequence[Any]) -> None:
        for d in detections:
            try:
                alert = self._for_detection(d)
            except Exception:  # noqa: BLE001 - never let a notification problem reach the pipeline
                log.exception("alerts: cannot make a notification of detection %s", getattr(d, "id", "?"))
                continue
            if alert is not None:
                self.offer(alert)

    def _local_day(self, when: datetime) -> str:
        return when.astimezone(self.zone).date().isoformat()

    def _for_detection(self, d: Any) -> Optional[Alert]:
        if d.score < self.min_score:
            return None
        start = parse_utc(str(d.start_utc))
        day, today = self._local_day(start), self._local_day(self._clock())
        name = d.common_name or d.label.replace("_", " ")
        sci = d.label.replace("_", " ")
        local = start.astimezone(self.zone).strftime("%H:%M")
        first = False
        if day == today:
            with self._lock:
                self._roll_day(today)
                first = d.label not in self._seen
                self._seen.add(d.label)
        detail = f"{name} ({sci}) at {local}, score {d.score:.2f}, on {self.where}"
        if self.enabled["watch_list"] and (normalise(d.label) in self.watch or normalise(name) in self.watch):
            return Alert("watch_list", f"Watched species: {name}",
                         detail + (" (first today)" if first else ""), f"watch:{d.label}", "warning")
        if first and self.enabled["new_species"]:
            return Alert("new_species", f"New today: {name}", f"First {detail}", "")
        return None

    def _roll_day(self, today: str) -> None:  # with self._lock
        if self._day != today:
            self._day, self._seen = today, set()

    # ---- queue and rate limit -------------------------------------------------------
    def offer(self, alert: Alert) -> bool:
        """Queue an alert unless it is within its cooldown or the queue is full; never blocks."""
        now = time.monotonic()
        with self._lock:
            if alert.key and now - self._last_sent.get(alert.key, -1e18) < self.cooldown_s:
                self.stats["cooldown"] += 1
                return False
            if alert.key:
                self._last_sent[alert.key] = now
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.stats["dropped"] += 1
            n = self.stats["dropped"]
            log.log(logging.WARNING if n == 1 or n % 100 == 0 else logging.DEBUG,
                    "alerts: the queue is full (the notifier is slow or failing); dropped %d so far", n)
            return False
        self.stats["queued"] += 1
        return True

    def _allowed(self) -> bool:
        now = time.monotonic()
        while self._sent_times and now - self._sent_times[0] > 3600:
            self._sent_times.popleft()
        if len(self._sent_times) >= self.max_per_hour:
            return False
        self._sent_times.append(now)
        return True

    # ---- the worker -----------------------------------------------------------------
    def _load_apprise(self):
        try:
            import apprise
        except ImportError:
            log.error("alerts: notify.enabled is true but Apprise is not installed; install it with "
                      "pip install 'dawnchorus[notify]' (the daemon runs on without notifications)")
            return None
        ap = apprise.Apprise()
        good = 0
        for url in self.urls:
            if add_url(ap, url):
                good += 1
            else:
                log.error("alerts: notify.urls: Apprise cannot use %s (check the URL's scheme and fields)",
                          redact(url))
        if not good:
            log.error("alerts: no usable notification URL; notifications are off")
            return None
        self._timeout_kw = ({"timeout": self.timeout_s}
                            if "timeout" in inspect.signature(ap.notify).parameters else {})
        log.info("alerts: sending notifications to %d service(s)", good)
        return ap

    def _send_loop(self) -> None:
        self._busy.set()
        ap = self._load_apprise()
        self._busy.clear()
        while not self._stopping.is_set():
            try:
                alert = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if ap is None:
                    self.stats["unsent"] += 1
                elif not self._allowed():
                    self.stats["suppressed"] += 1
                else:
                    self._send(ap, alert)
            finally:
                self._queue.task_done()

    def _send(self, ap, alert: Alert) -> None:
        body = alert.body
        suppressed = self.stats["suppressed"] - self.stats["suppressed_told"]
        if suppressed:
            body += f"\n({suppressed} notification(s) suppressed by notify.max_per_hour)"
        try:
            ok = bool(ap.notify(body=body, title=f"dawnchorus: {alert.title}", notify_type=alert.level,
                                **self._timeout_kw))
        except Exception as exc:  # noqa: BLE001 - a notifier must never take the service down
            log.warning("alerts: sending failed: %s", exc)
            ok = False
        self.history.append((alert.kind, alert.title, body, ok))
        if ok:
            self.stats["sent"] += 1
            self.stats["suppressed_told"] += suppressed
        else:
            self.stats["failed"] += 1
            n = self.stats["failed"]
            log.log(logging.WARNING if n == 1 or n % 50 == 0 else logging.DEBUG,
                    "alerts: could not deliver %r (%d failures so far; see Apprise's log lines above)", alert.title, n)

    # ---- health and model updates (polled) ------------------------------------------
    def _watch_loop(self) -> None:
        while not self._stopping.wait(self.check_s):
            if self.stop_event.is_set():
                break
            try:
                self.check()
            except Exception:  # noqa: BLE001
                log.exception("alerts: checking health and model updates failed")

    def check(self) -> None:
        """Look at the health numbers and the update service once; queue what is new."""
        if self.enabled["no_signal"] and self._health is not None:
            self._check_no_signal(self._health())
        if self.enabled["model_update_failed"] and self._updates is not None:
            self._check_updates()

    def _check_no_signal(self, h: Mapping[str, Any]) -> None:
        """The signal guard's ``no_signal_streak`` (consecutive windows without signal) reaching
        ``no_signal_after`` raises the alarm; back to 0 after an alarm says the signal is back. A boolean
        ``no_signal`` health flag works the same way."""
        if "no_signal_streak" in h:
            streak = h.get("no_signal_streak") or 0
            active = streak >= self.no_signal_after
            clear = streak == 0
            what = f"{streak} consecutive windows without signal (silence, a constant or non-finite input)"
        elif "no_signal" in h:
            active, clear = bool(h["no_signal"]), not h["no_signal"]
            what = "the health's no-signal flag is set"
        else:
            return
        if active and not self._no_signal_on:
            self._no_signal_on = True
            self.offer(Alert("no_signal", f"No signal on {self.device_id}",
                             f"The microphone of {self.where} records no usable signal: {what}. "
                             "Check the microphone, its cable and the gain.", "no_signal", "failure"))
        elif clear and self._no_signal_on:
            self._no_signal_on = False
            self.offer(Alert("no_signal", f"Signal back on {self.device_id}",
                             f"The microphone of {self.where} records again.", "", "success"))

    def _check_updates(self) -> None:
        results = list(getattr(self._updates, "results", []) or [])
        for r in results[self._updates_seen:]:
            if getattr(r, "result", None) == "refused":
                self.offer(Alert("model_update_failed", f"Model update refused on {self.device_id}",
                                 f"{getattr(r, 'name', None) or 'bundle'} {getattr(r, 'version', None) or ''} from "
                                 f"{r.origin}: {r.reason}. The recorder keeps its current model.", "", "warning"))
        self._updates_seen = len(results)
        store = getattr(self._updates, "store", None)
        for rb in (getattr(store, "state", None) or {}).get("rollbacks") or []:
            when = str(rb.get("utc", "")) if isinstance(rb, Mapping) else ""
            if when <= self._rollbacks_after:
                continue
            self._rollbacks_after = when
            self.offer(Alert("model_update_failed", f"Model rolled back on {self.device_id}",
                             f"{rb.get('reason', '')} (at {when})", "", "failure"))

    def snapshot(self) -> dict:
        """Counters for the health message."""
        return {f"alerts_{k}": int(self.stats[k]) for k in ("queued", "sent", "failed", "dropped", "suppressed")}


def service_factory(ctx: Any) -> Optional[Alerts]:
    """For the daemon's service list: notifications when ``notify.enabled``."""
    cfg = ctx.cfg
    if not cfg.notify.enabled:
        return None
    from edge.sources.metadata import load_zone

    zone = load_zone(cfg.location.timezone) or timezone.utc
    store = ctx.store

    def seen_today(day: str) -> set[str]:
        start = datetime.fromisoformat(day).replace(tzinfo=zone)
        span = [format_utc(t) for t in (start, start + timedelta(days=1))]
        return {r["label"] for r in store.detections(since=span[0], until=span[1])}

    try:
        return Alerts.from_config(cfg, health=ctx.health.snapshot, updates=ctx.services.get("updates"),
                                  seen_today=seen_today, stop=ctx.stop)
    except ValueError as exc:  # an unreadable urls_file: say so, run on without notifications
        log.error("alerts: %s; notifications are off", exc)
        return None

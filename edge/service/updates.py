"""Model updates on the device: receive, verify, install atomically, swap, roll back.

At start, ``resolve_startup`` picks the model to run: the state's active
bundle, else its previous one, else the configured bundle, else the bundled
default; each candidate must verify and pass its self-test in the
interpreter, and a crash loop after the last swap rolls back first.

While running, ``UpdateService`` takes bundles from the MQTT topics
``<prefix>/models/<channel>`` and ``<prefix>/<device_id>/model/set`` and, on
its own thread, checks each one in order: size, signature (the configured
team key), hashes, front-end and tensor shapes (``edge.contract.bundle``), not the
active one already, not older unless allowed, not a model this device rolled
back from, runnable by this pipeline; then loads it in a second interpreter
and runs its self-test vector while the old model keeps detecting. Only then
is it installed (``edge.service.modelstore``) and handed to the pipeline, which swaps
between two windows. Any failure leaves the old model running, and the
retained report on ``<prefix>/<device_id>/model`` says what was tried,
whether it was accepted and why.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import queue
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from edge.contract.bundle import Bundle, BundleError, load_bundle, message_limit, parse_bundle
from edge.config import DEFAULT_BUNDLE, DEFAULT_PUBLIC_KEY, Config
from edge.heap import release_heap
from edge.contract.interpreter import InterpreterError, load_model
from edge.service.modelstore import ModelStore, entry_for, utc_now
from edge.contract.signing import SigningKeyError, load_public_key
from edge.types import Service

log = logging.getLogger(__name__)

MB = 1024 * 1024
MAX_REASON_CHARS = 300


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """A reason fit for a report and a log line: one line, bounded."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
REPORT_SCHEMA = "dawnchorus/model/1"  # edge/schemas/model.json


class UpdateError(RuntimeError):
    """No model can be run at all."""


@dataclass
class Running:
    """The model the pipeline runs now."""

    bundle: Bundle
    model: Any
    path: Path
    origin: str  # "active", "previous", "config", "default", "update"


@dataclass
class UpdateResult:
    result: str  # "accepted", "refused" or "ignored"
    reason: str
    origin: str
    received_utc: str
    version: Optional[str] = None
    sha256: Optional[str] = None
    name: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def version_key(version: str) -> tuple:
    """Natural order: '1.10' > '1.9', '2024.06.01' > '2024.5.30'."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.findall(r"\d+|[^\d]+", str(version)))


def compare_versions(a: str, b: str) -> int:
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


def models_dir_for(cfg: Config) -> Path:
    return cfg.model.models_dir or cfg.state_dir / "models"


def team_key(cfg: Config):
    return load_public_key(cfg.model.public_key_path)


# -- start-up -----------------------------------------------------------------
def resolve_startup(cfg: Config, store: ModelStore, public_key=None, loader: Callable = load_model) -> Running:
    """Choose, verify and load the model to run; count this start for the crash-loop rule."""
    public_key = public_key if public_key is not None else team_key(cfg)
    max_bytes = int(cfg.model.max_bundle_mb * MB)
    store.cleanup()
    reason = store.record_start(cfg.updates.crash_loop_window_s, cfg.updates.crash_loop_max)
    if reason:
        store.rollback(reason)
    candidates: list[tuple[str, Path, Any]] = []
    for kind in ("active", "previous"):
        entry = store.state.get(kind)
        if entry:
            candidates.append((kind, Path(entry["file"]), public_key))
    if cfg.model.bundle:
        candidates.append(("config", Path(cfg.model.bundle), public_key))
    try:
        candidates.append(("default", DEFAULT_BUNDLE, load_public_key(DEFAULT_PUBLIC_KEY)))
    except SigningKeyError as exc:
        log.error("bundled default model unusable: %s", exc)
    failures = []
    for kind, path, key in candidates:
        try:
            bundle = load_bundle(path, key, max_bytes=max_bytes)
            model = loader(bundle, cfg.model.num_threads)
        except (BundleError, InterpreterError) as exc:
            failures.append(f"{kind} {path}: {exc}")
            log.error("cannot run the %s model %s: %s", kind, path, exc)
            act = store.active
            if act and Path(act["file"]) == path:
                store.rollback(f"{kind} model failed to load at start: {exc}")
            continue
        store.record_running(entry_for(bundle, path))
        log.info("running the %s model: %s", kind, bundle.describe())
        return Running(bundle, model, path, kind)
    raise UpdateError("no loadable model: " + "; ".join(failures))


# -- the update service ---------------------------------------------------------
class UpdateService(Service):
    """Receives bundles, checks them, swaps them in, and reports.

    ``pipeline`` needs ``set_model(bundle, model)``; ``publisher`` (optional)
    needs ``subscribe(topic, handler, max_bytes)`` and
    ``publish(topic, payload, qos, retain)``.
    """

    def __init__(self, cfg: Config, store: ModelStore, running: Running, pipeline, *, publisher=None,
                 topics=None, public_key=None, stop_event: threading.Event | None = None,
                 progress: Callable[[], int] | None = None, loader: Callable = load_model, clock=time.monotonic):
        self.cfg = cfg
        self.store = store
        self.running = running
        self.pipeline = pipeline
        self.publisher = publisher
        self.topics = topics
        self.public_key = public_key if public_key is not None else team_key(cfg)
        self.stop_event = stop_event or threading.Event()
        self.max_bytes = int(cfg.model.max_bundle_mb * MB)
        self._progress = progress
        self._loader = loader
        self._clock = clock
        # (payload, origin, ticket) to check, or (None, origin, UpdateResult) to report
        self._queue: queue.Queue[tuple[Optional[bytes], str, Any]] = queue.Queue(maxsize=16)
        # bytes in hand (waiting or being checked): at most one largest message; more is refused on arrival
        self._in_hand: dict[int, tuple[str, int]] = {}  # ticket -> (origin, bytes)
        self._tickets = itertools.count()
        self._in_hand_max = message_limit(self.max_bytes)
        self._queued_lock = threading.Lock()
        self._lock = threading.Lock()  # one update at a time
        self._last_refused_digest: str | None = None
        self._run_started = clock()
        self._progress_at_start = progress() if progress else 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # stop() must not set the daemon's shared stop event
        self.results: list[UpdateResult] = []

    # lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._worker, name="model-updates", daemon=True)
        self._thread.start()
        if self.publisher is not None and self.topics is not None:
            if self.cfg.updates.enabled:
                # a little over the limit reaches us, so that a bundle just too big is refused with a report;
                # beyond that the broker (MQTT 5: our maximum packet size) or the MQTT client drops it
                for topic in (self.topics.model_channel(self.cfg.updates.channel), self.topics.model_set):
                    self.publisher.subscribe(topic, self._on_message, message_limit(self.max_bytes))
            self.publish_report()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.store.record_clean_stop()

    # input
    def _on_message(self, topic: str, payload: bytes) -> None:
        """From the MQTT thread: queue the bundle; the work happens on our own thread."""
        self.offer(bytes(payload), topic)

    def offer(self, payload: bytes, origin: str) -> bool:
        """Take a bundle to check on the updates thread; returns whether it was taken.

        The bundles in hand (waiting or being checked) hold at most one largest message's bytes (checking one
        costs a few times its size): one that comes beyond that is refused at once, with a log line, and
        reported after the one in hand."""
        with self._queued_lock:
            held = sum(n for _, n in self._in_hand.values())
            if not held or held + len(payload) <= self._in_hand_max:
                ticket = next(self._tickets)
                try:
                    self._queue.put_nowait((payload, origin, ticket))
                except queue.Full:
                    pass
                else:
                    self._in_hand[ticket] = (origin, len(payload))
                    return True
            first = next(iter(self._in_hand.values()), ("", 0))
        reason = one_line(f"{origin}: not checked: {len(payload)} bytes arrived while {held} bytes of bundles wait or "
                          f"are checked (first from {first[0]}); this device holds one largest bundle at a time: "
                          "send it again after that one's report")
        log.warning("bundle refused: %s", reason)
        try:
            self._queue.put_nowait((None, origin, UpdateResult("refused", reason, origin, utc_now())))
        except queue.Full:
            pass  # the log line says it; the report says the latest refusal already
        return False

    def _worker(self) -> None:
        was_connected = False
        while not (self.stop_event.is_set() or self._stopping.is_set()):
            connected = bool(getattr(self.publisher, "connected", False))
            if connected and not was_connected:
                self.publish_report()  # on every (re)connect: the broker may have lost the retained one
            was_connected = connected
            try:
                payload, origin, extra = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._check_healthy()
                continue
            if payload is None:  # a bundle refused on arrival: report it after the one in hand
                with self._lock:
                    self._record(extra)
                continue
            size = len(payload)
            try:
                self.process(payload, origin)
            except Exception:  # never let one bundle end the updates thread
                log.exception("unexpected error handling a bundle from %s", origin)
            finally:
                del payload  # before the next message is let in
                with self._queued_lock:
                    self._in_hand.pop(extra, None)
                if size > MB:
                    release_heap()
            self._check_healthy()

    def _check_healthy(self) -> None:
        """The active model counts as healthy after a crash-loop window of running with progress."""
        if self.store.state["healthy"]:
            return
        if self._clock() - self._run_started < self.cfg.updates.crash_loop_window_s:
            return
        if self._progress is not None and self._progress() <= self._progress_at_start:
            return
        with self._lock:
            self.store.mark_healthy()
            self.publish_report()

    # the flow
    def process(self, payload: bytes, origin: str) -> UpdateResult:
        """Check one received bundle and swap it in when it passes; returns what happened."""
        with self._lock:
            received = utc_now()
            digest = hashlib.sha256(payload).hexdigest()
            if digest == self._last_refused_digest:
                log.debug("same refused bundle again from %s; ignored", origin)
                return UpdateResult("ignored", "identical to the bundle refused last", origin, received)
            try:
                result = self._process(payload, origin, received)
            except Exception as exc:  # noqa: BLE001 - whatever a bundle does, it is refused with a report
                log.debug("bundle check traceback", exc_info=True)
                result = UpdateResult("refused", one_line(f"{origin}: cannot check the bundle: "
                                                          f"{type(exc).__name__}: {exc}"), origin, received)
            self._last_refused_digest = digest if result.result == "refused" else None
            self._record(result)
            return result

    def _record(self, result: UpdateResult) -> None:
        """Log, keep and (unless ignored) report what happened to a bundle; under ``self._lock``."""
        self.results.append(result)
        if result.result == "ignored":
            log.info("bundle from %s ignored: %s", result.origin, result.reason)
        else:
            log_fn = log.info if result.result == "accepted" else log.warning
            log_fn("bundle %s %s from %s %s: %s", result.name, result.version, result.origin, result.result,
                   result.reason)
            self.store.set_last_update(result.to_dict())
            self.publish_report()

    def _process(self, payload: bytes, origin: str, received: str) -> UpdateResult:
        def refuse(reason: str, bundle: Bundle | None = None, result: str = "refused") -> UpdateResult:
            ids = dict(version=bundle.version, sha256=bundle.sha256, name=bundle.name) if bundle else {}
            return UpdateResult(result, reason, origin, received, **ids)

        try:
            bundle = parse_bundle(payload, self.public_key, path=origin, max_bytes=self.max_bytes)
        except BundleError as exc:
            return refuse(one_line(str(exc)))
        cur = self.running.bundle
        if bundle.version == cur.version and bundle.sha256 == cur.sha256:
            return refuse(f"{bundle.version} is already active", bundle, "ignored")
        if self.store.is_refused(bundle.version, bundle.sha256):
            return refuse(f"{bundle.version} (sha256 {bundle.sha256[:12]}) was rolled back on this device before", bundle)
        order = compare_versions(bundle.version, cur.version)
        if order == 0:
            return refuse(f"version {bundle.version} is already active with another model "
                          f"(sha256 {cur.sha256[:12]}, offered {bundle.sha256[:12]})", bundle)
        if order < 0 and not self.cfg.updates.allow_downgrade:
            return refuse(f"{bundle.version} is older than the active {cur.version} "
                          "(set updates.allow_downgrade to accept rollbacks by the team)", bundle)
        problem = self.incompatibility(bundle)
        if problem:
            return refuse(problem, bundle)
        try:
            model = self._loader(bundle, self.cfg.model.num_threads)  # a second interpreter; runs the self-test
        except InterpreterError as exc:
            return refuse(f"{bundle.version} failed to load: {exc}; kept {cur.version}", bundle)
        try:
            path = self.store.install(payload, bundle)
            self.store.activate(entry_for(bundle, path))
        except OSError as exc:
            return refuse(f"cannot install {bundle.version}: {exc}; kept {cur.version}", bundle)
        try:
            self.pipeline.set_model(bundle, model)
        except Exception as exc:  # the pipeline refused it: go back to what ran
            self.store.rollback(f"pipeline refused {bundle.version}: {exc}")
            return refuse(f"pipeline refused {bundle.version}: {exc}; rolled back to {cur.version}", bundle)
        self.running = Running(bundle, model, path, "update")
        self._run_started = self._clock()
        self._progress_at_start = self._progress() if self._progress else 0
        return refuse(f"swapped {cur.version} -> {bundle.version}", bundle, "accepted")

    def incompatibility(self, bundle: Bundle) -> str | None:
        """Why this pipeline cannot run ``bundle`` live, or None."""
        cur = self.running.bundle.frontend
        if bundle.frontend.sample_rate != cur.sample_rate:
            return (f"front-end sample rate {bundle.frontend.sample_rate} Hz differs from the running "
                    f"{cur.sample_rate} Hz; the capture cannot change rate live")
        check = getattr(self.pipeline, "can_run", None)
        if check is not None:
            return check(bundle)
        return None

    # the report
    def report(self) -> dict:
        st = self.store.state

        def brief(e):
            return e and {k: e.get(k) for k in ("name", "version", "sha256", "since_utc")}

        return {
            "schema": REPORT_SCHEMA,
            "device_id": self.cfg.device_id,
            "ts": utc_now(),
            "active": brief(st.get("active")),
            "previous": brief(st.get("previous")),
            "healthy": st.get("healthy"),
            "last_update": st.get("last_update"),
            "last_rollback": (st.get("rollbacks") or [None])[-1],
        }

    def publish_report(self) -> None:
        if self.publisher is None or self.topics is None:
            return
        try:
            self.publisher.publish(self.topics.model, json.dumps(self.report()).encode(), qos=1, retain=True)
        except Exception as exc:  # the report is best effort; the state file keeps it for the next try
            log.warning("cannot publish the model report: %s", exc)

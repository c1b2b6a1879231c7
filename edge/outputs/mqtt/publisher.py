"""Publish every stored detection to MQTT, and lose none.

The SQLite store is the outbox. The pipeline commits a detection first; the
publisher then sends it (QoS 1) and marks it published only when the broker
acknowledges it (PUBACK: paho's ``on_publish``, matched by message id). What
is not acknowledged stays unpublished in the store and is sent again after a
reconnect or a restart, oldest first, at most ``max_backlog_rate`` per second,
while new detections (``handle()``) go out at once. Delivery is at least once:
consumers de-duplicate on the detection ``id``.

A PUBACK is not the end of the story: a broker that crashes can lose messages
it acknowledged but had not yet delivered or saved. So after a connection loss
this side did not ask for (no DISCONNECT from the broker either), the
detections FIRST acknowledged in the last ``resend_window_s`` seconds
(counted back from the last acknowledgement) go back to the outbox
(``Store.requeue_acked_since``) and the backlog sends them again, after the
never-sent backlog. The window is measured on ``edge.clock.OutboxClock``
(monotonic, continued across restarts from the store's last acknowledgement)
and the first acknowledgement's time is stored (``acked_t``): a device restart
or a clock step does not move an acknowledgement out of the window, and a
re-send does not refresh it (crashes less than a window apart do not send
everything again each time).

The status topic is retained: ``online`` with health on connect and every
``health_interval_s``; ``offline`` as the last will (and on a clean stop).

All store access happens on the publisher's own thread (``mqtt-outbox``).
"""
from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from edge.contract.record import Detection, utc_now
from edge.outputs.mqtt import payloads
from edge.config import Config, MQTTConfig
from edge.types import HealthSource, Outbox, Service
from edge.outputs.mqtt.client import Handler, MQTTClient
from edge.outputs.mqtt.discovery import Discovery
from edge.outputs.mqtt.ledger import Ledger
from edge.outputs.mqtt.topics import Topics
from edge.clock import OutboxClock

log = logging.getLogger(__name__)


def max_packet_bytes(config: Config) -> int:
    """The largest MQTT packet this device accepts (announced to an MQTT 5 broker, which then drops larger
    ones): the largest subscribed message (a model bundle when updates are on) plus room for the headers."""
    from edge.contract.bundle import message_limit

    largest = config.mqtt.max_message_kb * 1024
    if config.updates.enabled:
        largest = max(largest, message_limit(int(config.model.max_bundle_mb * 2**20)))
    return largest + 64 * 1024


class Publisher(Service):
    """The MQTT side of the recorder, a ``Service``: ``handle`` takes new detections already stored.

    ``outbox``: the store, or a zero-argument callable that opens one (called
    on the publisher's thread: SQLite connections are per thread).
    ``health``: whose ``snapshot()`` is merged into the status message.
    """

    name = "mqtt"

    def __init__(self, cfg: MQTTConfig, device_id: str, outbox: Union[Outbox, Callable[[], Outbox]], *,
                 location: Any = None, health: Optional[HealthSource] = None, stop: Optional[threading.Event] = None,
                 sw_version: str = "", batch: int = 50, max_inflight: int = 100, poll_s: float = 5.0,
                 state_dir: Any = None, max_packet_bytes: Optional[int] = None):
        self.cfg = cfg
        self.device_id = device_id
        self.topics = Topics(cfg.prefix, device_id, cfg.homeassistant.discovery_prefix)
        self.location = location
        self._outbox_arg = outbox
        self._outbox: Optional[Outbox] = None
        self._health = health
        self.stop_event = stop or threading.Event()
        self.sw_version = sw_version
        self.ha = Discovery.for_publisher(cfg, self.topics, location=location, sw_version=sw_version,
                                          state_dir=state_dir)
        self._batch = batch
        self._max_inflight = max_inflight
        self._poll_s = poll_s

        self._lock = threading.Lock()  # the re-send window's times
        self.ledger = Ledger(self.topics.base)
        self._live: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._just_connected = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._backlog_pending = True
        self._tokens = 0.0
        self._last_refill = time.monotonic()
        self._next_health = 0.0
        self._last_poll = 0.0
        self._started = time.monotonic()
        self._clock = OutboxClock()  # the re-send window's time (continued from the store's once it is open)
        self._last_ack_t: Optional[float] = None  # OutboxClock time of the broker's last acknowledgement
        self._requeue_since: Optional[float] = None  # set on an unclean loss: re-send what was acked since
        self._drain: Optional[dict] = None
        #: one entry per reconnect: backlog at connect and seconds until drained
        self.drains: list[dict] = []
        self.stats: collections.Counter[str] = collections.Counter()

        will = payloads.encode(payloads.status(device_id, "offline"))
        self.client = MQTTClient(cfg, cfg.client_id or f"dawnchorus-{device_id}", self.stop_event,
                                 will=(self.topics.status, will), on_connected=self._on_connected,
                                 on_ack=self._on_ack, on_reset=self._on_reset, on_lost=self._on_lost,
                                 max_packet_bytes=max_packet_bytes)

    @classmethod
    def from_config(cls, config: Config, outbox, **kw) -> "Publisher":
        kw.setdefault("max_packet_bytes", max_packet_bytes(config))
        return cls(config.mqtt, config.device_id, outbox, location=config.location, state_dir=config.state_dir, **kw)

    # ---- service ---------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
        self._thread.start()
        self.client.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Say ``offline``, wait briefly for outstanding acks, record them, disconnect."""
        self.stop_event.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 5)
        if self._outbox is not None:
            self._shutdown(timeout)  # here, not on the thread: the daemon's last detections come after the stop event
        self.client.stop()

    # ---- DetectionSink ---------------------------------------------------
    def handle(self, detections: Sequence[Detection]) -> None:
        """New detections, already committed to the store: send them now (if connected)."""
        if detections:
            self._live.extend(detections)
            self._wake.set()

    def drain(self, timeout_s: float) -> None:
        """Wait until the broker acknowledged everything in the outbox, at most ``timeout_s`` (end of a replay)."""
        end = time.monotonic() + timeout_s
        left = -1
        while time.monotonic() < end:
            outbox = self._outbox
            if outbox is not None and self.connected:
                left = outbox.outbox_depth()
                if left == 0:
                    return
            time.sleep(0.2)
        log.warning("MQTT: %s detections not yet acknowledged after %gs; they stay in the store's outbox and are "
                    "sent by the next replay --mqtt or daemon using this store", "some" if left < 0 else left,
                    timeout_s)

    # ---- API for other parts (model updates) -------------------------------
    def subscribe(self, topic: str, handler: Handler, max_bytes: Optional[int] = None) -> None:
        """``handler(topic, payload)`` for each message; see ``MQTTClient.subscribe``."""
        self.client.subscribe(topic, handler, max_bytes)

    def unsubscribe(self, topic: str) -> None:
        self.client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Optional[int]:
        """Publish any message (e.g. the retained model report). Sent when connected."""
        return self._send(topic, payload, qos, retain, None)

    @property
    def connected(self) -> bool:
        return self.client.connected

    def wait_connected(self, timeout: float) -> bool:
        return self.client.wait_connected(timeout)

    # ---- paho callbacks (network thread) -----------------------------------
    def _on_connected(self) -> None:
        self._just_connected.set()
        self._wake.set()

    def _on_ack(self, mid: int, ok: bool, reason: str) -> None:
        if ok:
            with self._lock:
                self._last_ack_t = self._clock.now()
        self.ledger.ack(mid, ok, reason)
        self._wake.set()

    def _on_reset(self) -> None:
        self.ledger.reset()

    def _on_lost(self, unclean: bool) -> None:
        """The connection ended (network thread). Unclean: the broker may have lost what it acknowledged."""
        window = self.cfg.resend_window_s
        with self._lock:
            if not unclean or window <= 0 or self._last_ack_t is None:
                return
            since = self._last_ack_t - window
            if self._requeue_since is None or since < self._requeue_since:
                self._requeue_since = since
        self._wake.set()

    # ---- sending ---------------------------------------------------------
    def _send(self, topic: str, payload: bytes, qos: int, retain: bool, det_id: Optional[str]) -> Optional[int]:
        mid = self.client.publish(topic, payload, qos=qos, retain=retain)
        if mid is None:
            return None
        if qos == 0:
            return mid
        self.ledger.sent(mid, det_id, topic)
        return mid

    def _record(self, row: Mapping[str, Any]) -> Optional[Detection]:
        """An outbox row as the record; None (refused until the next connection) if it cannot be one."""
        try:
            return Detection.from_row(row)
        except ValueError as exc:
            log.error("MQTT: cannot make a message of a stored detection, skipped: %s", exc)
            if row.get("id"):
                self.ledger.refuse(row["id"])
            return None

    def _send_detection(self, det: Detection) -> bool:
        """Send one detection; False if not sent now (already in flight, refused, just acknowledged)."""
        try:
            msg = payloads.detection(det, self.location)
        except ValueError as exc:
            log.error("MQTT: cannot make a message of a stored detection, skipped: %s", exc)
            self.ledger.refuse(det.id)  # not again until the next connection
            return False
        det_id = msg["id"]
        if self.ledger.blocked(det_id):
            return False
        if self._send(self.topics.detections, payloads.encode(msg), 1, False, det_id) is None:
            return False
        self.stats["published"] += 1
        self.ha.sent(msg, self)
        return True

    # ---- the outbox thread -------------------------------------------------
    def _run(self) -> None:
        try:
            self._outbox = self._open_outbox()
            last = self._outbox.last_acked_t()
        except Exception:
            log.exception("MQTT: cannot open the outbox; nothing will be published")
            return
        with self._lock:  # acknowledgements from before a restart stay in the window
            self._clock.continue_from(last)
            if last is not None and (self._last_ack_t is None or self._last_ack_t < last):
                self._last_ack_t = last
        failures, last_log = 0, -1e18
        while not self.stop_event.is_set():
            try:
                self._step()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - keep publishing whatever went wrong once
                # a store that refuses (disk full, locked, read-only): one line, then at most one a minute
                failures += 1
                if time.monotonic() - last_log >= 60:
                    last_log = time.monotonic()
                    if isinstance(exc, (sqlite3.Error, OSError)):
                        log.error("MQTT: the outbox (store) refuses: %s; acknowledgements are kept and recorded once "
                                  "it takes them (%d failure(s) in a row; logged at most once a minute)", exc, failures)
                    else:
                        log.exception("MQTT: error in the outbox loop")
                self.stop_event.wait(min(30.0, 2.0 ** min(failures, 5) / 2))
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _open_outbox(self) -> Outbox:
        o = self._outbox_arg
        return o if isinstance(o, Outbox) else o()

    def _box(self) -> Outbox:
        """The outbox, opened by the outbox thread before anything uses it."""
        assert self._outbox is not None
        return self._outbox

    def _next_wait(self) -> float:
        if not self.client.connected:
            return 1.0
        if self._backlog_pending:
            return max(0.02, 1.0 / self.cfg.max_backlog_rate)
        return min(self._poll_s, max(0.05, self._next_health - time.monotonic()))

    def _step(self) -> None:
        self.client.maintain()
        with self._lock:  # taken before the flush: the lost connection's acks are already in the ledger
            requeue_since, self._requeue_since = self._requeue_since, None
        refused = None
        try:
            self._flush_acks()
        except (sqlite3.Error, OSError) as exc:  # the store refuses writes: keep sending, record the acks later
            refused = exc
        if requeue_since is not None:
            self._requeue(requeue_since)
        if not self.client.connected:
            self._live.clear()  # they are in the store: the backlog sends them after reconnecting
        else:
            now = time.monotonic()
            if self._just_connected.is_set():
                self._just_connected.clear()
                self._connected_now(now)
            self._send_live()
            self._send_backlog(now)
            if now >= self._next_health:
                self.publish_health()
        if refused is not None:
            raise refused

    def _requeue(self, since: float) -> None:
        """Back to the outbox: what was first acknowledged since ``since`` (OutboxClock), after an unclean loss."""
        ids = list(self._box().requeue_acked_since(since))
        self.ledger.forget(ids)
        self.stats["requeued"] += len(ids)
        if ids:
            log.info("MQTT: the connection dropped without a goodbye; the %d detections the broker acknowledged in "
                     "its last %gs go back to the outbox and are sent again (a crashed broker can lose acknowledged "
                     "messages; consumers de-duplicate on id)", len(ids), self.cfg.resend_window_s)

    def _connected_now(self, now: float) -> None:
        self.ledger.connected()
        self._backlog_pending = True
        self._tokens = 0.0
        self._last_refill = now
        depth = self._box().outbox_depth()
        self._drain = {"connected_at": time.monotonic(), "backlog": depth, "drained_s": None} if depth else None
        if depth:
            log.info("MQTT: %d detections waiting in the outbox; sending them at up to %g/s",
                     depth, self.cfg.max_backlog_rate)
        self.publish_health()
        self.ha.connected(self)

    def _send_live(self) -> None:
        while self._live:
            if self.ledger.in_flight() >= self._max_inflight:
                return
            self._send_detection(self._live.popleft())

    def _send_backlog(self, now: float) -> None:
        rate = self.cfg.max_backlog_rate
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now
        if not self._backlog_pending:
            if now - self._last_poll < self._poll_s:
                return
        self._last_poll = now
        in_flight = self.ledger.in_flight()
        room = self._max_inflight - in_flight
        skip = in_flight + self.ledger.refused()
        if room <= 0 or self._tokens < 1:
            return
        rows = self._box().unpublished(skip + min(self._batch, room, int(self._tokens)))
        sent = 0
        for row in rows:
            if self._tokens < 1:
                break
            det = self._record(row)
            if det is not None and self._send_detection(det):
                self._tokens -= 1
                sent += 1
        self.stats["backlog_sent"] += sent
        self._backlog_pending = sent > 0 or self.ledger.in_flight() > 0
        if not self._backlog_pending and self._drain is not None:
            self._drain["drained_s"] = round(time.monotonic() - self._drain["connected_at"], 3)
            self.drains.append(self._drain)
            log.info("MQTT: outbox drained: %d detections in %.1fs after reconnecting",
                     self._drain["backlog"], self._drain["drained_s"])
            self._drain = None

    def _flush_acks(self) -> None:
        ids = self.ledger.take_acked()
        if ids:
            try:
                self._box().mark_published(ids, utc_now(), self._clock.now())
            except BaseException:
                self.ledger.put_back_acked(ids)  # not recorded: kept for the next try (else they would be sent again)
                raise
            self.stats["acked"] += len(ids)

    # ---- status and health -----------------------------------------------------
    def health(self) -> dict:
        h: dict[str, Any] = {}
        try:
            if self._health is not None:
                h.update(self._health.snapshot())
        except Exception as exc:  # noqa: BLE001 - health is best effort
            log.warning("MQTT: cannot read the health numbers: %s", exc)
        h.setdefault("uptime_s", round(time.monotonic() - self._started, 1))
        if self._outbox is not None:
            h["outbox_depth"] = int(self._outbox.outbox_depth())
            if h.get("detections_total") is None:
                h["detections_total"] = int(self._outbox.count())
        return h

    def mqtt_stats(self) -> dict:
        return {"protocol": self.client.protocol, "connects": self.client.connects,
                "published": self.stats["published"], "acked": self.stats["acked"],
                "backlog_sent": self.stats["backlog_sent"], "refused": self.ledger.refusals,
                "requeued": self.stats["requeued"]}

    def publish_health(self) -> None:
        self._next_health = time.monotonic() + self.cfg.health_interval_s
        msg = payloads.status(self.device_id, "online", self.health(), self.mqtt_stats())
        self._send(self.topics.status, payloads.encode(msg), 1, True, None)

    def _shutdown(self, timeout: float) -> None:
        """On stop: the last live detections, offline status, a short wait for acks, record them."""
        if self.client.connected:
            self._max_inflight += len(self._live)
            self._send_live()
            self._send(self.topics.status, payloads.encode(payloads.status(self.device_id, "offline")), 1, True, None)
            end = time.monotonic() + min(timeout, 3.0)
            while time.monotonic() < end and self.ledger.messages_in_flight():
                time.sleep(0.02)
        try:
            self._flush_acks()
        except (sqlite3.Error, OSError) as exc:  # they stay in the outbox: sent again next time
            log.error("MQTT: cannot record %d acknowledgement(s) in the store at stop: %s", self.ledger.acked_waiting(),
                      exc)
        left = self.ledger.in_flight()
        if left:
            log.info("MQTT: stopping with %d detections unacknowledged; they stay in the outbox", left)

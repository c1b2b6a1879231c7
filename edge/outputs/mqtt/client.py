"""The MQTT connection: paho-mqtt 2.x, TLS, login, reconnects, subscriptions.

``MQTTClient`` connects asynchronously (``connect_async`` + ``loop_start``), so
nothing waits for the broker: it may be down at boot, refuse the login, or
vanish for hours; paho retries with exponential backoff between
``reconnect_min_s`` and ``reconnect_max_s`` and the caller keeps working.

Protocol ``auto`` connects with MQTT 5 and falls back to 3.1.1 when the broker
answers "unsupported protocol version" (then stays there).

Subscriptions (``subscribe(topic, handler, max_bytes)``) survive reconnects.
They are QoS 0 (``SUBSCRIPTION_QOS``): the broker keeps no in-flight state
for what it sends us, so messages it drops for our maximum packet size cannot
hold up later ones (mosquitto 2.0.11 keeps each such QoS 1 message in flight
for good: 20 of them stopped every later model update). Nothing subscribed
needs more: the session ends with each connection, so what a device must not
miss (model bundles) is retained and comes again on every (re)subscribe.
Handlers run on one dispatcher thread, never on paho's network thread;
oversized messages, undecodable topics and handler errors are dropped with a
log line and never reach or stop the client. Large messages (over 1 MB)
waiting for their handler hold at most one largest message's bytes (their
subscription's limit): a burst of bundles read faster than handled is
dropped with a log line, not piled up in memory. Small messages are never
held back by it.

The password is read from ``password_file`` or ``password_env`` and is never
logged.
"""
from __future__ import annotations

import logging
import queue
import ssl
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from edge.heap import release_heap
from edge.config.base import ConfigError
from edge.config.mqtt import MQTTConfig
from edge.config.mqtt import read_password as config_password

log = logging.getLogger(__name__)

# CONNACK codes meaning "this broker does not speak MQTT 5"
_UNSUPPORTED_PROTOCOL = {1, 132}


class _QuietRetries(logging.Filter):
    """paho logs an ERROR line on every retry while the broker is down; our own lines say it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger(__name__ + ".paho")
_paho_log.addFilter(_QuietRetries())


class MQTTSetupError(ValueError):
    """The MQTT settings cannot be used (unreadable password file, missing TLS file, ...)."""


#: the kernel's receive buffer for the broker connection (Linux doubles it). Small, so that a large message (a
#: bundle) is read in small pieces while the broker waits on TCP's window: the next one of a burst is not in this
#: process before the last one is handled (bench/_hostile.py: a burst of six 9 MB messages peaked 48 MB above the
#: idle daemon with the kernel's default, 38 MB with this), and never costs a whole extra copy in one read
RECEIVE_BUFFER_BYTES = 128 * 1024

#: the QoS of our subscriptions (see the module's docstring; docs/hostile-inputs.md): 0, never 1
SUBSCRIPTION_QOS = 0

_LARGE = 1 << 20  # a large message (a bundle): bounded while it waits; its heap given back after

#: ``handler(topic, payload)``; raise (e.g. ValueError) to reject a malformed payload
Handler = Callable[[str, bytes], None]


def read_password(cfg: MQTTConfig) -> Optional[str]:
    """The broker password (``edge.config.mqtt.read_password``); raises ``MQTTSetupError``."""
    try:
        return config_password(cfg)
    except ConfigError as exc:
        raise MQTTSetupError(str(exc)) from None


def _check_tls_files(cfg: MQTTConfig) -> None:
    tls = cfg.tls
    if tls is None:
        return
    for key in ("ca_file", "cert_file", "key_file"):
        p = getattr(tls, key)
        if p is not None and not Path(p).is_file():
            raise MQTTSetupError(f"mqtt.tls.{key} {p}: no such file")
    if (tls.cert_file is None) != (tls.key_file is None):
        raise MQTTSetupError("mqtt.tls: cert_file and key_file go together (client certificate and its key)")


class MQTTClient:
    """One broker connection with reconnects and subscriptions.

    Callbacks given by the owner run on paho's network thread and must be
    quick: ``on_connected()`` after each accepted CONNACK, ``on_ack(mid, ok,
    reason)`` for each acknowledged QoS 1 publish, ``on_reset()`` when the
    underlying client is replaced (in-flight messages are gone),
    ``on_lost(unclean)`` when an established connection ends; ``unclean`` is
    True unless this side asked for it or the broker closed it with a
    DISCONNECT packet (a crashed broker, a dropped link).
    """

    def __init__(self, cfg: MQTTConfig, client_id: str, stop: threading.Event, *,
                 will: Optional[tuple[str, bytes]] = None,
                 on_connected: Callable[[], None] = lambda: None,
                 on_ack: Callable[[int, bool, str], None] = lambda mid, ok, reason: None,
                 on_reset: Callable[[], None] = lambda: None,
                 on_lost: Callable[[bool], None] = lambda unclean: None,
                 max_inflight: int = 20, dispatch_queue: int = 64, max_packet_bytes: Optional[int] = None):
        self.cfg = cfg
        # MQTT 5: the broker must not send us larger packets (it drops them), so no subscribed message can
        # cost more memory than this; under 3.1.1 the size bounds of subscribe() still drop them (after reading)
        self.max_packet_bytes = max_packet_bytes
        self.client_id = client_id
        self.stop_event = stop
        self.will = will
        self._on_connected = on_connected
        self._on_ack = on_ack
        self._on_reset = on_reset
        self._on_lost = on_lost
        self._max_inflight = max_inflight
        self._password = read_password(cfg)
        _check_tls_files(cfg)
        self.protocol = "3.1.1" if cfg.protocol == "3.1.1" else "5"
        self._protocol_settled = cfg.protocol != "auto"
        self._subs: dict[str, tuple[Handler, int]] = {}  # topic -> (handler, max_bytes)
        self._subs_lock = threading.Lock()
        self._dispatch: queue.Queue = queue.Queue(maxsize=dispatch_queue)
        self._waiting_bytes = 0  # bytes of large messages queued for handlers, not yet handled
        self._waiting_lock = threading.Lock()
        self._dispatcher: Optional[threading.Thread] = None
        self._connected = threading.Event()
        self._client: Any = None  # paho.mqtt.client.Client once opened
        self._client_lock = threading.Lock()
        self._fallback = threading.Event()
        self._fail_logged = False
        self._refusals = 0
        self._stopping = False
        self._release_heap = False  # a large message was dropped: give its heap back when idle
        self.connects = 0

    # ---- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="mqtt-dispatch", daemon=True)
        self._dispatcher.start()
        self._open()
        log.info("MQTT: connecting to %s:%d as %s (MQTT %s%s%s) in the background", self.cfg.host, self.cfg.port,
                 self.client_id, "5, falling back to 3.1.1" if not self._protocol_settled else self.protocol,
                 ", TLS" if self.cfg.tls else "", f", user {self.cfg.username}" if self.cfg.username else "")

    def _open(self) -> None:
        import paho.mqtt.client as mqtt

        proto = mqtt.MQTTv5 if self.protocol == "5" else mqtt.MQTTv311
        if proto == mqtt.MQTTv5:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto)
        else:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto,
                            clean_session=True)
        c.enable_logger(_paho_log)
        c.suppress_exceptions = True
        c.max_inflight_messages_set(self._max_inflight)
        c.reconnect_delay_set(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)  # type: ignore[arg-type]  # paho says int, takes float
        if self.cfg.username is not None:
            c.username_pw_set(self.cfg.username, self._password)
        if self.cfg.tls is not None:
            t = self.cfg.tls
            c.tls_set(ca_certs=str(t.ca_file) if t.ca_file else None,
                      certfile=str(t.cert_file) if t.cert_file else None,
                      keyfile=str(t.key_file) if t.key_file else None,
                      cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            c.tls_insecure_set(t.insecure)
        if self.will is not None:
            c.will_set(self.will[0], self.will[1], qos=1, retain=True)
        c.on_connect = self._handle_connect
        c.on_connect_fail = self._handle_connect_fail
        c.on_disconnect = self._handle_disconnect
        c.on_publish = self._handle_publish
        c.on_message = self._handle_message
        with self._client_lock:
            self._client = c
        props = None
        if proto == mqtt.MQTTv5 and self.max_packet_bytes:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = int(self.max_packet_bytes)
        c.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, properties=props)
        c.loop_start()

    def _close(self) -> None:
        with self._client_lock:
            c, self._client = self._client, None
        if c is not None:
            try:
                c.disconnect()
            except Exception:  # noqa: BLE001 - closing, nothing else to do
                pass
            c.loop_stop()
        self._connected.clear()

    def maintain(self) -> None:
        """Called periodically by the owner's thread: applies a protocol fallback."""
        if self._fallback.is_set() and not self.stop_event.is_set():
            self._fallback.clear()
            self._close()
            self.protocol = "3.1.1"
            self._protocol_settled = True
            self._on_reset()
            log.warning("MQTT: the broker does not speak MQTT 5; reconnecting with MQTT 3.1.1")
            self._open()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._close()
        try:
            self._dispatch.put_nowait(None)
        except queue.Full:
            pass
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # ---- publishing ------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Optional[int]:
        """Hand a message to paho; returns its mid (acknowledged later through on_ack), None if no client."""
        with self._client_lock:
            c = self._client
        if c is None:
            return None
        info = c.publish(topic, payload, qos=qos, retain=retain)
        return info.mid

    # ---- subscriptions ---------------------------------------------------
    def subscribe(self, topic: str, handler: Handler, max_bytes: Optional[int] = None) -> None:
        """Call ``handler(topic, payload)`` for each message on ``topic`` (wildcards allowed).

        Messages larger than ``max_bytes`` (default ``mqtt.max_message_kb``)
        are dropped with a log line. Exceptions from the handler (a malformed
        payload) are logged and the message dropped. Handlers run one at a
        time on the dispatcher thread. The subscription is QoS 0 (``SUBSCRIPTION_QOS``).
        """
        limit = max_bytes if max_bytes is not None else self.cfg.max_message_kb * 1024
        with self._subs_lock:
            self._subs[topic] = (handler, limit)
        with self._client_lock:
            c = self._client
        if c is not None and self.connected:
            c.subscribe(topic, qos=SUBSCRIPTION_QOS)

    def unsubscribe(self, topic: str) -> None:
        with self._subs_lock:
            self._subs.pop(topic, None)
        with self._client_lock:
            c = self._client
        if c is not None and self.connected:
            c.unsubscribe(topic)

    # ---- paho callbacks (network thread) -----------------------------------
    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            if reason_code.is_failure:
                self._connected.clear()
                if not self._protocol_settled and reason_code.value in _UNSUPPORTED_PROTOCOL:
                    self._fallback.set()
                    return
                self._refusals += 1
                level = logging.ERROR if self._refusals == 1 or self._refusals % 20 == 0 else logging.DEBUG
                log.log(level, "MQTT: broker %s:%d refused the connection: %s (reason code %d, user %s); "
                        "retrying with backoff up to %gs; detections are kept in the outbox",
                        self.cfg.host, self.cfg.port, reason_code.getName(), reason_code.value,
                        self.cfg.username or "(none)", self.cfg.reconnect_max_s)
                return
            if self.protocol == "5":
                self._protocol_settled = True
            self._refusals = 0
            self._fail_logged = False
            self.connects += 1
            with self._subs_lock:
                topics = list(self._subs)
            if topics:
                client.subscribe([(t, SUBSCRIPTION_QOS) for t in topics])
            _limit_receive_buffer(client)
            self._connected.set()
            log.info("MQTT: connected to %s:%d (MQTT %s)", self.cfg.host, self.cfg.port, self.protocol)
            self._on_connected()
        except Exception:  # noqa: BLE001 - never let a callback error kill paho's thread
            log.exception("MQTT: error in on_connect")

    def _handle_connect_fail(self, client, userdata) -> None:
        self._connected.clear()
        if not self._fail_logged:
            self._fail_logged = True
            log.warning("MQTT: cannot reach broker %s:%d; retrying with backoff up to %gs; "
                        "detections are kept in the outbox", self.cfg.host, self.cfg.port, self.cfg.reconnect_max_s)

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if not was:
            return
        asked = self._stopping or self.stop_event.is_set() or self._fallback.is_set()
        from_server = bool(getattr(flags, "is_disconnect_packet_from_server", False))
        if not asked:
            log.warning("MQTT: disconnected from %s:%d (%s%s); reconnecting", self.cfg.host, self.cfg.port,
                        reason_code.getName() if hasattr(reason_code, "getName") else reason_code,
                        ", the broker said so" if from_server else "")
        try:
            self._on_lost(not asked and not from_server)
        except Exception:  # noqa: BLE001
            log.exception("MQTT: error in on_disconnect")

    def _handle_publish(self, client, userdata, mid, reason_code, properties) -> None:
        try:
            ok = not reason_code.is_failure
            self._on_ack(mid, ok, "" if ok else f"{reason_code.getName()} ({reason_code.value})")
        except Exception:  # noqa: BLE001
            log.exception("MQTT: error in on_publish")

    def _handle_message(self, client, userdata, msg) -> None:
        try:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                log.warning("MQTT: dropped a message whose topic is not UTF-8")
                return
            payload = bytes(msg.payload)
            with self._subs_lock:
                matches = [(s, h, lim) for s, (h, lim) in self._subs.items() if _matches(s, topic)]
            if not matches:
                return
            for sub, handler, limit in matches:
                if len(payload) > limit:
                    log.warning("MQTT: dropped a %d-byte message on %s: larger than the %d-byte limit for %s",
                                len(payload), topic, limit, sub)
                    self._release_heap = len(payload) > _LARGE  # once paho has let go of it (dispatch thread)
                    continue
                large = len(payload) > _LARGE
                with self._waiting_lock:
                    waiting = self._waiting_bytes
                    if large and waiting and waiting + len(payload) > limit:
                        log.warning("MQTT: dropped a %d-byte message on %s: %d bytes already wait for their handler "
                                    "(at most the %d-byte limit for %s)", len(payload), topic, waiting, limit, sub)
                        self._release_heap = True
                        continue
                    try:
                        self._dispatch.put_nowait((handler, topic, payload))
                    except queue.Full:
                        log.warning("MQTT: dropped a message on %s: %d messages already waiting", topic,
                                    self._dispatch.maxsize)
                        continue
                    self._waiting_bytes += len(payload) if large else 0
        except Exception:  # noqa: BLE001
            log.exception("MQTT: error while receiving a message; dropped")

    def _dispatch_loop(self) -> None:
        while True:
            try:
                item = self._dispatch.get(timeout=0.5)
            except queue.Empty:
                if self._stopping:
                    return
                if self._release_heap:
                    self._release_heap = False
                    release_heap()
                continue
            if item is None:
                return
            handler, topic, payload = item
            del item
            if len(payload) > _LARGE:
                with self._waiting_lock:
                    self._waiting_bytes -= len(payload)
            try:
                handler(topic, payload)
            except Exception as exc:  # noqa: BLE001 - a bad message must never stop the daemon
                log.warning("MQTT: dropped a message on %s (%d bytes): %s: %s", topic,
                            len(payload), type(exc).__name__, exc)
                log.debug("handler traceback", exc_info=True)
            del handler, payload  # let go of it now, not when the next message comes (a bundle is megabytes)


def _limit_receive_buffer(client: Any) -> None:
    """Set ``RECEIVE_BUFFER_BYTES`` on the connection's socket (before the subscriptions bring any message)."""
    try:
        import socket

        client.socket().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    except (OSError, AttributeError) as exc:  # not a socket we can tune: the kernel's default then
        log.debug("MQTT: cannot set the receive buffer: %s", exc)


def _matches(sub: str, topic: str) -> bool:
    import paho.mqtt.client as mqtt

    return mqtt.topic_matches_sub(sub, topic)

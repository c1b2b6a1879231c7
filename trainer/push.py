"""``python -m trainer push``: publish a signed bundle to the fleet over MQTT.

The bundle is verified with the team's public key first (a bundle the
recorders would refuse is never sent), then published retained with QoS 1
on ``<prefix>/models/<channel>`` (every recorder on that channel, now and
when it next connects) or ``<prefix>/<device_id>/model/set`` (one recorder).
The command waits for the broker's PUBACK, then reads the retained message
back to check the broker kept it (a 3.1.1 broker acknowledges and drops
messages over its size limit).

Size: with MQTT 5 the broker states its Maximum Packet Size in CONNACK;
when the bundle does not fit, the push stops before sending and says which
broker setting to raise. Without it (MQTT 3.1.1, or no limit stated), a
broker that closes the connection or does not keep the bundle is reported
with the settings to check.

Connection settings (host, port, TLS, user, password file or variable,
prefix, channel, public key) come from the same YAML config as the daemon's,
read with ``edge.config.mqtt.load_mqtt_settings`` (only the sections a push
needs: ``device_id``, ``mqtt``, ``updates``, ``model``).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from edge.contract.bundle import BundleError, parse_bundle
from edge.config.mqtt import MQTTSettings, load_mqtt_settings, read_password
from edge.config.base import ConfigError
from edge.contract.signing import SigningKeyError, load_public_key
from edge.outputs.mqtt.topics import Topics

log = logging.getLogger(__name__)

MB = 1024 * 1024


class PushError(RuntimeError):
    """The bundle was not (or may not have been) delivered; the message says why."""


@dataclass
class PushResult:
    topic: str
    bytes: int
    version: str
    sha256: str
    broker_max_packet: int | None
    protocol: str
    verified: bool | None  # the retained message read back matches (None: not checked)


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def publish_packet_size(topic: str, payload_len: int, mqtt5: bool) -> int:
    """Bytes of the PUBLISH packet (QoS 1, no properties) that carries the payload."""
    remaining = 2 + len(topic.encode()) + 2 + (1 if mqtt5 else 0) + payload_len
    return 1 + _varint_len(remaining) + remaining


def topic_for(cfg: MQTTSettings, channel: str | None, device: str | None) -> str:
    if device:
        return Topics(cfg.mqtt.prefix, device).model_set
    return Topics(cfg.mqtt.prefix, cfg.device_id).model_channel(channel or cfg.updates.channel)


def _password(cfg: MQTTSettings) -> str | None:
    """The broker password, read as the edge reads it (file or environment, never the config itself)."""
    try:
        return read_password(cfg.mqtt)
    except ConfigError as exc:
        raise PushError(str(exc)) from None


def _client(cfg: MQTTSettings, mqtt5: bool):
    import paho.mqtt.client as mqtt

    m = cfg.mqtt
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dawnchorus-push-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311)
    if m.username:
        client.username_pw_set(m.username, _password(cfg))
    if m.tls:
        client.tls_set(ca_certs=str(m.tls.ca_file) if m.tls.ca_file else None,
                       certfile=str(m.tls.cert_file) if m.tls.cert_file else None,
                       keyfile=str(m.tls.key_file) if m.tls.key_file else None)
        client.tls_insecure_set(bool(m.tls.insecure))
    return client


def _read_back(client, topic: str, data: bytes, state: dict, where: str, timeout: float) -> None:
    """Subscribe and compare the retained message with what was sent.

    An MQTT 3.1.1 broker acknowledges a message over its size limit and drops
    it; reading the retained message back is the only way to notice.
    """
    got, want = threading.Event(), hashlib.sha256(data).hexdigest()

    def on_message(c, userdata, msg):
        if msg.topic == topic and msg.retain:
            state["read_back"] = hashlib.sha256(msg.payload).hexdigest()
            got.set()

    def on_subscribe(c, userdata, mid, reason_codes, props):
        state["suback"] = reason_codes[0] if reason_codes else None

    state["suback"] = None
    client.on_message, client.on_subscribe = on_message, on_subscribe
    client.subscribe(topic, qos=1)
    end = time.monotonic() + timeout
    while not got.wait(0.1) and time.monotonic() < end and state["disconnect_rc"] is None:
        if state["suback"] is not None and not state.get("suback_at"):
            # the retained message follows the SUBACK; allow twice the upload time to come back
            state["suback_at"] = time.monotonic()
            end = min(end, state["suback_at"] + 2.0 + 2 * state.get("upload_s", 0.0))
        if state["suback"] is not None and state["suback"].is_failure:
            log.warning("cannot read %s back (the broker refused the subscription: %s; give the pushing "
                        "account read access, or use --no-verify); the broker acknowledged the bundle",
                        topic, state["suback"])
            state["verified"] = False
            return
    if not got.is_set():
        if state["disconnect_rc"] is not None:
            raise PushError(f"the broker {where} closed the connection after the bundle ({state['disconnect_rc']}) "
                            "without keeping it; it probably limits message size: raise mosquitto's "
                            f"message_size_limit / max_packet_size (this bundle is {len(data)} bytes)")
        log.warning("could not read the retained bundle back from %s (no read permission? give the pushing "
                    "account read access, or use --no-verify); the broker acknowledged it", topic)
        state["verified"] = False
        return
    if state["read_back"] != want:
        raise PushError(f"the broker {where} acknowledged the bundle but does not hold it as the retained message "
                        f"on {topic}: it probably drops messages over its size limit (mosquitto message_size_limit "
                        f"/ max_packet_size; this bundle is {len(data)} bytes)")
    state["verified"] = True


def push_bytes(data: bytes, cfg: MQTTSettings, topic: str, public_key, *, timeout: float = 60.0,
               verify: bool = True) -> PushResult:
    """Verify ``data`` with ``public_key`` and publish it retained, QoS 1; returns after PUBACK."""
    limit = int(cfg.model.max_bundle_mb * MB)
    try:
        bundle = parse_bundle(data, public_key, path="bundle", max_bytes=max(limit, len(data)))
    except BundleError as exc:
        raise PushError(f"refusing to push: {exc}") from None
    if len(data) > limit:
        raise PushError(f"refusing to push: {len(data)} bytes exceeds what recorders accept "
                        f"(model.max_bundle_mb = {cfg.model.max_bundle_mb:g})")
    mqtt5 = cfg.mqtt.protocol != "3.1.1"
    client = _client(cfg, mqtt5)
    connected, done = threading.Event(), threading.Event()
    state: dict = {"connect_rc": None, "max_packet": None, "puback_rc": None, "disconnect_rc": None,
                   "verified": None}

    def on_connect(c, userdata, flags, rc, props):
        state["connect_rc"] = rc
        state["max_packet"] = getattr(props, "MaximumPacketSize", None) if props is not None else None
        connected.set()

    def on_publish(c, userdata, mid, rc, props):
        state["puback_rc"] = rc
        done.set()

    def on_disconnect(c, userdata, flags, rc, props):
        state["disconnect_rc"] = rc
        connected.set()
        done.set()

    client.on_connect, client.on_publish, client.on_disconnect = on_connect, on_publish, on_disconnect
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    try:
        client.connect(cfg.mqtt.host, cfg.mqtt.port, keepalive=max(cfg.mqtt.keepalive_s, int(timeout)))
    except OSError as exc:
        raise PushError(f"cannot connect to the broker {where}: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout) or state["connect_rc"] is None:
            raise PushError(f"no answer from the broker {where} within {timeout:g} s")
        if state["connect_rc"].is_failure:
            raise PushError(f"broker {where} refused the connection: {state['connect_rc']}")
        size = publish_packet_size(topic, len(data), mqtt5)
        max_packet = state["max_packet"]
        if max_packet is not None and size > max_packet:
            raise PushError(
                f"the broker {where} accepts packets of at most {max_packet} bytes; this bundle needs {size}. "
                "Raise it on the broker (mosquitto: max_packet_size, and message_size_limit if set) "
                "or make the model smaller.")
        if max_packet is None:
            log.info("broker %s states no maximum packet size (%s); sending %d bytes",
                     where, "MQTT 3.1.1" if not mqtt5 else "none given", size)
        t_publish = time.monotonic()
        info = client.publish(topic, data, qos=1, retain=True)
        if info.rc != 0:
            raise PushError(f"cannot publish to {where}: error {info.rc}")
        if not done.wait(timeout):
            raise PushError(f"no PUBACK from {where} within {timeout:g} s: the bundle may not have been delivered")
        state["upload_s"] = time.monotonic() - t_publish
        rc = state["puback_rc"]
        if rc is None:
            raise PushError(f"the broker {where} closed the connection before acknowledging the bundle "
                            f"({state['disconnect_rc']}); it probably limits message size: raise mosquitto's "
                            "message_size_limit / max_packet_size")
        if rc.is_failure:
            raise PushError(f"the broker {where} refused the bundle: {rc}")
        if verify:
            _read_back(client, topic, data, state, where, min(timeout, 10.0))
    finally:
        client.disconnect()
        client.loop_stop()
    return PushResult(topic=topic, bytes=len(data), version=bundle.version, sha256=bundle.sha256,
                      broker_max_packet=state["max_packet"], protocol="5" if mqtt5 else "3.1.1",
                      verified=state["verified"])


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("push", help="publish a signed bundle to recorders over MQTT (retained, QoS 1)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="the signed .bundle file")
    p.add_argument("--config", type=Path, required=True, help="YAML config with the mqtt and updates sections")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--channel", help="push to every recorder on this channel (default: updates.channel)")
    target.add_argument("--device", help="push to one recorder (its device_id)")
    p.add_argument("--public-key", type=Path, help="team public key to verify with (default: model.public_key)")
    p.add_argument("--no-verify", action="store_true",
                   help="do not read the retained bundle back to check the broker kept it")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the broker (default 60)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        cfg = load_mqtt_settings(args.config)
        key = load_public_key(args.public_key or cfg.model.public_key_path)
        try:
            data = args.bundle.read_bytes()
        except OSError as exc:
            raise PushError(f"cannot read {args.bundle}: {exc.strerror or exc}") from None
        topic = topic_for(cfg, args.channel, args.device)
        res = push_bytes(data, cfg, topic, key, timeout=args.timeout, verify=not args.no_verify)
    except (ConfigError, SigningKeyError, PushError, ValueError, OSError) as exc:
        print(f"push: {exc}", file=sys.stderr)
        return 1
    limit = f"broker limit {res.broker_max_packet} bytes" if res.broker_max_packet else "broker states no limit"
    print(f"pushed {args.bundle.name}: version {res.version}, sha256 {res.sha256[:12]}, {res.bytes} bytes "
          f"-> {res.topic} (retained, QoS 1, acknowledged{', read back' if res.verified else ''}; "
          f"MQTT {res.protocol}, {limit})")
    return 0

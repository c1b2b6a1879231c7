"""The publisher's ledger of QoS 1 messages: what is in flight, acknowledged, refused or just sent.

Thread-safe (the network thread records acknowledgements, the outbox thread
sends). An acknowledgement may arrive before ``publish()`` returned its
message id (``sent`` settles it then). A detection is not sent again while it
is in flight, after the broker refused it (until the next connection), or
shortly after it was acknowledged (``recent``: the live path and the backlog
may both hold it).
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Optional

log = logging.getLogger(__name__)

RECENT = 10000  # acknowledged ids remembered against a second send


class Ledger:
    def __init__(self, topics_base: str):
        self.topics_base = topics_base
        self.lock = threading.Lock()
        self._inflight: dict[int, tuple[Optional[str], str]] = {}  # mid -> (detection id or None, topic)
        self._ids: set[str] = set()  # detection ids in flight
        self._early: dict[int, tuple[bool, str]] = {}  # acks that beat publish() returning
        self._acked: list[str] = []  # acknowledged, not yet recorded in the outbox
        self._refused: set[str] = set()  # refused by the broker (ACL): not retried until reconnect
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.refusals = 0

    def sent(self, mid: int, det_id: Optional[str], topic: str) -> None:
        with self.lock:
            self._inflight[mid] = (det_id, topic)
            if det_id is not None:
                self._ids.add(det_id)
            early = self._early.pop(mid, None)
            if early is not None:
                self._settle(mid, *early)

    def ack(self, mid: int, ok: bool, reason: str) -> None:
        """The broker's PUBACK (or refusal) of message ``mid``."""
        with self.lock:
            if mid not in self._inflight:
                self._early[mid] = (ok, reason)
                return
            self._settle(mid, ok, reason)

    def _settle(self, mid: int, ok: bool, reason: str) -> None:  # with the lock held
        det_id, topic = self._inflight.pop(mid)
        if not ok:
            self.refusals += 1
            n = self.refusals
            # mosquitto also drops the connection after a refusal: say it once, then now and then
            log.log(logging.ERROR if n == 1 or n % 100 == 0 else logging.DEBUG,
                    "MQTT: the broker refused %s on %s: %s (%d refusals so far; check the broker's ACL "
                    "allows this device to write under %s/); refused detections stay in the outbox",
                    f"detection {det_id}" if det_id else "the message", topic, reason, n, self.topics_base)
        if det_id is None:
            return
        self._ids.discard(det_id)
        if ok:
            self._acked.append(det_id)
            self._recent[det_id] = None
            if len(self._recent) > RECENT:
                self._recent.popitem(last=False)
        else:
            self._refused.add(det_id)

    def reset(self) -> None:
        """A new connection: nothing is in flight any more (paho re-sends nothing of a clean session)."""
        with self.lock:
            self._inflight.clear()
            self._ids.clear()
            self._early.clear()

    def connected(self) -> None:
        """Refused detections are tried again on a new connection."""
        with self.lock:
            self._refused.clear()

    def refuse(self, det_id: str) -> None:
        """Not sent again until the next connection (a stored row that cannot be a message)."""
        with self.lock:
            self._refused.add(det_id)

    def blocked(self, det_id: str) -> bool:
        """In flight, refused, or just acknowledged: not to be sent now."""
        with self.lock:
            return det_id in self._ids or det_id in self._refused or det_id in self._recent

    def take_acked(self) -> list[str]:
        with self.lock:
            ids, self._acked = self._acked, []
        return ids

    def put_back_acked(self, ids: list[str]) -> None:
        """Acknowledgements the outbox could not record: first in line for the next try."""
        with self.lock:
            self._acked[:0] = ids

    def acked_waiting(self) -> int:
        with self.lock:
            return len(self._acked)

    def forget(self, ids: list[str] | tuple[str, ...]) -> None:
        """Detections back in the outbox (re-sent after a broker crash): they may be sent again."""
        with self.lock:
            for i in ids:
                self._recent.pop(i, None)

    def in_flight(self) -> int:
        """Detections sent and not yet acknowledged."""
        with self.lock:
            return len(self._ids)

    def messages_in_flight(self) -> int:
        with self.lock:
            return len(self._inflight)

    def refused(self) -> int:
        with self.lock:
            return len(self._refused)

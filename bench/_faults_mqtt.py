"""bench/faults' broker crashes: mosquitto SIGKILLed while detections flow, with the subscriber online or
offline at the crash, and with device restarts (a new publisher process state on the same store) between.

A real mosquitto (persistence on, autosave every second), a subscriber with a persistent session
(subscriber-side counts), a real SQLite store filled at a steady rate, the real publisher. Each detection is
attributed to the crash that follows its insertion: a case (one crash) passes when every detection of its
interval arrived, at most 1 + 2 times (duplicates per detection <= 2).
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from fixtures_mqtt import Broker, Collector, wait_until
from mqtt_helpers import make_detections, mqtt_config, store_then_publish

from edge.outputs.mqtt.publisher import Publisher
from edge.outputs.store import Store

DET = "dawnchorus/dev1/detections"
MODES = ("subscriber online", "subscriber offline", "device restarted before")


def broker_crashes(work: Path, crashes: int, rng, log, window_s: float = 2.0, rate_hz: float = 20.0) -> list[dict]:
    broker = Broker(work / "broker").start()
    collectors = [Collector(broker, [DET], client_id="faults-subscriber")]
    collectors[0].wait_subscribed()
    broker.wait_saved()  # the subscriber's persistent session is on disk before the first crash
    db = work / "mqtt.db"
    cfg = mqtt_config(broker, resend_window_s=window_s, max_backlog_rate=500, client_id="faults-device")

    def new_publisher():
        p = Publisher(cfg, "dev1", lambda: Store(db), location={"name": "bench"})
        p.start()
        return p

    store = Store(db)
    holder = {"pub": new_publisher()}
    lock = threading.Lock()
    made: dict[str, float] = {}
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            d = make_detections(1, start=i)
            with lock:
                store_then_publish(store, holder["pub"], d)
            made[d[0].id] = time.monotonic()
            i += 1
            stop.wait(1.0 / rate_hz)

    crash_at: list[tuple[float, str]] = []
    t = threading.Thread(target=produce, daemon=True)
    try:
        assert holder["pub"].wait_connected(20)
        t.start()
        for i in range(crashes):
            mode = MODES[i % len(MODES)]
            time.sleep(rng.uniform(2.5, 4.0))  # more than a window apart
            if mode == "device restarted before":
                with lock:
                    holder["pub"].stop()  # a clean stop (said goodbye), then a new start on the same store
                    holder["pub"] = new_publisher()
                holder["pub"].wait_connected(20)
                time.sleep(rng.uniform(0.2, 1.0))
            if mode == "subscriber offline":
                collectors[-1].close()
                time.sleep(0.3)
            crash_at.append((time.monotonic(), mode))
            broker.kill()
            time.sleep(rng.uniform(0.2, 1.0))
            broker.start()
            if mode == "subscriber offline":
                time.sleep(rng.uniform(0.5, 1.5))  # it comes back later: the broker queued for it meanwhile
                collectors.append(Collector(broker, [DET], client_id="faults-subscriber"))
            if not wait_until(lambda: holder["pub"].connected, 30):
                log(f"  crash {i}: the publisher did not reconnect")
        time.sleep(1.0)
        stop.set()
        t.join(10)
        stored = {r["id"] for r in store.detections()}
        wait_until(lambda: store.outbox_depth() == 0, 60)

        def received():
            c = Counter()
            for col in collectors:
                c.update(col.ids(DET))
            return c

        wait_until(lambda: set(received()) >= stored, 60)
        got = received()
    finally:
        stop.set()
        holder["pub"].stop()
        for col in collectors:
            col.close()
        broker.kill()
    # attribute each detection to the crash after it
    bounds = [c for c, _ in crash_at]
    out = []
    for mode in MODES:
        cases = [k for k, (_, m) in enumerate(crash_at) if m == mode]
        passed, stored_n, recv_n, lost_n, dup_n, worst = 0, 0, 0, 0, 0, 0
        for k in cases:
            lo = bounds[k - 1] if k else -1e18
            ids = [i for i, when in made.items() if lo <= when < bounds[k] and i in stored]
            lost = [i for i in ids if got[i] == 0]
            dups = [max(0, got[i] - 1) for i in ids]
            stored_n += len(ids)
            recv_n += len(ids) - len(lost)
            lost_n += len(lost)
            dup_n += sum(dups)
            worst = max([worst, *dups])
            passed += not lost and max(dups or [0]) <= 2
        out.append({"kind": f"broker SIGKILL, {mode}", "cases": len(cases), "passed": passed, "stored": stored_n,
                    "received": recv_n, "lost": lost_n, "duplicated": dup_n,
                    "notes": f"max duplicates per detection {worst}; resend window {window_s:g} s"})
    tail = [i for i, when in made.items() if bounds and when >= bounds[-1] and i in stored]
    missing_tail = sum(1 for i in tail if got[i] == 0)
    if missing_tail:
        log(f"  {missing_tail} detections after the last crash did not arrive")
    return out

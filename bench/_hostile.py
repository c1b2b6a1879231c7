#!/usr/bin/env python3
"""Hostile bundles and MQTT messages against a real idle daemon: refused, and at what memory cost.

A real mosquitto and a real ``python -m edge run`` (MQTT and updates on; its
microphone is absent, so it idles in its device-retry loop with the model
loaded, as a recorder whose card is unplugged does). Every hostile message
of tests/hostile_inputs.py (no bundle at all, bombs, duplicates, unpinned
members, wrong manifest types, ...) is published on its ``model/set`` topic
one at a time; for each, the daemon's peak RSS (VmHWM, reset before each
message through /proc/PID/clear_refs) is compared with the idle daemon's
peak RSS, and the retained update report must refuse it with the expected
reason. Messages over the size bound have no report: the client drops them
with a log line. Then two bursts of six of the largest messages, published
back to back at QoS 1 and at QoS 0: the daemon holds one largest bundle at a
time, so each is refused with its own report, by size or, when it arrives
while another is checked, at once. At the end a good bundle must still be
accepted and the daemon must stop cleanly (exit 0). Before it, 24 messages
just over the device's maximum packet size (more than mosquitto keeps in
flight) must not stop a good bundle that follows (docs/hostile-inputs.md).

The idle daemon's figure is its peak over two of its device-retry cycles
(it re-opens PortAudio every 5 s, which moves its RSS by some 10 MB), the
same measure as under the hostile messages; its resting RSS is shown too.

Used by bench/faults (``hostile_rows``); alone:

  bench/_hostile.py                 # prints the table (about a minute)
  bench/_hostile.py --suite --json out.json   # and the hostile test suite's cases per kind (a few minutes)
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

TARGET_MB = 50.0  # issue 11: peak RSS under any hostile bundle or message at most this above idle


def _status(pid: int, field: str) -> float:
    """VmRSS / VmHWM of ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def hostile_rows(workdir: Path, *, max_bundle_mb: float | None = None, log=print) -> dict:
    """Run every hostile message against a real daemon; returns {"cases": [...], "kinds": [...], "idle_mb": ...}."""
    from fixtures_mqtt import Broker, Collector, wait_until
    from fixtures_updates import Keys, make_bundle
    from hostile_inputs import Case, message_cases

    from edge.config import ModelConfig

    max_bundle_mb = max_bundle_mb or ModelConfig().max_bundle_mb  # the shipped default
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir / "broker").start()
    keys = Keys(workdir / "keys")
    good = make_bundle(keys.private, "2.0")
    start = workdir / "start.bundle"
    start.write_bytes(make_bundle(keys.private, "1.0"))
    state = workdir / "state"
    cfg = workdir / "edge.yaml"
    cfg.write_text(
        f"device_id: hostile\nstate_dir: {state}\nstore: {{path: {state / 'detections.db'}}}\n"
        f"model: {{bundle: {start}, public_key: {keys.public_path}, max_bundle_mb: {max_bundle_mb}}}\n"
        f"audio: {{device: no-such-microphone, retry_initial_s: 5, retry_max_s: 5}}\n"
        f"mqtt: {{enabled: true, host: {broker.host}, port: {broker.port}}}\nlogging: {{level: WARNING}}\n")
    topic_set, topic_report = "dawnchorus/hostile/model/set", "dawnchorus/hostile/model"
    errlog = workdir / "daemon.log"
    with open(errlog, "wb") as errf:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=errf)
    reports = Collector(broker, [topic_report], persistent=False)
    import paho.mqtt.publish as publish

    def send(payload: bytes) -> None:
        publish.single(topic_set, payload, qos=1, hostname=broker.host, port=broker.port)

    def last_update() -> dict:
        msgs = reports.json_on(topic_report)
        return (msgs[-1].get("last_update") or {}) if msgs else {}

    rows = []
    try:
        if not wait_until(lambda: reports.on(topic_report), 60):
            raise RuntimeError(f"the daemon sent no model report:\n{errlog.read_text()[-2000:]}")
        time.sleep(6)  # settle: the first status and report out, the device retry loop cycling
        _reset_peak(proc.pid)
        rest = []
        for _ in range(110):  # two device-retry cycles (audio.retry_max_s 5 s)
            rest.append(_status(proc.pid, "VmRSS"))
            time.sleep(0.1)
        idle, idle_rest = _status(proc.pid, "VmHWM"), min(rest)
        log(f"idle daemon: peak {idle:.1f} MB RSS, at rest {idle_rest:.1f} MB")
        from edge.contract.bundle import message_limit

        limit = message_limit(int(max_bundle_mb * 2**20))
        cases = message_cases(good, keys.private) + [
            Case("largest message accepted (bundle limit + 1 MB)", lambda: b"\0" * limit, "exceeds the limit"),
            Case("oversized message (bundle limit + 1 MB + 1)", lambda: b"\0" * (limit + 1), None),
            Case("oversized message (128 MB)", lambda: b"\0" * (128 << 20), None),
        ]
        for case in cases:
            payload = case.build()
            seen = len(reports.on(topic_report))
            _reset_peak(proc.pid)
            send(payload)
            size = len(payload)
            del payload
            if case.phrase is None:  # over the device's maximum packet size: the broker drops it (MQTT 5)
                time.sleep(3)
                ok = len(reports.on(topic_report)) == seen
                reason = "not delivered (over the maximum packet size the device announced)"
            else:
                got = wait_until(lambda: len(reports.on(topic_report)) > seen and last_update().get("received_utc"), 60)
                upd = last_update() if got else {}
                reason = upd.get("reason", "no report")
                ok = upd.get("result") == "refused" and case.phrase in reason and "\n" not in reason
            time.sleep(0.2)
            if b"larger than the" in errlog.read_bytes():
                reason += "; dropped by the device's MQTT client"
            peak = _status(proc.pid, "VmHWM")
            alive = proc.poll() is None
            rows.append({"case": case.name, "bytes": size, "refused_as_documented": bool(ok and alive),
                         "peak_above_idle_mb": round(peak - idle, 1), "peak_above_rest_mb": round(peak - idle_rest, 1),
                         "reason": reason[:160]})
            log(f"  {case.name:48s} {size / 2**20:8.2f} MB  peak +{peak - idle:6.1f} MB  "
                f"{'ok' if ok and alive else 'FAIL'}  {reason[:70]}")
            if not alive:
                raise RuntimeError(f"the daemon died on {case.name}:\n{errlog.read_text()[-2000:]}")
        # bursts: the largest accepted message, different each time, published back to back
        burst = 6
        for qos in (1, 0):
            seen = len(reports.on(topic_report))
            time.sleep(1)
            _reset_peak(proc.pid)
            msgs = [(topic_set, bytes([10 * qos + i + 1]) * limit, qos, False) for i in range(burst)]
            publish.multiple(msgs, hostname=broker.host, port=broker.port)
            del msgs
            got = wait_until(lambda n=seen + burst: len(reports.on(topic_report)) >= n, 60)
            time.sleep(3)
            peak = _status(proc.pid, "VmHWM")
            new = [(m.get("last_update") or {}) for m in reports.json_on(topic_report)[seen:]]
            refused = [u for u in new if u.get("result") == "refused"]
            busy = sum("not checked: another bundle" in u.get("reason", "") for u in refused)
            ok = got and proc.poll() is None and len(refused) == burst
            rows.append({"case": f"burst of {burst} largest messages, QoS {qos}", "bytes": burst * limit,
                         "refused_as_documented": bool(ok), "peak_above_idle_mb": round(peak - idle, 1),
                         "peak_above_rest_mb": round(peak - idle_rest, 1),
                         "reason": f"{len(refused)} of {burst} refused with a report ({busy} on arrival, "
                                   f"{len(refused) - busy} by size)"})
            log(f"  {rows[-1]['case']:48s} {burst * limit / 2**20:8.2f} MB  peak +{peak - idle:6.1f} MB  "
                f"{'ok' if ok else 'FAIL'}  {rows[-1]['reason'][:70]}")
        rows.append(_stall_row(proc.pid, idle, idle_rest, broker, topic_set, limit, make_bundle(keys.private, "1.5"),
                               reports, topic_report, last_update, log))
        seen = len(reports.on(topic_report))
        send(good)
        accepted = wait_until(lambda: len(reports.on(topic_report)) > seen and
                              last_update().get("result") == "accepted", 60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        reports.close()
        broker.kill()
    traceback = b"Traceback" in errlog.read_bytes()
    kinds = []
    others = ("empty message", "JSON message", "one zero byte", "oversized", "24 oversized")
    for kind, pick in (("hostile bundles over MQTT", lambda r: not r["case"].startswith(others + ("burst",))),
                       ("hostile MQTT messages (not bundles)", lambda r: r["case"].startswith(others)),
                       ("bursts of the largest messages", lambda r: r["case"].startswith("burst"))):
        sel = [r for r in rows if pick(r)]
        worst = max(sel, key=lambda r: r["peak_above_idle_mb"])
        kinds.append({"kind": kind, "cases": len(sel), "passed": sum(r["refused_as_documented"] for r in sel),
                      "max_peak_above_idle_mb": worst["peak_above_idle_mb"],
                      "max_peak_above_rest_mb": max(r["peak_above_rest_mb"] for r in sel), "worst_case": worst["case"],
                      "target_mb": TARGET_MB})
    return {"idle_peak_rss_mb": round(idle, 1), "idle_rest_rss_mb": round(idle_rest, 1),
            "good_bundle_accepted_after": bool(accepted), "exit_code": code, "traceback": traceback, "kinds": kinds,
            "cases": rows}


def _stall_row(pid: int, idle: float, idle_rest: float, broker, topic_set: str, limit: int, bundle: bytes,
               reports, topic_report: str, last_update, log) -> dict:
    """More messages just over the device's maximum packet size than mosquitto keeps in flight (20), QoS 1,
    then a good bundle: it must still be accepted (mosquitto 2.0.11 kept each dropped QoS 1 message in flight
    for good, which stopped every later update while the device subscribed at QoS 1)."""
    import paho.mqtt.publish as publish

    from fixtures_mqtt import wait_until

    flood, size = 24, limit + 64 * 1024 + 1
    _reset_peak(pid)
    for _ in range(flood):  # one at a time: the broker holds one copy at a time
        publish.single(topic_set, b"\xff" * size, qos=1, hostname=broker.host, port=broker.port)
    seen = len(reports.on(topic_report))
    publish.single(topic_set, bundle, qos=1, hostname=broker.host, port=broker.port)
    ok = wait_until(lambda: len(reports.on(topic_report)) > seen and last_update().get("result") == "accepted", 60)
    peak = _status(pid, "VmHWM")
    row = {"case": f"{flood} oversized QoS 1 messages, then a good bundle", "bytes": flood * size,
           "refused_as_documented": bool(ok), "peak_above_idle_mb": round(peak - idle, 1),
           "peak_above_rest_mb": round(peak - idle_rest, 1),
           "reason": "the good bundle accepted after them" if ok else "the good bundle never arrived (stalled)"}
    log(f"  {row['case']:48s} {flood * size / 2**20:8.2f} MB  peak +{peak - idle:6.1f} MB  "
        f"{'ok' if ok else 'FAIL'}  {row['reason']}")
    return row


SUITE = [  # (kind, test module, test-name prefix): the crafted inputs of tests/hostile_inputs.py
    ("hostile audio files and file systems (replay)", "test_hostile_files.py", "test_each_file"),
    ("hostile stores (replay)", "test_hostile_files.py", "test_hostile_store"),
    ("hostile configurations (check-config)", "test_hostile_configs.py", "test_check_config_refuses"),
    ("hostile configurations (run: exit 2)", "test_hostile_configs.py", "test_run_exits_2"),
    ("hostile bundles (in process, memory)", "test_hostile_bundles.py", "test_each_hostile_bundle"),
]


def suite_rows(workdir: Path) -> list[dict]:
    """The hostile suite's per-input cases (pytest, real processes), counted per kind: cases run and passed."""
    import xml.etree.ElementTree as ET

    xml = workdir / "hostile-suite.xml"
    files = sorted({f"tests/{m}" for _, m, _ in SUITE})
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *files],
                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    cases = [(c.get("classname", ""), c.get("name", ""), not any(x.tag in ("failure", "error") for x in c))
             for c in ET.parse(xml).iter("testcase")]
    rows = []
    for kind, module, prefix in SUITE:
        mine = [ok for cls, name, ok in cases if cls.endswith(module[:-3]) and name.startswith(prefix)]
        rows.append({"kind": kind, "cases": len(mine), "passed": sum(mine)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--max-bundle-mb", type=float, help="model.max_bundle_mb of the daemon (default: the config's)")
    ap.add_argument("--suite", action="store_true", help="also run the hostile test suite and count its cases per kind")
    args = ap.parse_args()
    import logging

    logging.getLogger("paho").setLevel(logging.CRITICAL)  # publish.single's "not connected" after its own disconnect
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        out = hostile_rows(Path(tmp), max_bundle_mb=args.max_bundle_mb)
        if args.suite:
            out["suite"] = suite_rows(Path(tmp))
    print(f"\nidle daemon: peak {out['idle_peak_rss_mb']} MB RSS (at rest {out['idle_rest_rss_mb']} MB); good bundle "
          f"accepted after: {out['good_bundle_accepted_after']}; exit {out['exit_code']}; traceback: {out['traceback']}")
    print(f"{'kind':40s} {'cases':>5s} {'passed':>6s} {'peak MB above idle peak':>24s} {'target':>7s} "
          f"{'(above rest)':>12s}  worst case")
    for k in out["kinds"]:
        print(f"{k['kind']:40s} {k['cases']:5d} {k['passed']:6d} {k['max_peak_above_idle_mb']:24.1f} "
              f"{k['target_mb']:7.0f} {k['max_peak_above_rest_mb']:12.1f}  {k['worst_case']}")
    for k in out.get("suite", []):
        print(f"{k['kind']:40s} {k['cases']:5d} {k['passed']:6d}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    ok = all(k["passed"] == k["cases"] and k["max_peak_above_idle_mb"] <= TARGET_MB for k in out["kinds"]) and \
        all(k["passed"] == k["cases"] for k in out.get("suite", []))
    return 0 if ok and out["good_bundle_accepted_after"] and out["exit_code"] == 0 and not out["traceback"] else 1


if __name__ == "__main__":
    sys.exit(main())

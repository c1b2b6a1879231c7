"""``python -m edge replay``: run recordings through the pipeline into the store.

With no PATH it replays the bundled demo recording; without ``--bundle`` it
uses the bundled default model; without ``--db`` the default store
(``$DAWNCHORUS_DB``, else ``$XDG_DATA_HOME/dawnchorus/detections.db``, else
``~/.local/share/dawnchorus/detections.db``). Detections go to the store
(re-runs add nothing twice) and to standard output (or ``--out``) in the
chosen format; the summary goes to standard error. A file that cannot be
used is reported and skipped; the exit status is 1 when any was. Detections
the store cannot take (disk full, locked, read-only) wait in
``<store>.journal`` for the next run; the exit status is then 3.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from edge.contract.record import format_utc, parse_utc
from edge.detection.postprocess import ID_NAMESPACE
from edge.sources import AUDIO_EXTENSIONS, FileSource, SourceError, display_path, find_audio_files
from edge.outputs.writers import FORMATS

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEMO_DIR = PACKAGE_DIR / "demo"
# edge.config's defaults, used when no --config is given: importing pydantic for the
# configuration costs about 18 MB of the replay's 100 MB budget (a test keeps them equal).
DEFAULTS = {"bundle": PACKAGE_DIR / "models" / "default.bundle", "public_key": PACKAGE_DIR / "models" / "default.pub",
            "num_threads": 1, "overlap_s": None, "device_id": "recorder", "max_bundle_mb": 8.0}
PROGRESS_MIN_S = 300.0  # show a progress bar for files longer than this (on a terminal)


def default_db_path() -> Path:
    env = os.environ.get("DAWNCHORUS_DB")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dawnchorus" / "detections.db"


def demo_files() -> list[Path]:
    return sorted(p for p in DEMO_DIR.glob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)


@dataclass
class ReplayStats:
    files_ok: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    audio_s: float = 0.0
    wall_s: float = 0.0
    decode_s: float = 0.0
    store_s: float = 0.0
    output_s: float = 0.0
    detections: int = 0
    new: int = 0
    species: Counter = field(default_factory=Counter)
    names: dict = field(default_factory=dict)

    @property
    def x_realtime(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else float("inf")


def _effort_settings(pipeline) -> dict:
    d = pipeline.detection
    return {
        "window_s": pipeline.params.window_s, "hop_s": pipeline.hop_s,
        "detection": d.model_dump() if d is not None and hasattr(d, "model_dump") else None,
    }


def replay_file(path: Path, pipeline, store, writer, stats: ReplayStats, *, start_utc: datetime | None = None,
                channel: int | None = None, realtime: bool = False, progress: bool = False, timezone: str | None = None,
                stop: threading.Event | None = None) -> bool:
    """One file through ``pipeline`` into ``store`` and ``writer``; False (and a reason in stats) if refused."""
    stop = stop or threading.Event()
    try:
        source = FileSource(path, pipeline.sample_rate, channel=channel, start_utc=start_utc, timezone=timezone,
                            block_s=0.5 if realtime else 4.0)
    except SourceError as exc:
        stats.refused.append((str(path), str(exc)))
        log.warning("%s", exc)
        return False
    pipeline.begin(source.name, source.time_source)
    if writer is not None:
        writer.begin_source(source.name)
    bar = None
    if progress and source.duration_s >= PROGRESS_MIN_S:
        from tqdm import tqdm

        bar = tqdm(total=round(source.duration_s), unit="s", desc=path.name, file=sys.stderr, leave=False)
    t_start = time.perf_counter()

    def deliver(dets):
        if not dets:
            return
        t0 = time.perf_counter()
        new = store.insert(dets) if store is not None else dets
        t1 = time.perf_counter()
        if writer is not None:
            writer.handle(dets)
        stats.output_s += time.perf_counter() - t1
        stats.store_s += t1 - t0
        stats.detections += len(dets)
        stats.new += len(new)
        for d in dets:
            stats.species[d.label] += 1
            stats.names[d.label] = d.common_name

    done_s = 0.0
    ok = True
    blocks = source.blocks(stop)
    try:
        while True:
            t0 = time.perf_counter()
            try:
                block = next(blocks)
            except StopIteration:
                stats.decode_s += time.perf_counter() - t0
                break
            stats.decode_s += time.perf_counter() - t0
            deliver(pipeline.feed(block))
            done_s = block.offset_s + len(block.samples) / pipeline.sample_rate
            if bar is not None:
                bar.update(round(done_s) - bar.n)
            if realtime:
                lag = done_s - (time.perf_counter() - t_start)
                if lag > 0 and stop.wait(lag):
                    break
    except SourceError as exc:
        stats.refused.append((str(path), f"{exc} ({done_s:.1f} s analysed before the error)"))
        log.warning("%s", exc)
        ok = False
    finally:
        if bar is not None:
            bar.close()
    deliver(pipeline.finish())
    if writer is not None:
        writer.end_source()
    if ok:
        stats.files_ok += 1
    stats.audio_s += done_s
    if store is not None and done_s > 0:
        settings = _effort_settings(pipeline)
        key = "\x1f".join((pipeline.device_id, source.name, pipeline.bundle.sha256, json.dumps(settings, sort_keys=True)))
        store.open_effort(
            id=str(uuid.uuid5(ID_NAMESPACE, key)), device_id=pipeline.device_id, source=source.name,
            start_utc=format_utc(source.start_utc), end_utc=format_utc(source.start_utc + timedelta(seconds=done_s)),
            model_version=pipeline.bundle.version, model_sha256=pipeline.bundle.sha256,
            settings={**settings, "time_source": source.time_source, "replay": True})
    return ok


def _fmt_duration(s: float) -> str:
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m:02d} min {sec:02d} s" if h else (f"{m} min {sec:02d} s" if m else f"{sec} s")


def summary(stats: ReplayStats, *, bundle, pipeline, db_path, threads: int, writer=None) -> str:
    n_files = stats.files_ok + len(stats.refused)
    lines = [
        f"replayed {stats.files_ok} of {n_files} file(s): {_fmt_duration(stats.audio_s)} of audio in "
        f"{stats.wall_s:.2f} s, {stats.x_realtime:.0f}x realtime",
        f"model: {bundle.name} {bundle.version} (sha256 {bundle.sha256[:12]}), {threads} thread(s), "
        f"{pipeline.params.window_s:g} s windows every {pipeline.hop_s:g} s",
    ]
    if db_path is not None:
        lines.append(f"store: {db_path} ({stats.new} new detection(s), {stats.detections - stats.new} already stored)")
    if getattr(writer, "written", None):
        lines.append(f"raven selection tables: {', '.join(str(p) for p in writer.written)}")
    for err in getattr(writer, "errors", []):
        lines.append(f"  {err}")
    if stats.species:
        lines.append(f"detections per species ({stats.detections} event(s)):")
        for label, n in sorted(stats.species.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:5d}  {stats.names.get(label, label)} ({label})")
    else:
        lines.append("no detections")
    guard = getattr(pipeline, "guard", None)
    if guard is not None and guard.no_signal_windows:
        lines.append(f"{guard.no_signal_windows} window(s) without signal not scored (digital silence, constant "
                     f"input or {guard.nonfinite_samples} non-finite sample(s))")
    if stats.refused:
        lines.append(f"refused {len(stats.refused)} file(s):")
        lines += [f"  {reason}" for _, reason in stats.refused]
    return "\n".join(lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "replay", help="run recordings through the model into the store and print the detections",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="PATH", help="audio files or directories (default: the bundled demo)")
    p.add_argument("--bundle", type=Path, help="model bundle (default: the bundled default model)")
    p.add_argument("--public-key", type=Path, help="public key the bundle must verify with (default: the bundled one)")
    p.add_argument("--db", type=Path, help=f"SQLite store (default: {default_db_path()})")
    p.add_argument("--no-db", action="store_true", help="do not store, only print")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--out", help="output file (a directory for raven; default: standard output / current directory)")
    p.add_argument("--overlap", type=float, metavar="S", help="overlap between windows in seconds (default: the bundle's)")
    p.add_argument("--threads", type=int, metavar="N", help="interpreter threads (default: 1)")
    p.add_argument("--realtime", action="store_true", help="deliver audio at real-time speed, as a microphone would")
    p.add_argument("--start-time", metavar="ISO", help="recording start (UTC unless a zone is given) for every file")
    p.add_argument("--device-id", help="device id stored with the detections (default: from --config, else 'recorder')")
    p.add_argument("--channel", type=int, metavar="N", help="use channel N (from 0) instead of mixing all down")
    p.add_argument("--timezone", metavar="ZONE", help="IANA zone of local times in file names, e.g. Europe/Berlin "
                   "(default: location.timezone from --config, else UTC; GUANO/AudioMoth headers carry their own)")
    p.add_argument("--config", type=Path, help="edge configuration file (detection settings, model, store, device id)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--mqtt", action="store_true",
                   help="also publish the detections to the broker in --config's mqtt section (as when mqtt.enabled)")
    p.add_argument("--mqtt-wait", type=float, default=60.0, metavar="S",
                   help="wait at most S seconds at the end for the broker to acknowledge everything (default 60)")
    p.set_defaults(func=run)
    return p


def _settings(args) -> dict | None:
    """Defaults, then --config, then the command line; None (after a message) if the config is bad."""
    s = dict(DEFAULTS, detection=None, store=None, mqtt=None, location=None, channel=None, timezone=None)
    if args.config:
        from edge.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return None
        s.update(bundle=cfg.model.bundle_path, public_key=cfg.model.public_key_path, num_threads=cfg.model.num_threads,
                 overlap_s=cfg.model.overlap_s, device_id=cfg.device_id, max_bundle_mb=cfg.model.max_bundle_mb,
                 detection=cfg.detection, store=cfg.store.path if "path" in cfg.store.model_fields_set else None,
                 mqtt=cfg.mqtt, location=cfg.location, timezone=cfg.location.timezone)
    for key, value in (("bundle", args.bundle), ("public_key", args.public_key), ("num_threads", args.threads),
                       ("overlap_s", args.overlap), ("device_id", args.device_id), ("channel", args.channel),
                       ("timezone", getattr(args, "timezone", None))):
        if value is not None:
            s[key] = value
    return s


def run(args) -> int:
    cfg = _settings(args)
    if cfg is None:
        return 2
    from edge.contract.bundle import BundleError, load_bundle
    from edge.contract.interpreter import InterpreterError, load_model
    from edge.detection.pipeline import Pipeline, PipelineError
    from edge.contract.signing import SigningKeyError, load_public_key
    from edge.outputs.writers import make_writer

    threads = cfg["num_threads"]
    start_utc = None
    if args.start_time:
        try:
            start_utc = parse_utc(args.start_time)
        except ValueError:
            print(f"error: --start-time {args.start_time!r} is not an ISO 8601 time (e.g. 2024-05-01T05:30:00Z)",
                  file=sys.stderr)
            return 2
    from edge.sources.metadata import TimeZoneError, load_zone

    try:
        load_zone(cfg["timezone"])
    except TimeZoneError as exc:
        print(f"error: --timezone: {exc}", file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(cfg["bundle"], load_public_key(cfg["public_key"]),
                             max_bytes=int(cfg["max_bundle_mb"] * 2**20))
        model = load_model(bundle, num_threads=threads)
        pipeline = Pipeline(bundle, model, detection=cfg["detection"], overlap_s=cfg["overlap_s"],
                            device_id=cfg["device_id"])
    except (BundleError, SigningKeyError, InterpreterError, PipelineError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    paths = args.paths or demo_files()
    if not paths:
        print(f"error: no PATH given and no demo recording in {DEMO_DIR}", file=sys.stderr)
        return 2
    files, problems = find_audio_files(paths)
    stats = ReplayStats(refused=[(display_path(p), f"{display_path(p)}: {why}") for p, why in problems])
    if start_utc is not None and len(files) > 1:
        log.warning("--start-time applies to every one of the %d files", len(files))

    store = None
    db_path = None
    if not args.no_db:
        from edge.outputs.store import Store, StoreError

        db_path = args.db or cfg["store"] or default_db_path()
        try:
            store = Store(db_path)
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from edge.outputs.journal import StoreGuard

        guard = StoreGuard(store)  # a store that refuses (full, locked, read-only): the journal keeps them
    fe = bundle.frontend
    try:
        writer = make_writer(args.format, args.out, low_hz=fe.fmin, high_hz=fe.fmax, inputs=paths)
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2

    publisher = None  # MQTT (edge.outputs.mqtt.publisher): drains the store's outbox while the replay fills it
    if getattr(args, "mqtt", False) and cfg["mqtt"] is None:
        print("error: --mqtt needs --config FILE with an mqtt section (host, port, ...)", file=sys.stderr)
        return 2
    if store is not None and cfg["mqtt"] is not None and (args.mqtt or cfg["mqtt"].enabled):
        from edge.outputs.mqtt.client import MQTTSetupError
        from edge.outputs.mqtt.publisher import start_for_replay

        try:
            publisher = start_for_replay(cfg["mqtt"], cfg["device_id"], db_path, cfg["location"])
        except MQTTSetupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    progress = not args.no_progress and sys.stderr.isatty()
    stop = threading.Event()
    t0 = time.perf_counter()
    try:
        for path in files:
            if stop.is_set():
                break
            replay_file(path, pipeline, guard if store is not None else None, writer, stats, start_utc=start_utc,
                        channel=cfg["channel"], realtime=args.realtime, progress=progress, stop=stop,
                        timezone=cfg["timezone"])
    except KeyboardInterrupt:
        stop.set()
        print("interrupted", file=sys.stderr)
    finally:
        stats.wall_s = time.perf_counter() - t0
        writer.close()
        if publisher is not None:
            from edge.outputs.mqtt.publisher import drain_and_stop

            drain_and_stop(publisher, args.mqtt_wait)
        unstored = guard.close() if store is not None else 0
        if store is not None:
            store.close()
    print(summary(stats, bundle=bundle, pipeline=pipeline, db_path=db_path, threads=threads, writer=writer),
          file=sys.stderr)
    if unstored:
        from edge.outputs.journal import EXIT_UNSTORED

        print(guard.summary(), file=sys.stderr)
        return EXIT_UNSTORED
    if stop.is_set():
        return 130
    return 1 if stats.refused or getattr(writer, "errors", None) else 0

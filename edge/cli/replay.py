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
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from edge.outputs.writers import FORMATS, RavenWriter, Writer, make_writer
from edge.service.replay import ReplayStats
from edge.sources import AUDIO_EXTENSIONS, display_path, find_audio_files

if TYPE_CHECKING:  # replay imports the configuration (pydantic) only when it runs
    from edge.config import Config

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEMO_DIR = PACKAGE_DIR / "demo"


def default_db_path() -> Path:
    env = os.environ.get("DAWNCHORUS_DB")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dawnchorus" / "detections.db"


def demo_files() -> list[Path]:
    return sorted(p for p in DEMO_DIR.glob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)


def _fmt_duration(s: float) -> str:
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m:02d} min {sec:02d} s" if h else (f"{m} min {sec:02d} s" if m else f"{sec} s")


def summary(stats: ReplayStats, *, bundle: Any, pipeline: Any, db_path: Optional[Path], threads: int,
            writer: Optional[Writer] = None) -> str:
    n_files = stats.files_ok + len(stats.refused)
    lines = [
        f"replayed {stats.files_ok} of {n_files} file(s): {_fmt_duration(stats.audio_s)} of audio in "
        f"{stats.wall_s:.2f} s, {stats.x_realtime:.0f}x realtime",
        f"model: {bundle.name} {bundle.version} (sha256 {bundle.sha256[:12]}), {threads} thread(s), "
        f"{pipeline.params.window_s:g} s windows every {pipeline.hop_s:g} s"
        + (f", {bundle.segment.windows} per invoke" if bundle.segment is not None else ""),
    ]
    if db_path is not None:
        lines.append(f"store: {db_path} ({stats.new} new detection(s), {stats.detections - stats.new} already stored)")
    if isinstance(writer, RavenWriter):
        if writer.written:
            lines.append(f"raven selection tables: {', '.join(str(p) for p in writer.written)}")
        lines += [f"  {err}" for err in writer.errors]
    if stats.species:
        lines.append(f"detections per species ({stats.detections} event(s)):")
        for label, n in sorted(stats.species.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:5d}  {stats.names.get(label, label)} ({label})")
    else:
        lines.append("no detections")
    guard = pipeline.guard
    if guard.no_signal_windows:
        lines.append(f"{guard.no_signal_windows} window(s) without signal not scored (digital silence, constant "
                     f"input or {guard.nonfinite_samples} non-finite sample(s))")
    if stats.refused:
        lines.append(f"refused {len(stats.refused)} file(s):")
        lines += [f"  {reason}" for _, reason in stats.refused]
    return "\n".join(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
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
    p.add_argument("--jobs", type=int, metavar="N",
                   help="worker processes; long files are split between them (default: the cores available)")
    p.add_argument("--dask", metavar="ADDRESS", help="replay on the Dask cluster whose scheduler is at ADDRESS "
                   "(e.g. tcp://10.0.0.5:8786; needs the cluster extra, see docs/scaling.md)")
    p.add_argument("--mqtt", action="store_true",
                   help="also publish the detections to the broker in --config's mqtt section (as when mqtt.enabled)")
    p.add_argument("--mqtt-wait", type=float, default=60.0, metavar="S",
                   help="wait at most S seconds at the end for the broker to acknowledge everything (default 60)")
    p.set_defaults(func=run)
    return p


def _set(data: dict[str, Any], section: str, key: str, value: Any) -> None:
    """``data[section][key] = value`` (a section that is not a mapping is left for the validation to name)."""
    if value is None:
        return
    sec = data.get(section) or {}
    if isinstance(sec, dict):
        data[section] = {**sec, key: value}


def build_config(args: argparse.Namespace) -> tuple[Config, Optional[Path]]:
    """``--config`` (or the defaults), then the command line; and the store's path (None: --no-db).

    Raises ``ConfigError`` naming the key (a command-line option by its key in the configuration).
    """
    from edge.config import parse_config, read_yaml

    origin = str(args.config) if args.config else "command line"
    data = (read_yaml(args.config) if args.config else None) or {}
    if not isinstance(data, dict):
        return parse_config(data, origin), None  # raises: the top level must be a mapping
    data = dict(data)
    for key, value in (("bundle", args.bundle), ("public_key", args.public_key), ("num_threads", args.threads),
                       ("overlap_s", args.overlap)):
        _set(data, "model", key, value)
    _set(data, "location", "timezone", args.timezone)
    if args.device_id is not None:
        data["device_id"] = args.device_id
    if args.mqtt:
        _set(data, "mqtt", "enabled", True)
    cfg = parse_config(data, origin)
    if args.no_db:
        return cfg, None
    # the configured store only when the config names one; else the per-user default, not /var/lib
    if args.db is not None or "path" not in cfg.store.model_fields_set:
        cfg.store.path = args.db or default_db_path()
    return cfg, cfg.store.path


def _close(executor, status):
    if executor is not None:
        executor.close(cancel=True)
    return status


def _runs(rt, files, job, executor, progress: bool):
    """(path, SourceRun) per file: in this process, or on worker processes / a cluster (edge.service.parallel)."""
    from edge.service.replay import replay_file

    if executor is not None:
        from edge.service.parallel import replay_parallel

        return replay_parallel(rt, files, job, executor, progress=progress)
    return ((path, replay_file(rt, path, job, progress=progress)) for path in files)


def run(args: argparse.Namespace) -> int:
    from edge.config import ConfigError
    from edge.contract.record import parse_utc
    from edge.service.replay import ReplayJob, ReplaySetupError, open_replay, start_services

    if args.mqtt and not args.config:
        print("error: --mqtt needs --config FILE with an mqtt section (host, port, ...)", file=sys.stderr)
        return 2
    try:
        cfg, db_path = build_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start_utc = None
    if args.start_time:
        try:
            start_utc = parse_utc(args.start_time)
        except ValueError:
            print(f"error: --start-time {args.start_time!r} is not an ISO 8601 time (e.g. 2024-05-01T05:30:00Z)",
                  file=sys.stderr)
            return 2
    job = ReplayJob(cfg, use_store=db_path is not None, channel=args.channel, start_utc=start_utc,
                    realtime=args.realtime)

    paths = args.paths or demo_files()
    if not paths:
        print(f"error: no PATH given and no demo recording in {DEMO_DIR}", file=sys.stderr)
        return 2
    files, problems = find_audio_files(paths)
    stats = ReplayStats(refused=[(display_path(p), f"{display_path(p)}: {why}") for p, why in problems])
    if start_utc is not None and len(files) > 1:
        log.warning("--start-time applies to every one of the %d files", len(files))

    executor = None  # worker processes or a cluster: started first, they load the model while this process does
    if (args.jobs != 1 or args.dask) and not args.realtime:
        from edge.service.parallel import available_cores, start_workers

        try:
            executor = start_workers(job, args.jobs or available_cores(), args.dask, files)
        except RuntimeError as exc:  # edge.service.cluster.ClusterError: no cluster there
            print(f"error: {exc}", file=sys.stderr)
            return 2
    stop = threading.Event()
    try:
        rt = open_replay(job, stop=stop, services=False)
    except ReplaySetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _close(executor, 2)
    fe = rt.pipeline.bundle.frontend
    try:
        writer = make_writer(args.format, args.out, low_hz=fe.fmin, high_hz=fe.fmax, inputs=paths)
    except OSError as exc:
        rt.stop()
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return _close(executor, 2)
    rt.sinks.append(writer)
    if job.use_store:  # clips.enabled (or web.enabled): a clip of each detection, as the daemon keeps them
        from edge.outputs.clips import ClipWriter

        try:
            clips = ClipWriter.from_config(cfg, rt.pipeline.sample_rate, delay_s=lambda: rt.pipeline.delay_s)
        except OSError as exc:
            rt.stop()
            print(f"error: cannot write clips to {cfg.clips.dir}: {exc.strerror or exc}", file=sys.stderr)
            return _close(executor, 2)
        if clips is not None:
            rt.sinks.append(clips)
            if executor is not None:  # clips are cut from the audio, which only this process would see
                log.warning("clips are on: replaying in this process (--jobs 1)")
                executor = _close(executor, None)
    try:
        start_services(rt)  # MQTT (when on): sends what the replay stores, and the outbox left from before
    except ReplaySetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _close(executor, 2)

    progress = not args.no_progress and sys.stderr.isatty()
    interrupted = False
    t0 = time.perf_counter()
    try:
        for path, run in _runs(rt, files, job, executor, progress):
            stats.add(path, run)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        print("interrupted", file=sys.stderr)
    finally:
        stats.wall_s = time.perf_counter() - t0
        unstored = rt.stop(drain_s=0.0 if interrupted else args.mqtt_wait)
    print(summary(stats, bundle=rt.pipeline.bundle, pipeline=rt.pipeline, db_path=db_path,
                  threads=cfg.model.num_threads, writer=writer), file=sys.stderr)
    if unstored:
        from edge.outputs.journal import EXIT_UNSTORED

        print(rt.unstored_summary(), file=sys.stderr)
        return EXIT_UNSTORED
    if interrupted:
        return 130
    return 1 if stats.refused or (isinstance(writer, RavenWriter) and writer.errors) else 0

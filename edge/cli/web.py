"""``python -m edge web``: serve the dashboard (or set its password).

With ``--config`` it reads the store, clips and model from the recorder's
configuration (section ``web``); without, it shows the store that ``python -m
edge replay`` fills by default (``--db`` to choose another, ``--clips`` for
its clips). It listens on ``web.listen`` (default 127.0.0.1:8080) or
``--listen HOST:PORT``; any host other than loopback needs a password file.
"""
from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# edge.config.DEFAULT_BUNDLE, without importing the configuration (pydantic: 11 MB of the dashboard's 60)
DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "default.bundle"


def add_parser(sub) -> None:
    p = sub.add_parser("web", help="serve the local dashboard", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="edge configuration file (store, clips, model, section web)")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default: web.listen, 127.0.0.1:8080)")
    p.add_argument("--db", type=Path, help="SQLite store (default: store.path, or the replay's default store)")
    p.add_argument("--clips", type=Path, help="clips directory (default: clips.dir)")
    p.add_argument("--state-dir", type=Path, help="state directory: password, caches, health report (default: state_dir)")
    p.add_argument("--set-password", action="store_true",
                   help="set the dashboard password (typed twice, or one line on standard input) and exit")
    p.set_defaults(func=run)


def replay_db_path() -> Path:
    """``python -m edge replay``'s default store (``edge.cli.replay.default_db_path``; a test keeps them
    equal): not imported from there, which would load numpy into the dashboard."""
    env = os.environ.get("DAWNCHORUS_DB")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dawnchorus" / "detections.db"


def context_from_args(args):
    from edge.outputs.web.context import WebContext

    if args.config:
        from edge.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise SystemExit(str(exc)) from None
        if args.db:
            cfg.store.path = args.db
        if args.clips:
            cfg.clips.dir = args.clips
        if args.state_dir:
            cfg.state_dir = args.state_dir
        return WebContext.from_config(cfg, args.listen)
    from edge.outputs.web.listen import split_listen

    db = args.db or replay_db_path()
    state = args.state_dir or db.parent
    host, port = split_listen(args.listen or "127.0.0.1:8080")
    return WebContext(db_path=db, clips_dir=args.clips or state / "clips", cache_dir=state / "web-cache",
                      reviewed_clips_dir=state / "reviewed-clips", password_file=state / "web.password",
                      models_dir=state / "models", bundle_path=DEFAULT_BUNDLE, state_dir=state, host=host,
                      port=port)


def set_password(ctx) -> int:
    from edge.outputs.web.auth import PasswordError, write_password_file

    if sys.stdin.isatty():
        first = getpass.getpass("New dashboard password: ")
        if getpass.getpass("Again: ") != first:
            print("the two passwords differ; nothing changed", file=sys.stderr)
            return 1
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    try:
        write_password_file(ctx.password_file, first)
    except (PasswordError, OSError) as exc:
        print(f"cannot set the password: {exc}", file=sys.stderr)
        return 1
    print(f"password set in {ctx.password_file} (scrypt hash, mode 600)")
    return 0


def run(args) -> int:
    try:
        ctx = context_from_args(args)
    except ValueError as exc:
        print(f"web: {exc}", file=sys.stderr)
        return 2
    if args.set_password:
        return set_password(ctx)
    from edge.outputs.web.server import WebError, serve

    try:
        serve(ctx)
    except WebError as exc:
        print(f"web: {exc}", file=sys.stderr)
        return 2
    return 0

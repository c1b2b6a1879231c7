"""``python -m edge run --config FILE``: the live daemon (what systemd starts).

Exit status: 0 after an ordered stop (SIGTERM, SIGINT, or ``--duration``
captured), 2 for a configuration error (the message names the key), 1 when
no model, store or other essential part can be set up, 3 after a stop that
left detections outside the store (kept in ``<store>.journal`` and stored at
the next start; see docs/faults.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run the live daemon: microphone -> model -> store (-> MQTT)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", required=True, help="YAML configuration (see config.example.yaml)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds of captured audio (a survey session, tests, benchmarks)")
    p.set_defaults(func=main)


def setup_logging(level: str, verbose: int) -> None:
    """One line per event on stderr; no timestamp under journald (it adds its own)."""
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    root = logging.getLogger()
    for h in root.handlers:
        h.setFormatter(logging.Formatter(fmt))
    root.setLevel(logging.DEBUG if verbose >= 2 else getattr(logging, level))


def main(args) -> int:
    from edge.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level, getattr(args, "verbose", 0))
    from edge.service.daemon import Daemon
    from edge.outputs.store import StoreError
    from edge.outputs.mqtt.client import MQTTSetupError
    from edge.service.updates import UpdateError
    from edge.detection.pipeline import PipelineError

    daemon = Daemon(cfg, duration_s=args.duration)
    daemon.install_signals()
    try:
        return daemon.run()
    except PipelineError as exc:  # settings the model cannot honour: a configuration error, not restarted
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    except (StoreError, UpdateError, MQTTSetupError) as exc:
        log.error("cannot start: %s", exc)
        return 1

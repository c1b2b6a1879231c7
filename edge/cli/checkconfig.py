"""``python -m edge check-config FILE``: validate a configuration and say what it will do.

Exit status 0 when valid (a summary is printed), 2 when not (each problem on
its own line, naming the key, the value given and what is allowed).
"""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("check-config", help="validate a configuration file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="YAML configuration")
    p.set_defaults(func=main)


def main(args) -> int:
    from edge.config import ConfigError, load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    a = cfg.audio
    print(f"{args.file}: valid")
    print(f"  device_id {cfg.device_id}; state in {cfg.state_dir}; store {cfg.store.path}")
    print(f"  model {cfg.model.bundle_path} (key {cfg.model.public_key_path}), {cfg.model.num_threads} thread(s)")
    dev = "the system default input" if a.device is None else repr(a.device)
    rate = "the model's rate" if a.sample_rate is None else f"{a.sample_rate} Hz"
    ch = "mixed down" if a.channel is None else f"channel {a.channel}"
    print(f"  audio from {dev} at {rate}, {a.channels} channel(s) {ch}, gain {a.gain_db:+.1f} dB")
    print(f"  clips {'to ' + str(cfg.clips.dir) if cfg.clips.enabled else 'off'}; "
          f"mqtt {'to ' + cfg.mqtt.host + ':' + str(cfg.mqtt.port) if cfg.mqtt.enabled else 'off'}; "
          f"updates {'on' if cfg.updates.enabled else 'off'}")
    print(f"  retention {_retention(cfg.store)}; home assistant {'on' if cfg.mqtt.homeassistant.enabled else 'off'}; "
          f"notifications {'on' if cfg.notify.enabled else 'off'}; local time zone {cfg.location.timezone or 'UTC'}")
    from edge.service.alerts import check_config

    problems = check_config(cfg.notify)
    for line in problems:
        print(f"{args.file}: {line}", file=sys.stderr)
    return 2 if problems else 0


def _retention(store) -> str:
    parts = [f"{store.keep_days:g} days" if store.keep_days else "", f"{store.max_mb:g} MB" if store.max_mb else ""]
    return "up to " + " and ".join(p for p in parts if p) if any(parts) else "off (keep everything)"

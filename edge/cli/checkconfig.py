"""``python -m edge check-config FILE``: validate a configuration and say what it will do.

Exit status 0 when valid (a summary is printed), 2 when not (each problem on
its own line, naming the key, the value given and what is allowed). The
configured model bundle (else the bundled default) is loaded and verified,
and the settings are checked against it as the daemon would: the overlap
must fit its window and the detection settings may only name its species.
"""
from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.config import Config


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
    problems, bundle = bundle_problems(cfg)
    if problems:
        print(f"{args.file}: invalid configuration:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    a = cfg.audio
    print(f"{args.file}: valid")
    seg = bundle.segment
    print(f"  checked against {bundle.name} {bundle.version}: {len(bundle.labels)} species, "
          f"{bundle.frontend.window_s:g} s windows" + (f", {seg.windows} per invoke every {bundle.hop_s:g} s "
                                                       f"(detections up to {(seg.windows - 1) * bundle.hop_s:g} s "
                                                       "later)" if seg is not None else ""))
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
    from edge.outputs.web.server import config_lines
    from edge.service.alerts import check_config

    web_summary, web_problems = config_lines(cfg)
    print(f"  {web_summary}")
    problems = check_config(cfg.notify) + web_problems
    for line in problems:
        print(f"{args.file}: {line}", file=sys.stderr)
    return 2 if problems else 0


def _retention(store) -> str:
    parts = [f"{store.keep_days:g} days" if store.keep_days else "", f"{store.max_mb:g} MB" if store.max_mb else ""]
    return "up to " + " and ".join(p for p in parts if p) if any(parts) else "off (keep everything)"


def bundle_problems(cfg: Config) -> tuple[list[str], Any]:
    """Problems of ``cfg`` against the model it names (loaded and verified), and that bundle."""
    from edge.contract.bundle import BundleError, load_bundle
    from edge.contract.signing import SigningKeyError, load_public_key
    from edge.detection.pipeline import PipelineError, window_hop_frames
    from edge.detection.postprocess import unknown_labels

    m = cfg.model
    try:
        bundle = load_bundle(m.bundle_path, load_public_key(m.public_key_path), max_bytes=int(m.max_bundle_mb * 2**20))
    except (BundleError, SigningKeyError, OSError) as exc:
        return [f"model.bundle: {exc}"], None
    problems = []
    try:
        window_hop_frames(bundle, m.overlap_s)
    except PipelineError as exc:
        window_s = bundle.frontend.window_s
        fits = m.overlap_s is not None and 0 <= m.overlap_s < window_s
        problems.append(f"model.overlap_s: {exc}" if fits else  # a segment model's hop is its own
                        f"model.overlap_s: {m.overlap_s} does not fit the model's {window_s:g} s window (allowed: "
                        f"0 <= overlap_s < {window_s:g}, or null for the bundle's hop)")
    labels = [lab.label for lab in bundle.labels]
    d = cfg.detection
    for key in ("include", "exclude", "thresholds"):
        unknown = unknown_labels(labels, SimpleNamespace(**{"include": [], "exclude": [], "thresholds": {},
                                                            key: getattr(d, key)}))
        if unknown:
            problems.append(f"detection.{key}: species the model {bundle.name} {bundle.version} does not know: "
                            f"{unknown[:10]} (its labels: {', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''})")
    return problems, bundle

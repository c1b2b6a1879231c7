"""Command line: python -m trainer train|evaluate|keygen|push."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("trainer")


def _train(args) -> int:
    from edge.contract.signing import load_private_key

    from .config import load_train_config
    from .train import run

    cfg = load_train_config(args.config)
    if args.cache_dir:
        cfg.data.cache_dir = Path(args.cache_dir)
    key = load_private_key(args.key) if args.key else None
    res = run(args.data, args.out, cfg, private_key=key, progress=not args.quiet)
    m = res.int8_metrics
    assert m is not None and res.float_metrics is not None  # run() fills both
    print(f"bundle: {res.bundle_path}")
    print(f"report: {Path(args.out) / 'metrics.json'}")
    print(f"{'':8}{'macro ROC-AUC':>15}{'macro AP':>10}{'cmAP pad':>10}{'rec top-1':>10}")
    for name, mm in (("float", res.float_metrics), ("int8", m)):
        print(f"{name:8}{mm['macro_roc_auc']:>15.3f}{mm['macro_average_precision']:>10.3f}"
              f"{mm['cmap_padded']:>10.3f}{mm['recording_top1_accuracy']:>10.3f}")
    return 0


def _evaluate(args) -> int:
    from .evaluate_bundle import evaluate_bundle

    m = evaluate_bundle(args.bundle, args.data, args.out, public_key=args.public_key, hop_s=args.hop_s,
                        cache_dir=args.cache_dir, num_threads=args.threads, progress=not args.quiet)
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    print(f"macro ROC-AUC {m['macro_roc_auc']:.3f}  macro AP {m['macro_average_precision']:.3f}  "
          f"cmAP(padded) {m['cmap_padded']:.3f}  recording top-1 {m['recording_top1_accuracy']:.3f}  "
          f"({m['n_windows']} windows, {m['n_recordings']} recordings)")
    return 0


def _keygen(args) -> int:
    from edge.contract.signing import generate_keypair, key_id, load_public_key

    priv, pub = generate_keypair(args.out, overwrite=args.force)
    print(f"private key: {priv} (keep it secret; sign bundles with it)")
    print(f"public key:  {pub} (give it to the recorders; key id {key_id(load_public_key(pub))})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m trainer", description="dawnchorus trainer")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train, evaluate, quantize and write a signed bundle")
    t.add_argument("--data", required=True, help="dataset folder (folder-per-class or with metadata.csv) or a metadata.csv")
    t.add_argument("--out", required=True, help="output folder: <name>.bundle, metrics.json, predictions.csv, PNGs")
    t.add_argument("--config", help="training options (YAML); see trainer.example.yaml")
    t.add_argument("--key", help="Ed25519 private key to sign with (overrides bundle.signing_key)")
    t.add_argument("--cache-dir", help="feature cache (default ~/.cache/dawnchorus/features)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_train)
    e = sub.add_parser("evaluate", help="evaluate a bundle with the int8 interpreter on a dataset")
    e.add_argument("--bundle", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--public-key", help="PEM public key (default: <bundle>.pub next to the bundle, or key/signing.pub)")
    e.add_argument("--hop-s", type=float, help="window hop (default: the bundle's)")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--cache-dir")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=_evaluate)
    k = sub.add_parser("keygen", help="make an Ed25519 key pair for signing bundles")
    k.add_argument("--out", required=True, help="folder for signing.key (secret) and signing.pub")
    k.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    k.set_defaults(func=_keygen)
    from .push import add_parser as add_push_parser  # python -m trainer push (model updates)

    add_push_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    from edge.contract.bundle import BundleError
    from edge.contract.signing import SigningKeyError

    from .config import TrainConfigError
    from .data import DatasetError
    from .model import ModelError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (TrainConfigError, DatasetError, ModelError, BundleError, SigningKeyError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

#!/usr/bin/env python3
"""Decide whether a newly trained bundle may replace the deployed one.

    compare_metrics.py NEW/metrics.json [DEPLOYED/metrics.json] [--metrics m1,m2] [--min-gain X]

Both files come from ``python -m trainer evaluate`` on the same held-out set.
Prints a side-by-side table. Exit 0: push (every metric of the new model is
at least the deployed one's plus --min-gain; or nothing is deployed yet).
Exit 1: keep the deployed model. Exit 2: the files cannot be compared.
"""
from __future__ import annotations

import argparse
import json
import math
import sys


def decide(new: dict, old: dict | None, metrics: list[str], min_gain: float = 0.0) -> tuple[bool, list[str]]:
    lines = [f"{'metric':28}{'deployed':>10}{'new':>10}"]
    ok = True
    for m in metrics:
        if not isinstance(new.get(m), (int, float)) or math.isnan(new[m]):
            raise ValueError(f"new metrics lack {m!r}")
        if old is None:
            lines.append(f"{m:28}{'-':>10}{new[m]:>10.4f}")
            continue
        if not isinstance(old.get(m), (int, float)):
            raise ValueError(f"deployed metrics lack {m!r}")
        better = new[m] >= old[m] + min_gain
        ok = ok and better
        lines.append(f"{m:28}{old[m]:>10.4f}{new[m]:>10.4f}  {'ok' if better else 'WORSE'}")
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("new")
    ap.add_argument("deployed", nargs="?")
    ap.add_argument("--metrics", default="macro_roc_auc,recording_top1_accuracy")
    ap.add_argument("--min-gain", type=float, default=0.0)
    a = ap.parse_args(argv)
    try:
        new = json.load(open(a.new))
        old = json.load(open(a.deployed)) if a.deployed else None
        ok, lines = decide(new, old, [m for m in a.metrics.split(",") if m], a.min_gain)
    except (OSError, ValueError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print("decision: " + ("push" if ok else "keep the deployed model"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m edge export-reviews OUT``: the reviewed detections and their clips as a labelled dataset.

Writes the folder-per-class layout the trainer reads (``python -m trainer
... --data OUT``): ``OUT/<Scientific name>_<Common name>/<id>.wav`` for each
detection marked correct or renamed to another species, ``OUT/.wrong/<label>/``
for those marked wrong without a species (the trainer skips dot folders), and
``OUT/reviews.csv`` listing every exported review.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("export-reviews", help="write reviewed clips as a folder-per-class dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, metavar="OUT", help="output folder (created; existing files are overwritten)")
    p.add_argument("--config", type=Path, help="edge configuration file (store, clips, state directory)")
    p.add_argument("--db", type=Path, help="SQLite store (default: store.path, or the replay's default store)")
    p.add_argument("--clips", type=Path, help="clips directory (default: clips.dir)")
    p.add_argument("--state-dir", type=Path, help="state directory holding reviewed-clips/ (default: state_dir)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sqlite3

    from edge.cli.web import context_from_args
    from edge.outputs.reviews import Reviews, connect, export_reviews

    args.listen, args.set_password = None, False
    try:
        ctx = context_from_args(args)
    except ValueError as exc:
        print(f"export-reviews: {exc}", file=sys.stderr)
        return 2
    if not ctx.db_path.exists():
        print(f"export-reviews: {ctx.db_path}: no store (pass --db or --config)", file=sys.stderr)
        return 2
    try:
        conn = connect(ctx.db_path)
        reviews = Reviews(conn, kept_dir=ctx.reviewed_clips_dir, clips_dir=ctx.clips_dir)
        summary = export_reviews(reviews, args.out)
    except (sqlite3.Error, OSError) as exc:
        print(f"export-reviews: {exc}", file=sys.stderr)
        return 1
    for det_id, reason in summary.missing:
        print(f"skipped {det_id}: {reason}", file=sys.stderr)
    classes = ", ".join(f"{k} {v}" for k, v in sorted(summary.per_class.items())) or "none"
    print(f"exported {summary.written} reviewed clip(s) to {summary.out} ({classes}; {summary.wrong} marked wrong "
          f"in .wrong/); {len(summary.missing)} skipped without a clip")
    return 0

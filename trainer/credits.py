"""Training-data credits: every recording a model was trained or evaluated on (recordist, licence, URL).

    python -m trainer.credits OUT.csv DATA [NEGATIVES...]

Reads each set's metadata.csv (BirdCLEF layout) and writes one row per recording with its set and role
(`classes`: the model's species set; `negatives`: open-set audio).
"""
from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path


def rows_of(path: Path, role: str) -> list[dict]:
    with (Path(path) / "metadata.csv").open(newline="", encoding="utf-8") as fh:
        out = []
        for r in csv.DictReader(fh):
            url = (r.get("url") or "").strip()
            out.append({"xc_id": url.rstrip("/").rsplit("/", 1)[-1], "set": Path(path).name, "role": role,
                        "primary_label": r.get("primary_label", ""), "recordist": r.get("recordist", ""),
                        "license": r.get("license", ""), "url": url})
        return out


def write_credits(out: Path, data: Path, negatives: list[Path]) -> dict:
    rows = rows_of(data, "classes")
    for n in negatives:
        rows += rows_of(n, "negatives")
    with Path(out).open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["xc_id", "set", "role", "primary_label", "recordist", "license", "url"])
        w.writeheader()
        w.writerows(rows)
    return {"recordings": len(rows), "recordists": len({r["recordist"] for r in rows}),
            "licences": dict(Counter(r["license"] for r in rows))}


if __name__ == "__main__":
    print(write_credits(Path(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]))

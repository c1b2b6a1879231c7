"""``python -m edge devices``: the input devices PortAudio sees, with their channels and rates.

``audio.device`` in the configuration takes the index or part of the name.
``--rates`` also probes which common sample rates each device accepts.
"""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("devices", help="list audio input devices",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", action="store_true", help="probe the supported sample rates (opens each device)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=main)


def main(args) -> int:
    from edge.sources.mic import list_input_devices, supported_rates

    devices = list_input_devices()
    for d in devices:
        if args.rates:
            d["rates"] = supported_rates(d["index"], 1)
    if args.json:
        print(json.dumps(devices, indent=1))
        return 0
    if not devices:
        print("no input devices found (is the microphone plugged in? is the user in the 'audio' group?)")
        return 1
    print(f"{'#':>3}  {'name':<40} {'host API':<10} {'ch':>3} {'default Hz':>10}" + ("  rates" if args.rates else ""))
    for d in devices:
        line = f"{d['index']:>3}  {d['name'][:40]:<40} {d['hostapi'][:10]:<10} {d['channels']:>3} {d['default_rate']:>10}"
        if args.rates:
            line += "  " + ",".join(str(r) for r in d["rates"])
        print(line)
    return 0

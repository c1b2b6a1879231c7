"""The machine's numbers for the health page, from /proc and statvfs (no psutil)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from edge.procstat import status_mb


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def process_rss_mb(pid: int) -> float | None:
    return status_mb("VmRSS", int(pid))


def disk(path: Path | None) -> dict | None:
    p = Path(path) if path else Path("/")
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        u = shutil.disk_usage(p)
    except OSError:
        return None
    return {"path": str(p), "total_gb": u.total / 1e9, "free_gb": u.free / 1e9, "used_pct": 100 * u.used / u.total}


def machine(state_dir: Path | None, daemon_pid: int | None = None) -> dict:
    mem = _meminfo()
    loads: tuple[float | None, ...]
    try:
        loads = os.getloadavg()
    except OSError:
        loads = (None, None, None)
    load1, load5, load15 = loads
    total, avail = mem.get("MemTotal"), mem.get("MemAvailable")
    return {
        "cpus": os.cpu_count() or 1,
        "load": (load1, load5, load15),
        "load_pct": None if load1 is None else 100 * load1 / (os.cpu_count() or 1),
        "mem_total_mb": total / 1e6 if total else None,
        "mem_used_pct": 100 * (total - avail) / total if total and avail is not None else None,
        "web_rss_mb": process_rss_mb(os.getpid()),
        "daemon_rss_mb": process_rss_mb(daemon_pid) if daemon_pid else None,
        "disk": disk(state_dir),
    }

"""A process's memory figures from Linux's ``/proc/<pid>/status`` (no psutil).

``status_mb("VmRSS", pid)``: resident memory now; ``status_mb("VmHWM")``: its
high-water mark (this process by default). None where there is no such
file or field (not Linux, the process has exited). Used by the dashboard's
health page, the replay workers' peak memory and the benches.

Imports from edge: none.
"""
from __future__ import annotations


def status_mb(field: str, pid: int | str = "self") -> float | None:
    """The ``field`` line of ``/proc/<pid>/status`` (a size in kB there) in MB, or None."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None

"""edge.procstat: memory figures of a process from /proc/<pid>/status."""
import subprocess
import sys

import pytest

from edge.procstat import status_mb


def test_own_rss_and_high_water_mark():
    rss, hwm = status_mb("VmRSS"), status_mb("VmHWM")
    assert rss is not None and hwm is not None
    assert 5 < rss <= hwm


def _child(mb: int) -> subprocess.Popen:
    code = (f"import sys; b = bytearray({mb} * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); "
            "print(1, flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "1"
    return p


def test_another_process_is_measured_not_this_one():
    big, small = _child(150), _child(0)
    try:
        rb, rs = status_mb("VmRSS", big.pid), status_mb("VmRSS", small.pid)
        assert rb is not None and rs is not None
        assert rb - rs >= 140  # each child's own memory, whatever this process holds
    finally:
        for p in (big, small):
            p.communicate("")
    assert status_mb("VmRSS", big.pid) is None  # gone


@pytest.mark.parametrize("field", ["VmNothing", "Vm"])
def test_unknown_field_is_none(field):
    assert status_mb(field) is None

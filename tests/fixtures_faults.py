"""Fixtures for the fault tests: small file systems that fill up, stores locked by another process."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest


class SmallDisk:
    """A tmpfs of a few MB mounted on a directory (root only); ``fill()`` leaves ``keep_kb`` free."""

    def __init__(self, path: Path, size_kb: int):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(self.path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError(r.stderr.strip() or "mount failed")
        self.filler = self.path / "filler"

    def free_kb(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize // 1024

    def fill(self, keep_kb: int = 0) -> None:
        with open(self.filler, "ab") as f:
            block = b"\xa5" * 4096
            try:
                while self.free_kb() > keep_kb:
                    f.write(block)
                    f.flush()
            except OSError:
                pass

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    disks: list[SmallDisk] = []

    def make(size_kb: int = 2048, name: str | None = None) -> SmallDisk:
        try:
            d = SmallDisk(tmp_path / (name or f"disk-{uuid.uuid4().hex[:6]}"), size_kb)
        except OSError as exc:
            pytest.skip(f"cannot mount a tmpfs here (not root?): {exc}")
        disks.append(d)
        return d

    yield make
    for d in disks:
        d.close()


LOCKER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
"""


class Locker:
    """Another process holding the store's write lock until ``release()``."""

    def __init__(self, db: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


def immutable(path: Path, on: bool = True) -> None:
    """chattr +i / -i (a read-only store even for root); skips the test where the file system cannot."""
    if not shutil.which("chattr"):
        pytest.skip("no chattr")
    r = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"chattr not supported here: {r.stderr.strip()}")

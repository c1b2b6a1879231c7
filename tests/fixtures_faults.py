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


# -- real processes: replay and the daemon, shared by tests/test_faults_*.py and bench/faults --------------
REPO = Path(__file__).resolve().parents[1]
SR = 32000


def tone_program(n_events: int, seed: int = 0):
    """n separate tone events (alternating two species) with noise between: about 7 s each."""
    import numpy as np

    from fixtures_replay import TONES, noise, tone_bursts

    parts = []
    for i in range(n_events):
        f = TONES["Tonus_lowus"] if (i + seed) % 2 else TONES["Tonus_highus"]
        parts += [tone_bursts(f, 3, seed=seed * 1000 + i), noise(4, seed=seed * 1000 + 500 + i)]
    return np.concatenate(parts)


def write_recordings(d: Path, n_files: int, events_per_file: int) -> Path:
    import soundfile as sf

    d.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        sf.write(d / f"rec{i:03d}.wav", tone_program(events_per_file, seed=i), SR)
    return d


def replay_cmd(paths, db: Path, bundle: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "edge", "replay", *map(str, paths), "--db", str(db), "--no-progress",
            "--format", "csv", "--out", os.devnull, "--bundle", str(bundle),
            "--public-key", str(bundle.parent / "signing.pub"), *map(str, extra)]


def proc_env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(extra or {})}


def store_ids(db: Path) -> set[str]:
    import sqlite3

    if not Path(db).exists():
        return set()
    con = sqlite3.connect(db, timeout=30)
    try:
        return {r[0] for r in con.execute("SELECT id FROM detections")}
    except sqlite3.OperationalError:  # no table yet (killed before the migration)
        return set()
    finally:
        con.close()


def integrity_ok(db: Path) -> bool:
    import sqlite3

    if not Path(db).exists():
        return True
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()


class DaemonRig:
    """``python -m edge run`` on an ALSA file device playing ``samples``: configs and commands."""

    def __init__(self, workdir: Path, bundle: Path, device_id: str = "fault1"):
        from fixtures_alsa import SYSTEM_ALSA_CONF

        if not SYSTEM_ALSA_CONF.exists():
            raise OSError(f"no {SYSTEM_ALSA_CONF} (libasound2-data not installed)")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bundle = bundle
        self.device_id = device_id
        self.n = 0

    def device(self, samples, name: str = "dcmic") -> tuple[dict, str]:
        import numpy as np

        from fixtures_alsa import alsa_env, pcm_block, to_s16

        self.n += 1
        raw = self.dir / f"{name}{self.n}.raw"
        raw.write_bytes(to_s16(np.concatenate([samples, np.zeros(5 * SR, np.float32)])))
        conf = self.dir / f"asound{self.n}.conf"
        conf.write_text(pcm_block(f"{name}{self.n}", raw, SR, 1, "dawnchorus fault device"))
        return alsa_env(conf), f"{name}{self.n}"

    def command(self, samples, db: Path, *, env_extra: dict | None = None, **sections) -> tuple[list[str], dict]:
        import yaml

        env, name = self.device(samples)
        cfg = {"device_id": self.device_id, "state_dir": str(self.dir / "state"),
               "audio": {"device": name, "ring_buffer_s": 600}, "updates": {"enabled": False},
               "model": {"bundle": str(self.bundle), "public_key": str(self.bundle.parent / "signing.pub")},
               "store": {"path": str(db)}}
        for k, v in sections.items():
            cfg[k] = {**cfg.get(k, {}), **v}
        path = self.dir / f"config{self.n}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return ([sys.executable, "-m", "edge", "run", "--config", str(path), "--duration", str(len(samples) / SR)],
                {**env, **(env_extra or {})})

    def run(self, samples, db: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
        cmd, env = self.command(samples, db, **kw)
        return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def detected_lines(stderr: str) -> int:
    """Detections the daemon logged as stored ("detected ..." comes after the store took them)."""
    return sum(1 for ln in stderr.splitlines() if " edge.service." in ln and " detected " in ln)

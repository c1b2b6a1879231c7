"""edge/files.py: a write either replaces the file whole or leaves the old one, and leaves no temporary file."""
from __future__ import annotations

import os
import stat

import pytest

from edge.files import atomic_file, atomic_write


def test_write_replaces_whole_and_leaves_nothing_else(tmp_path):
    p = tmp_path / "state.json"
    p.write_text("old")
    atomic_write(p, "new")
    assert p.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["state.json"]
    atomic_write(p, b"\x00bytes", durable=True)
    assert p.read_bytes() == b"\x00bytes" and sorted(os.listdir(tmp_path)) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_part(tmp_path):
    p = tmp_path / "clip.wav"
    p.write_bytes(b"old clip")
    with pytest.raises(RuntimeError):
        with atomic_file(p, tmp=p.with_suffix(".wav.part")) as fh:
            fh.write(b"half a clip")
            raise RuntimeError("disk full")
    assert p.read_bytes() == b"old clip"
    assert sorted(os.listdir(tmp_path)) == ["clip.wav"]


def test_mode_is_kept_for_secrets(tmp_path):
    p = tmp_path / "password"
    atomic_write(p, "hash\n", mode=0o600)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_two_overlapping_writers_of_one_path_each_rename_a_whole_file(tmp_path):
    """Parallel training runs share one feature cache: a second writer starting while the first is
    still writing must not take over (or truncate) the first one's temporary file."""
    p = tmp_path / "features.npy"
    with atomic_file(p) as first:
        first.write(b"first half ")
        atomic_write(p, b"second writer, whole")
        assert p.read_bytes() == b"second writer, whole"
        first.write(b"and the rest")
    assert p.read_bytes() == b"first half and the rest"
    assert [q.name for q in tmp_path.iterdir()] == ["features.npy"]


def test_trainer_caches_survive_two_writers_of_one_entry(tmp_path):
    """Two training runs started together on a cold cache write the same entries (trainer.data.save_atomic)."""
    import numpy as np

    from trainer.data import save_atomic

    p = tmp_path / "key.npy"

    def first(fh):
        fh.write(b"\x93NUMPY")  # half written when the other run saves the same entry
        save_atomic(p, lambda fh2: np.save(fh2, np.arange(3)))
        assert list(np.load(p)) == [0, 1, 2]
        fh.seek(0)
        np.save(fh, np.arange(5))

    save_atomic(p, first)
    assert list(np.load(p)) == [0, 1, 2, 3, 4]
    assert [q.name for q in tmp_path.iterdir()] == ["key.npy"]

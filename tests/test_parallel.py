"""Replay on every core (edge/service/parallel.py): pieces of a file are exactly the whole file's samples and
windows; ``--jobs 2`` stores exactly what ``--jobs 1`` stores, events merged across the pieces of a split file."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures_replay import SR, TONES, noise, tone_bursts

from edge.contract.resample import resample
from edge.service.parallel import InlineExecutor, Unit, Work, analyse, plan, results_in_order, split_points
from edge.sources import FileSource


def write(path, x: np.ndarray, rate: int, fmt: str | None = None) -> None:
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, format=fmt or path.suffix[1:].upper(),
                      subtype="VORBIS" if path.suffix == ".ogg" else "PCM_16") as fh:
        for i in range(0, len(x), rate * 5):  # in blocks (libsndfile's Vorbis encoder)
            fh.write(x[i : i + rate * 5])


def tones_program(seconds: float) -> np.ndarray:
    """Mid tone bursts all through (one event across any split), high ones in the middle third, noise."""
    x = tone_bursts(TONES["Tonus_midus"], seconds, seed=3) + noise(seconds, seed=5)
    third = int(seconds / 3 * SR)
    x[third : 2 * third] += tone_bursts(TONES["Tonus_highus"], seconds / 3, seed=4)[: third]
    return x


@pytest.mark.parametrize("rate,ext", [(32000, "wav"), (48000, "flac"), (44100, "ogg"), (22050, "flac")])
def test_a_span_of_a_file_is_exactly_those_samples_of_the_whole(tmp_path, rate, ext):
    x = np.random.default_rng(rate).standard_normal(int(rate * 47.3)).astype(np.float32) * 0.1
    path = tmp_path / f"a.{ext}"
    write(path, x, rate)
    whole = np.concatenate([b.samples for b in FileSource(path, SR).blocks(threading.Event())])
    assert len(whole) == FileSource(path, SR).output_samples
    for first, end in [(0, 100_000), (400_000, 1_000_003), (999_680, None), (1_300_000, 1_300_001)]:
        blocks = list(FileSource(path, SR, span=(first, end)).blocks(threading.Event()))
        got = np.concatenate([b.samples for b in blocks])
        np.testing.assert_array_equal(got, whole[first:end])
        assert blocks[0].offset_s == pytest.approx(first / SR)
        assert max(len(b.samples) for b in blocks) <= 4 * SR


@pytest.mark.parametrize("n_samples,pieces", [(SR * 200, 3), (SR * 61 + 17, 2), (SR * 7, 4), (SR * 2, 2),
                                               (SR * 3600, 7)])
def test_split_points_cover_every_window_once(n_samples, pieces):
    hop, span = 48000, 95_744  # 1.5 s windows of 300 frames of 1024 samples every 320
    windows = 0 if n_samples < span else 1 + (n_samples - span) // hop
    pts = split_points(n_samples, hop, span, pieces)
    assert pts[0][:2] == (0, 0) and pts[-1][2] is None
    firsts = [k for k, _, _ in pts] + [windows]
    assert firsts == sorted(set(firsts)) or len(pts) == 1
    for (k0, first, end), k1 in zip(pts, firsts[1:]):
        assert first == k0 * hop
        if end is not None:  # a middle piece ends with the last sample of its last window
            assert end == (k1 - 1) * hop + span


@pytest.mark.parametrize("n_samples,pieces,group", [(SR * 200, 3, 16), (SR * 61 + 17, 2, 4), (SR * 7, 4, 4),
                                                     (SR * 3600, 7, 16), (SR * 40, 3, 16)])
def test_split_points_of_a_segment_model_cut_between_its_chunks(n_samples, pieces, group):
    hop, span = 48000, 95_744
    windows = 1 + (n_samples - span) // hop
    pts = split_points(n_samples, hop, span, pieces, group)
    firsts = [k for k, _, _ in pts]
    assert firsts[0] == 0 and all(k % group == 0 for k in firsts) and firsts == sorted(set(firsts))
    assert len(pts) == 1 or all(k1 - k0 >= group for k0, k1 in zip(firsts, firsts[1:] + [windows]))
    assert len(pts) == max(1, min(pieces, -(-windows // group) // 2))


def replay_job(bundle_path, public_key=None):
    from edge.config import Config
    from edge.service.replay import ReplayJob

    cfg = Config.model_validate({"model": {"bundle": str(bundle_path),
                                           "public_key": str(public_key or bundle_path.parent / "signing.pub")}})
    return ReplayJob(cfg, use_store=False)


def test_pieces_score_exactly_the_windows_of_the_whole_file(tmp_path, tone_bundle_path, tone_bundle):
    path = tmp_path / "20240501_050000.flac"
    write(path, resample(tones_program(200.0), SR, 48000), 48000)
    work = Work(replay_job(tone_bundle_path))
    src = FileSource(path, SR)
    units = plan([(0, src)], tone_bundle, None, jobs=2, piece_s=60)
    assert len(units) == 3 and [u.last for u in units] == [False, False, True]
    parts = list(results_in_order(InlineExecutor(), units, work))
    whole = analyse(Unit(0, str(path)), work)
    assert [w for r in parts for w in r.offsets] == whole.offsets
    assert [w for r in parts for w in r.utcs] == whole.utcs
    np.testing.assert_array_equal(np.concatenate([r.scores for r in parts]), whole.scores)
    assert whole.windows == 1 + int((200 - 3) / 1.5) + 1  # every 1.5 s, and the tail window
    assert parts[-1].end_utc == whole.end_utc and parts[-1].audio_end_s == pytest.approx(200.0)


ROOT = Path(__file__).resolve().parents[1]


def replay(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def table(db, name: str) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [{k: r[k] for k in r.keys() if k != "created_utc"} for r in con.execute(f"SELECT * FROM {name} ORDER BY rowid")]
    finally:
        con.close()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Recordings at recorders' rates and formats, one long enough to be split, and a broken file."""
    d = tmp_path_factory.mktemp("archive")
    write(d / "20240501_050000.wav", tones_program(40.0), SR)
    write(d / "20240501_051000.ogg", resample(tones_program(30.0), SR, 44100), 44100)
    long = resample(tones_program(200.0), SR, 48000)
    long[140 * 48000 : 160 * 48000] = 0.0  # digital silence: windows the signal guard does not score
    long[int(20.5 * 48000) : int(20.5 * 48000) + 7] = np.nan  # non-finite samples (a float WAV can hold them)
    sf.write(d / "20240501_052000.wav", long, 48000, subtype="FLOAT")
    write(d / "20240501_053000.wav", resample(tones_program(35.0), SR, 22050), 22050)
    (d / "20240501_054000.wav").write_text("not audio\n" * 40)
    return d


def csv_rows(path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "created_utc"} for r in csv.DictReader(fh)]


def summary_lines(stderr: str) -> list[str]:
    """The summary without its timing figures."""
    import re

    lines = [ln for ln in stderr.splitlines() if not re.match(r"^\d{4}-\d\d-\d\d ", ln) and "XNNPACK" not in ln]
    return [re.sub(r"in [\d.]+ s, \d+x realtime|^store: \S+", "", ln) for ln in lines]


def test_jobs_2_stores_exactly_what_jobs_1_stores(tmp_path, archive, tone_bundle_path):
    key = tone_bundle_path.parent / "signing.pub"
    runs = {}
    for jobs in (1, 2):
        db, out = tmp_path / f"j{jobs}.db", tmp_path / f"j{jobs}.csv"
        r = replay("-v", "replay", archive, "--bundle", tone_bundle_path, "--public-key", key, "--db", db,
                   "--format", "csv", "--out", out, "--jobs", jobs)
        assert r.returncode == 1, r.stderr  # the broken file is refused, the rest stored
        runs[jobs] = (db, out, r.stderr)
    assert "6 unit(s) of work (4 file(s), 1 split into pieces) on 2 worker processes" in runs[2][2]
    assert "analysed by 2 worker process(es)" in runs[2][2]
    for name in ("detections", "effort"):
        one, two = table(runs[1][0], name), table(runs[2][0], name)
        assert one == two and one, name
    dets = table(runs[1][0], "detections")
    long = [d for d in dets if d["source"].endswith("052000.wav") and d["label"] == "Tonus_midus"]
    assert long[-1]["end_offset_s"] == pytest.approx(200.0, abs=1.6)  # the last event reaches the end
    assert any(d["offset_s"] < 66 < d["end_offset_s"] for d in long)  # one event across the pieces (split at 66 s)
    assert {d["label"] for d in dets if d["source"].endswith("052000.wav")} == {"Tonus_midus", "Tonus_highus"}
    assert csv_rows(runs[1][1]) == csv_rows(runs[2][1]) == [
        {k: str(v) for k, v in d.items() if k in csv_rows(runs[1][1])[0]} for d in dets]
    one, two = summary_lines(runs[1][2]), summary_lines(runs[2][2])
    assert one == two and any("refused 1 file(s)" in ln for ln in one)
    assert any("window(s) without signal not scored" in ln and "non-finite sample(s)" in ln for ln in one), one


DEMO = ROOT / "edge" / "demo" / "XC344036_20161110_130000.ogg"  # 59.4 s of real birds at 32 kHz (edge/demo/CREDITS.md)


@pytest.fixture(scope="module")
def real_archive(tmp_path_factory):
    """Real recordings: the demo four times over at 48 kHz (long enough to be split), and once as it is."""
    d = tmp_path_factory.mktemp("real")
    x, rate = sf.read(str(DEMO), dtype="float32")
    write(d / "20161110_130000.flac", resample(np.tile(x, 4), rate, 48000), 48000)
    write(d / "20161110_140000.wav", x, rate)
    return d


def test_pieces_of_a_segment_model_score_exactly_the_chunks_of_the_whole_file(real_archive, segment_run):
    from edge.contract.bundle import load_bundle
    from edge.contract.signing import load_public_key

    bundle = load_bundle(segment_run.bundle_path, load_public_key(segment_run.public_key_path))
    w = bundle.segment.windows
    path = real_archive / "20161110_130000.flac"
    work = Work(replay_job(segment_run.bundle_path, segment_run.public_key_path))
    units = plan([(0, FileSource(path, SR))], bundle, None, jobs=2, piece_s=60)
    assert len(units) == 3 and [u.first_window % w for u in units] == [0, 0, 0]
    parts = list(results_in_order(InlineExecutor(), units, work))
    whole = analyse(Unit(0, str(path)), work)
    assert [r.windows % w for r in parts[:-1]] == [0, 0] and whole.windows % w  # a partial chunk at the end
    assert [o for r in parts for o in r.offsets] == whole.offsets
    np.testing.assert_array_equal(np.concatenate([r.scores for r in parts]), whole.scores)


def test_jobs_2_stores_exactly_what_jobs_1_stores_with_a_segment_bundle(tmp_path, real_archive, segment_run):
    runs = {}
    for jobs in (1, 2):
        db = tmp_path / f"j{jobs}.db"
        r = replay("-v", "replay", real_archive, "--bundle", segment_run.bundle_path,
                   "--public-key", segment_run.public_key_path, "--db", db, "--format", "csv", "--out", os.devnull,
                   "--jobs", jobs)
        assert r.returncode == 0, r.stderr
        runs[jobs] = (db, r.stderr)
    assert "4 unit(s) of work (2 file(s), 1 split into pieces) on 2 worker processes" in runs[2][1]
    for name in ("detections", "effort"):
        one, two = table(runs[1][0], name), table(runs[2][0], name)
        assert one == two and one, name
    long = [d for d in table(runs[1][0], "detections") if d["source"].endswith("130000.flac")]
    assert long and long[-1]["end_offset_s"] == pytest.approx(4 * 59.4, abs=1)  # to the end of the last piece
    assert summary_lines(runs[1][1]) == summary_lines(runs[2][1])


def test_clips_need_the_audio_so_replay_stays_in_one_process(tmp_path, archive, tone_bundle_path):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(f"state_dir: {tmp_path}\nstore:\n  path: {tmp_path / 'd.db'}\n"
                   f"clips:\n  enabled: true\n  dir: {tmp_path / 'clips'}\n")
    r = replay("-v", "replay", archive, "--config", cfg, "--bundle", tone_bundle_path, "--public-key",
               tone_bundle_path.parent / "signing.pub", "--jobs", 2, "--format", "csv", "--out", os.devnull)
    assert r.returncode == 1, r.stderr
    assert "clips are on: replaying in this process (--jobs 1)" in r.stderr
    assert "worker process" not in r.stderr
    dets = table(tmp_path / "d.db", "detections")
    assert dets and len(list((tmp_path / "clips").rglob("*.wav"))) == len(dets)


def _marked(mark: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if f"DAWNCHORUS_TEST_MARK={mark}".encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_a_killed_replay_leaves_no_worker_behind(tmp_path, archive, tone_bundle_path):
    import signal
    import time
    import uuid

    mark = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAWNCHORUS_TEST_MARK": mark}
    p = subprocess.Popen([sys.executable, "-m", "edge", "replay", str(archive), "--jobs", "2", "--bundle",
                          str(tone_bundle_path), "--public-key", str(tone_bundle_path.parent / "signing.pub"),
                          "--db", str(tmp_path / "d.db"), "--no-progress"], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_marked(mark)) < 3 and time.monotonic() < deadline:  # the replay, the fork server, workers
        time.sleep(0.05)
    assert len(_marked(mark)) >= 3
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 15
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _marked(mark) == []


def test_a_worker_gets_the_verified_bundle_and_imports_no_configuration_store_or_cryptography(tmp_path,
                                                                                                tone_bundle_path):
    """What a worker is sent (pickled ``Work``) carries the bundle verified by the replay and the job's plain
    values: a fresh interpreter scores a file from it, as the replay's own process does, without loading the
    configuration's classes (pydantic), the store or ``cryptography`` (a Dask worker's memory budget)."""
    import pickle

    path = tmp_path / "20240501_050000.flac"
    write(path, resample(tones_program(20.0), SR, 48000), 48000)
    work = Work(replay_job(tone_bundle_path)).to_send()
    assert work.bundle is not None
    code = ("import pickle, sys\nfrom edge.service.workers import analyse\n"
            f"unit, work = pickle.loads(open({str(tmp_path / 'work.pickle')!r}, 'rb').read())\n"
            "assert work.job is None\nres = analyse(unit, work)\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'cryptography', 'sqlite3')"
            " or m.startswith(('edge.config', 'edge.outputs')))\n"
            "print(res.windows, res.error, heavy)\n")
    here = analyse(Unit(0, str(path)), Work(replay_job(tone_bundle_path)))  # from the bundle's file, verified here
    assert here.windows == 1 + int((20 - 3) / 1.5) + 1
    for sent in (work, work.light):  # without the bundle, a worker loads and verifies the job's bundle file itself
        (tmp_path / "work.pickle").write_bytes(pickle.dumps((Unit(0, str(path)), sent)))
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        windows, error, heavy = r.stdout.split(maxsplit=2)
        assert (int(windows), error) == (here.windows, "None")
        if sent.bundle is not None:
            assert heavy.strip() == "[]"
        else:  # it verified the signature itself: cryptography, still no configuration or store
            assert "cryptography" in heavy and "pydantic" not in heavy and "edge.outputs" not in heavy, heavy


def test_a_result_is_let_go_once_taken():
    """results_in_order keeps no result it has handed on: a Dask worker keeps a unit's result while its future
    lives, so an archive of thousands of files would otherwise pile every result up on the workers."""
    import gc
    import weakref
    from concurrent.futures import Future

    class Result:
        pass

    made: list = []

    class Executor:
        def submit(self, unit, work):
            f: Future = Future()
            r = Result()
            made.append(weakref.ref(r))
            f.set_result(r)
            return f

    taken = 0
    for r in results_in_order(Executor(), range(5), None):
        del r
        taken += 1
        gc.collect()
        assert [w() is None for w in made[:taken]] == [True] * taken  # every result taken is gone
        assert all(w() is not None for w in made[taken:])  # the rest wait


def test_a_workers_peak_is_its_own_not_its_parents():
    """peak_rss_mb is the process's own high-water mark: ru_maxrss survives exec, so a worker started straight
    from a large process (``dask worker --no-nanny`` from the bench) reported its parent's size."""
    big = np.ones(200 * 1024 * 1024 // 8)  # this process: 200 MB more, touched
    code = "from edge.service.workers import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert big.sum() > 0 and 5 < float(out.stdout) < 150

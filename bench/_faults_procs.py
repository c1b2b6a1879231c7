"""bench/faults' process faults: kill -9 of replay and of the daemon, full disks, locked and read-only stores,
clock steps. Each function returns one row: kind, cases, passed, stored, received, lost, duplicated, notes.

Store-side counts: ``stored`` the detections in the store at the end, ``received`` those the
fault-free reference has (or, for the daemon, those it logged as detected), ``lost`` what the
reference has and the store has not (or what was stored once and is gone), ``duplicated`` 0 (the
store keys on the detection id).
"""
from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from fixtures_faults import (REPO, DaemonRig, Locker, SmallDisk, detected_lines, integrity_ok, proc_env,
                             replay_cmd, store_ids, tone_program)


def row(kind, cases, passed, stored, received, lost, duplicated=0, notes=""):
    return {"kind": kind, "cases": cases, "passed": passed, "stored": stored, "received": received, "lost": lost,
            "duplicated": duplicated, "notes": notes}


def reference(db: Path, recs: Path, bundle: Path) -> set[str]:
    r = subprocess.run(replay_cmd([recs], db, bundle), env=proc_env(), cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"reference replay failed:\n{r.stderr[-2000:]}")
    return store_ids(db)


def kill_replay(work: Path, bundle: Path, recs: Path, ref: set[str], kills: int, rng: random.Random, log) -> dict:
    """kill -9 replay at random moments; after each: the store intact, nothing it held gone; every few kills a
    full run must leave exactly the reference."""
    db = work / "kill-replay.db"
    passed, lost, full_runs = 0, 0, 0
    t0 = time.monotonic()
    r = subprocess.run(replay_cmd([recs], work / "timing.db", bundle), env=proc_env(), cwd=REPO, capture_output=True)
    whole = time.monotonic() - t0
    held: set[str] = set()
    for k in range(kills):
        p = subprocess.Popen(replay_cmd([recs], db, bundle), env=proc_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, whole * 1.05))
        p.send_signal(signal.SIGKILL)
        p.wait()
        ok = integrity_ok(db)
        now = store_ids(db)
        gone = held - now
        ok = ok and not gone and now <= ref
        lost += len(gone)
        held = now
        if (k + 1) % 5 == 0:  # complete the run: exactly the reference
            subprocess.run(replay_cmd([recs], db, bundle), env=proc_env(), cwd=REPO, capture_output=True)
            final = store_ids(db)
            ok = ok and final == ref
            lost += len(ref - final)
            full_runs += 1
            for suffix in ("", "-wal", "-shm", ".journal"):
                Path(str(db) + suffix).unlink(missing_ok=True)
            held = set()
        passed += ok
        if not ok:
            log(f"  kill-replay case {k}: integrity {integrity_ok(db)}, {len(gone)} stored detections gone")
    return row("kill -9 replay", kills, passed, len(ref) * full_runs, len(ref) * full_runs, lost,
               notes=f"{full_runs} completing runs equal the reference; replay takes {whole:.1f} s")


def kill_daemon(work: Path, bundle: Path, kills: int, rng: random.Random, log) -> dict:
    """kill -9 the live daemon at random moments (after it is ready); the next start keeps everything stored."""
    rig = DaemonRig(work / "kill-daemon", bundle)
    db = rig.dir / "detections.db"
    program = tone_program(40, seed=7)
    passed, lost, stored_total = 0, 0, 0
    for k in range(kills):
        cmd, env = rig.command(program, db)
        before = store_ids(db)
        logf = rig.dir / f"kill{k}.log"
        with open(logf, "w") as f:
            p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=f)
        end = time.monotonic() + 60
        while time.monotonic() < end and "ready:" not in logf.read_text() and p.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 2.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        after_kill = store_ids(db)
        ok = integrity_ok(db) and before <= after_kill
        r = rig.run(tone_program(1, seed=100 + k), db)  # the next start (journal replay, migrations, ...)
        after = store_ids(db)
        ok = ok and r.returncode == 0 and after_kill <= after and "Traceback" not in r.stderr
        lost += len(after_kill - after) + len(before - after_kill)
        stored_total = len(after)
        passed += ok
        if not ok:
            log(f"  kill-daemon case {k}: exit {r.returncode}: {r.stderr[-300:]}")
    return row("kill -9 daemon", kills, passed, stored_total, stored_total, lost,
               notes="store-side: every detection stored before a kill is there after the next start")


def _small_disk(path: Path, kb: int) -> SmallDisk | None:
    try:
        return SmallDisk(path, kb)
    except OSError:
        return None


def disk_full_store(work: Path, bundle: Path, recs_small: Path, ref_small: set[str], log) -> dict:
    """The store's disk fills during a replay and during a daemon run: the journal keeps them, exit 3, the
    next run stores them."""
    cases, passed, lost, stored = 0, 0, 0, 0
    disk = _small_disk(work / "disk-store", 1024)
    if disk is None:
        return row("disk full (store)", 0, 0, 0, 0, 0, notes="skipped: cannot mount a tmpfs (not root)")
    try:
        db = disk.path / "d.db"
        subprocess.run(replay_cmd([recs_small], db, bundle), env=proc_env(), cwd=REPO, capture_output=True)
        con = sqlite3.connect(db)  # the store and its journal exist (a first run); start empty
        con.execute("DELETE FROM detections")
        con.commit()
        con.close()
        p = subprocess.Popen(replay_cmd([recs_small], db, bundle, "--realtime"), env=proc_env(), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 60
        while not Path(str(db) + "-wal").exists() and time.monotonic() < end:  # the store is open
            time.sleep(0.05)
        time.sleep(0.5)
        disk.fill()
        err = p.communicate(timeout=300)[1]
        cases += 1
        ok1 = p.returncode == 3 and "Traceback" not in err
        disk.unfill()
        subprocess.run(replay_cmd([recs_small], db, bundle), env=proc_env(), cwd=REPO, capture_output=True)
        got = store_ids(db)
        ok1 = ok1 and got == ref_small
        passed += ok1
        lost += len(ref_small - got)
        stored += len(got)
        if not ok1:
            log(f"  disk-full replay: exit {p.returncode}: {err[-400:]}")

        rig = DaemonRig(work / "disk-daemon", bundle, device_id="diskd")
        ddb = disk.path / "live.db"
        rig.run(tone_program(1, seed=9), ddb)  # the store and its journal's reserved space exist
        disk.fill(keep_kb=40)
        r = rig.run(tone_program(6, seed=11), ddb)
        from edge.outputs.journal import Journal, journal_path

        waiting = {d.id for d in Journal(journal_path(ddb)).read()}
        logged = detected_lines(r.stderr)
        disk.unfill()
        r2 = rig.run(tone_program(1, seed=12), ddb)
        got = store_ids(ddb)
        cases += 1
        ok2 = r.returncode == 3 and r2.returncode == 0 and waiting <= got and len(waiting) >= 4 and \
            r.stderr.count("cannot store detections in") == 1 and "Traceback" not in r.stderr + r2.stderr
        passed += ok2
        lost += len(waiting - got)
        stored += len(waiting) + logged
        if not ok2:
            log(f"  disk-full daemon: exit {r.returncode}/{r2.returncode}, {len(waiting)} waiting: {r.stderr[-400:]}")
    finally:
        disk.close()
    return row("disk full (store)", cases, passed, stored, stored, lost,
               notes="replay and daemon; journal replayed at the next start; one error line, exit 3")


def disk_full_clips(work: Path, bundle: Path, log) -> dict:
    """Clips and the store share a 2 MB disk: clips yield (floor store.reserve_mb), every detection is stored."""
    disk = _small_disk(work / "disk-clips", 2048)
    if disk is None:
        return row("disk full (clips)", 0, 0, 0, 0, 0, notes="skipped: cannot mount a tmpfs (not root)")
    try:
        rig = DaemonRig(work / "clips-daemon", bundle, device_id="clipsd")
        db = disk.path / "detections.db"
        r = rig.run(tone_program(10, seed=3), db, clips={"enabled": True, "dir": str(disk.path / "clips")},
                    store={"reserve_mb": 0.6})
        logged, got = detected_lines(r.stderr), store_ids(db)
        clips = list((disk.path / "clips").rglob("*.wav"))
        parts = list((disk.path / "clips").rglob("*.part"))
        ok = r.returncode == 0 and len(got) == logged and not parts and 0 < len(clips) < logged and \
            "Traceback" not in r.stderr
        if not ok:
            log(f"  disk-full clips: exit {r.returncode}, {len(got)} stored of {logged}: {r.stderr[-400:]}")
        return row("disk full (clips)", 1, int(ok), len(got), logged, max(0, logged - len(got)),
                   notes=f"{len(clips)} clips written, the rest yielded; free {disk.free_kb()} kB (floor 600)")
    finally:
        disk.close()


def store_refuses(work: Path, bundle: Path, recs_small: Path, ref_small: set[str], log) -> list[dict]:
    """A store locked by another process beyond the busy timeout, and a read-only (chattr +i) store."""
    out = []
    for kind in ("store locked", "store read-only"):
        db = work / f"{kind.replace(' ', '-')}.db"
        from edge.outputs.store import Store

        Store(db).close()
        locker = None
        if kind == "store locked":
            locker = Locker(db)
        else:
            if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
                out.append(row(kind, 0, 0, 0, 0, 0, notes="skipped: chattr +i not supported here"))
                continue
        try:
            r = subprocess.run(replay_cmd([recs_small], db, bundle), env=proc_env(), cwd=REPO, capture_output=True,
                               text=True)
        finally:
            if locker:
                locker.release()
            else:
                subprocess.run(["chattr", "-i", str(db)], capture_output=True)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        ok = r.returncode == 3 and "Traceback" not in r.stderr and len(errors) == 1 and str(db) in errors[0]
        r2 = subprocess.run(replay_cmd([recs_small], db, bundle), env=proc_env(), cwd=REPO, capture_output=True)
        got = store_ids(db)
        ok = ok and r2.returncode == 0 and got == ref_small
        if not ok:
            log(f"  {kind}: exit {r.returncode}: {r.stderr[-400:]}")
        out.append(row(kind, 1, int(ok), len(got), len(ref_small), len(ref_small - got),
                       notes="replay exits 3 naming the store; the next run stores the journal"))
    return out


def clock_steps(work: Path, bundle: Path, log) -> dict:
    """The wall clock steps forward and back under a running daemon (injected offset), then a restart with the
    clock an hour behind the store: steps recorded, no time moved, no id repeated, nothing dropped."""
    rig = DaemonRig(work / "clock-daemon", bundle, device_id="clockd")
    db = rig.dir / "detections.db"
    offset = rig.dir / "offset"
    cases, passed, logged_total = 0, 0, 0
    for step in (3600, -3600):
        offset.write_text("0")
        cmd, env = rig.command(tone_program(60, seed=21 if step > 0 else 22), db,
                               env_extra={"DAWNCHORUS_CLOCK_OFFSET_FILE": str(offset)})
        t0 = time.time()
        p = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
        lines = []
        for line in p.stderr:
            lines.append(line)
            if " detected " in line:
                break
        offset.write_text(str(step))
        lines += p.stderr.readlines()
        code = p.wait(300)
        t1 = time.time()
        err = "".join(lines)
        con = sqlite3.connect(db)
        gaps = [g[0] for g in con.execute("SELECT reason FROM gaps WHERE reason LIKE 'clock step%'")]
        con.close()
        cases += 1
        logged_total += detected_lines(err)
        ok = code == 0 and sum(f"{step:+d}." in g for g in gaps) == 1 and "Traceback" not in err
        passed += ok
        if not ok:
            log(f"  clock step {step:+d}: exit {code}, gaps {gaps}: {err[-400:]}")
    # a restart with the wall clock an hour behind what the store holds (NTP not yet synced after a reboot)
    offset.write_text("-7200")
    before = store_ids(db)
    cmd, env = rig.command(tone_program(6, seed=23), db, env_extra={"DAWNCHORUS_CLOCK_OFFSET_FILE": str(offset)})
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    logged = detected_lines(r.stderr)
    logged_total += logged
    after = store_ids(db)
    cases += 1
    # every detection it logged is a new row (none dropped as a repeated id), and it said it continued the timeline
    # (the ALSA file device has no clock: its block times trail by its backlog, so times are not compared here)
    ok = r.returncode == 0 and len(after - before) == logged and "behind the newest time in the store" in r.stderr
    passed += ok
    if not ok:
        log(f"  restart behind the store: exit {r.returncode}, {len(after - before)} new of {logged}")
    got = store_ids(db)
    return row("clock steps", cases, passed, len(got), logged_total, max(0, logged_total - len(got)),
               notes="+1 h and -1 h under a running daemon, then a start 2 h behind the store")

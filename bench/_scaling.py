"""Part 3 of bench/replay: ``python -m edge replay`` processes with --jobs 1, --jobs 2 and --dask, measured so
that a machine shared with other work still gives figures worth comparing.

Each configuration runs ``repeat`` times, the configurations alternating
(round 1: jobs 1, jobs 2, dask; round 2: the same...), so a change in the
machine's load falls on all of them alike. Per run:

- the replay's own time (its summary) and the process's wall time;
- CPU seconds: the replay process's own (getrusage of the reaped child) plus
  what its workers report (the units, and a local worker's start); CPU time
  is what other work on the machine disturbs least;
- the cores it got (CPU seconds / replay seconds) and the CPU other processes
  used meanwhile (``/proc/stat`` busy time minus ours, in cores): the load
  the run competed with;
- peak RSS of the replay process (VmHWM, polled) and of each worker (its own
  getrusage, reported through the replay).

Speed-ups are paired within a round (jobs 1 and jobs 2 of the same round)
and the median of the rounds is reported, with the spread.
"""
from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)] if str(REPO) not in sys.path else []
from edge.procstat import status_mb  # noqa: E402
#: the Dask workers' settings docs/scaling.md gives: the statistical profiler off (it samples every thread
#: 100 times a second), one BLAS thread, one malloc arena (Dask's threads and the task's then share their freed
#: memory: 3 to 4 MB less); not the allocator's thresholds (the first unit sets them, edge.heap.configure;
#: set from the start they keep Dask's own start-up garbage too, 3 MB more)
DASK_WORKER_ENV = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False", "OPENBLAS_NUM_THREADS": "1",
                   "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}


def busy_s() -> float:
    """CPU seconds every core of the machine has been busy since boot (/proc/stat; 0 where there is none)."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def replay_process(paths: list[str], db: Path, extra: list[str]) -> dict:
    """A ``python -m edge -v replay`` process and what it competed with (see the module's doc)."""
    cmd = [sys.executable, "-m", "edge", "-v", "replay", *paths, "--db", str(db), "--format", "csv",
           "--out", os.devnull, "--no-progress", *extra]
    errf = tempfile.TemporaryFile("w+")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0, busy0 = os.getloadavg()[0], busy_s()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=errf, text=True)
    hwm = 0.0
    while p.poll() is None:
        hwm = max(hwm, status_mb("VmHWM", p.pid) or 0.0)
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    busy = busy_s() - busy0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the replay process (its workers are not reaped through it)
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    errf.seek(0)
    err = errf.read()
    m = re.search(r"of audio in ([\d.]+) s, (\d+)x realtime", err)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"replay failed ({p.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    w = re.search(r"analysed by (\d+) worker process\(es\), peak RSS ([\d, ]+) MB, ([\d.]+) CPU s", err)
    workers = [float(v) for v in w.group(2).split(",")] if w else []
    worker_cpu = float(w.group(3)) if w else 0.0
    units = re.search(r"(\d+) unit\(s\) of work \((\d+) file\(s\), (\d+) split", err)
    replay_s, cpu = float(m.group(1)), own + worker_cpu
    return {"process_wall_s": wall, "replay_s": replay_s, "x_realtime": float(m.group(2)),
            "audio_s": float(m.group(2)) * replay_s, "parent_rss_mb": hwm, "worker_rss_mb": workers,
            "units": int(units.group(1)) if units else 1, "process_cpu_s": own, "workers_cpu_s": worker_cpu,
            "cpu_s": cpu, "cores_used": cpu / wall, "others_cores": max(0.0, busy - cpu) / wall,
            "loadavg": load0}


def start_dask(n: int, tmp: Path) -> tuple[str, list[subprocess.Popen]]:
    """``dask scheduler`` and ``n`` one-thread ``dask worker --no-nanny`` processes on 127.0.0.1, set up as
    docs/scaling.md says (DASK_WORKER_ENV; no nanny process beside each worker: a service manager restarts
    workers there)."""
    bindir = Path(sys.executable).parent
    sched_file = tmp / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", ":0", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    for _ in range(100):
        if sched_file.exists():
            break
        time.sleep(0.1)
    address = json.loads(sched_file.read_text())["address"]
    for _ in range(n):
        procs.append(subprocess.Popen([str(bindir / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                                       "--memory-limit", "0", "--no-dashboard", "--host", "127.0.0.1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**env, **DASK_WORKER_ENV},
                                      start_new_session=True))  # as separate services or machines are
    from distributed import Client

    with Client(address, timeout=30) as c:
        c.wait_for_workers(n, timeout=60)
    return address, procs


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _spread(xs: list[float]) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f}" if len(xs) > 1 else "-"


def run_processes(sets: dict, bargs: list[str], tmp: Path, *, repeat: int, cluster: bool) -> dict:
    """Every configuration ``repeat`` times, alternating; the runs and their medians."""
    configs = [("archive", 1), ("archive", 2)] + ([("archive", "dask")] if cluster else []) + \
              [("long file", 1), ("long file", 2)]
    runs: dict[str, list[dict]] = {}
    procs: list[subprocess.Popen] = []
    address = None
    try:
        if cluster:
            try:
                address, procs = start_dask(2, tmp)
            except Exception as exc:  # noqa: BLE001 - reported, the rest of the bench stands
                runs["archive, --dask (2 workers)"] = [{"error": str(exc)}]
                configs.remove(("archive", "dask"))
        for r in range(repeat):
            for what, jobs in configs:
                paths = sets["archive"] if what == "archive" else sets["long"]
                name = f"{what}, --dask (2 workers)" if jobs == "dask" else f"{what}, --jobs {jobs}"
                extra = ["--dask", str(address)] if jobs == "dask" else ["--jobs", str(jobs)]
                db = tmp / f"{what[:4]}_{jobs}_{r}.db"
                runs.setdefault(name, []).append(replay_process(paths, db, [*bargs, *extra]))
    finally:
        stop_all(procs)
    return runs


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per configuration: medians; speed-ups paired by round against --jobs 1 of the same input."""
    out: dict = {}
    for name, rs in runs.items():
        if any("error" in r for r in rs):
            out[name] = {"error": rs[0].get("error")}
            continue
        what = name.split(",")[0]
        n_cores = 1 if name.endswith("--jobs 1") else 2
        base = runs.get(f"{what}, --jobs 1", [])
        speedups = [b["replay_s"] / r["replay_s"] for b, r in zip(base, rs)] if base else []
        cpu_ratio = [r["cpu_s"] / b["cpu_s"] for b, r in zip(base, rs)] if base else []
        audio = rs[0]["audio_s"]
        out[name] = {
            "repeats": len(rs), "units": rs[0]["units"],
            "replay_s": _median([r["replay_s"] for r in rs]),
            "x_realtime": _median([r["x_realtime"] for r in rs]),
            "x_realtime_per_core": _median([r["x_realtime"] for r in rs]) / n_cores,
            "speedup": _median(speedups), "speedups": speedups,
            "cpu_s": _median([r["cpu_s"] for r in rs]),
            "x_realtime_per_cpu_s": audio / _median([r["cpu_s"] for r in rs]),
            "cpu_vs_one_job": _median(cpu_ratio),
            "cores_used": _median([r["cores_used"] for r in rs]),
            "others_cores": _median([r["others_cores"] for r in rs]),
            "loadavg": _median([r["loadavg"] for r in rs]),
            "parent_rss_mb": max(r["parent_rss_mb"] for r in rs),
            "worker_rss_mb": max((m for r in rs for m in r["worker_rss_mb"]), default=0.0),
            "runs": rs,
        }
    j2, dk = out.get("archive, --jobs 2", {}), out.get("archive, --dask (2 workers)", {})
    if "replay_s" in j2 and "replay_s" in dk:
        pairs = [a["replay_s"] / b["replay_s"] for a, b in zip(j2["runs"], dk["runs"])]
        out["cluster_vs_jobs"] = {"median": _median(pairs), "rounds": pairs,
                                  "cpu": j2["cpu_s"] / dk["cpu_s"]}
    return out


def report(summary: dict, sets: dict) -> None:
    n = len(sets["archive"])
    print(f"\n3. python -m edge replay processes: an archive of {n} FLAC files (48 kHz, 5 min each) and one "
          f"{sets['long_s'] / 60:.0f}-min file; each configuration {next(iter(summary.values())).get('repeats', 1)}"
          " times, alternating; medians (speed-ups paired by round against --jobs 1)")
    print(f"   {'run':<28} {'units':>5} {'replay s':>8} {'x rt':>6} {'per core':>8} {'speed-up (range)':>17} "
          f"{'CPU s':>6} {'x rt/CPU s':>10} {'CPU/1 job':>9} {'cores got':>9} {'others':>6} {'load':>5} "
          f"{'parent MB':>9} {'worker MB':>9}")
    for name, r in summary.items():
        if name == "cluster_vs_jobs":
            continue
        if "error" in r:
            print(f"   {name:<28} error: {r['error']}")
            continue
        sp = f"{r['speedup']:.2f}x ({_spread(r['speedups'])})" if r["speedups"] else "-"
        wk = f"{r['worker_rss_mb']:.0f}" if r["worker_rss_mb"] else "-"
        print(f"   {name:<28} {r['units']:5d} {r['replay_s']:8.2f} {r['x_realtime']:6.0f} {r['x_realtime_per_core']:8.0f} "
              f"{sp:>17} {r['cpu_s']:6.1f} {r['x_realtime_per_cpu_s']:10.0f} {r['cpu_vs_one_job']:9.2f} "
              f"{r['cores_used']:9.2f} {r['others_cores']:6.2f} {r['loadavg']:5.1f} {r['parent_rss_mb']:9.0f} {wk:>9}")
    print("   cores got: the run's CPU s over its wall time; others: cores other processes kept busy meanwhile; "
          "CPU/1 job: CPU s against --jobs 1 on the same input (the extra work of going parallel)")
    cv = summary.get("cluster_vs_jobs")
    print("   targets: 2 jobs >= 1.8x one job; the cluster within 10% of --jobs 2; peak RSS per worker <= 100 MB")
    if cv:
        print(f"   cluster / --jobs 2 throughput: {cv['median']:.2f} (rounds {', '.join(f'{x:.2f}' for x in cv['rounds'])});"
              f" by CPU time (work per audio): {cv['cpu']:.2f}")

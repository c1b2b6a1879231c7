"""Replay on a Dask cluster (edge/service/cluster.py): a local cluster of 2 worker processes started here;
``--dask ADDRESS`` stores exactly what ``--jobs 1`` stores; no cluster at the address is a one-line error."""
from __future__ import annotations

import os
import socket

import pytest
from test_parallel import ROOT, archive, real_archive, replay, table  # noqa: F401 - archive, real_archive: fixtures

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """2 worker processes of one thread each, on 127.0.0.1, importing this checkout's edge."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    mp.setenv("OPENBLAS_NUM_THREADS", "1")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, worker_dashboard_address=None) as c:
        yield c.scheduler_address
    mp.undo()


def test_dask_stores_exactly_what_one_job_stores(tmp_path, archive, tone_bundle_path, cluster):  # noqa: F811
    key = tone_bundle_path.parent / "signing.pub"
    common = ["--bundle", tone_bundle_path, "--public-key", key, "--format", "csv"]
    one = replay("replay", archive, *common, "--db", tmp_path / "one.db", "--jobs", 1, "--out", tmp_path / "1.csv")
    assert one.returncode == 1, one.stderr  # the broken file is refused, the rest stored
    r = replay("-v", "replay", archive, *common, "--db", tmp_path / "dask.db", "--dask", cluster,
               "--out", tmp_path / "d.csv")
    assert r.returncode == 1, r.stderr
    assert f"on Dask {cluster}: 2 worker(s), 2 thread(s)" in r.stderr
    assert "1 split into pieces" in r.stderr
    for name in ("detections", "effort"):
        rows = table(tmp_path / "one.db", name)
        assert rows and table(tmp_path / "dask.db", name) == rows, name
    assert "analysed by 2 worker process(es)" in r.stderr  # both workers, not the replay's own process


def test_dask_with_a_segment_bundle_stores_what_one_job_stores(tmp_path, real_archive, segment_run,  # noqa: F811
                                                                cluster):
    """The cluster's units are those of --jobs: a long file cut between a segment model's chunks."""
    common = ["--bundle", segment_run.bundle_path, "--public-key", segment_run.public_key_path, "--format", "csv",
              "--out", os.devnull]
    one = replay("replay", real_archive, *common, "--db", tmp_path / "one.db", "--jobs", 1)
    assert one.returncode == 0, one.stderr
    r = replay("-v", "replay", real_archive, *common, "--db", tmp_path / "dask.db", "--dask", cluster)
    assert r.returncode == 0, r.stderr
    assert "4 unit(s) of work (2 file(s), 1 split into pieces)" in r.stderr
    for name in ("detections", "effort"):
        rows = table(tmp_path / "one.db", name)
        assert rows and table(tmp_path / "dask.db", name) == rows, name


def test_workers_keep_the_model_and_are_not_sent_it_again(tmp_path, archive, tone_bundle_path, cluster):  # noqa: F811
    """A second replay on the same workers sends them the job without the bundle (they hold its model: a worker
    given the bundle anew would hold two copies at its peak) and stores the same rows."""
    from edge.contract.bundle import load_bundle
    from edge.contract.signing import load_public_key

    key = tone_bundle_path.parent / "signing.pub"
    common = ["-v", "replay", archive, "--bundle", tone_bundle_path, "--public-key", key, "--format", "csv",
              "--dask", cluster]
    first = replay(*common, "--db", tmp_path / "a.db", "--out", tmp_path / "a.csv")
    assert first.returncode == 1, first.stderr
    sha = load_bundle(tone_bundle_path, load_public_key(key)).sha256
    with distributed.Client(cluster) as client:
        held = client.run(lambda: sorted(b.sha256 for b in __import__("edge.service.workers").service.workers
                                         ._BUNDLES.values()))
    assert len(held) == 2 and all(v == [sha] for v in held.values()), held
    second = replay(*common, "--db", tmp_path / "b.db", "--out", tmp_path / "b.csv")
    assert second.returncode == 1, second.stderr
    assert "holds model" in second.stderr and "not sent again" in second.stderr
    for name in ("detections", "effort"):
        rows = table(tmp_path / "a.db", name)
        assert rows and table(tmp_path / "b.db", name) == rows, name


def test_no_cluster_at_the_address_is_a_one_line_error(tmp_path, tone_bundle_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = replay("replay", "--dask", f"tcp://127.0.0.1:{port}", "--db", tmp_path / "d.db", "--bundle",
               tone_bundle_path, "--public-key", tone_bundle_path.parent / "signing.pub")
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in err[0], r.stderr

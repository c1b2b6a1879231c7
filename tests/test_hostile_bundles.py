"""Hostile bundles: refused with a one-line reason, cheaply, before anything is inflated.

In process (``parse_bundle``, the code every path uses), each case must
raise ``BundleError`` whose single line names the bundle and contains the
expected phrase, and the Python memory it allocated on the way (tracemalloc
peak) must stay far below what the archive claims. A few go through real
processes too: ``replay --bundle`` and ``check-config`` exit 2 with one line.
"""
from __future__ import annotations

import subprocess
import sys
import tracemalloc
from functools import lru_cache

import pytest

from edge.contract.bundle import BundleError, parse_bundle
from hostile_inputs import REPO, bundle_cases

PEAK_LIMIT = 16 << 20  # bytes of Python memory a refusal may cost (a good bundle is about 3 MB)


@lru_cache(maxsize=1)
def _cases_and_keys():
    """A team key pair, a good bundle signed with it, and the hostile cases made from it (once per session)."""
    import tempfile
    from pathlib import Path

    from fixtures_updates import Keys, make_bundle

    keys = Keys(Path(tempfile.mkdtemp(prefix="hostile-keys-")))
    good = make_bundle(keys.private, "2.0")
    return good, keys, {c.name: c for c in bundle_cases(good, keys.private)}


def _names():
    return list(_cases_and_keys()[2])


@pytest.fixture(scope="module")
def hostile():
    return _cases_and_keys()


def pytest_generate_tests(metafunc):
    if "bundle_case" in metafunc.fixturenames:
        names = _names()
        metafunc.parametrize("bundle_case", names, ids=names)


def test_good_bundle_still_loads(hostile):
    good, keys, _ = hostile
    assert parse_bundle(good, keys.public).version == "2.0"


def test_each_hostile_bundle_is_refused_cheaply(bundle_case, hostile):
    _, keys, cases = hostile
    case = cases[bundle_case]
    data = case.build()
    tracemalloc.start()
    try:
        with pytest.raises(BundleError) as info:
            parse_bundle(data, keys.public, path="hostile.bundle")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert msg.startswith("hostile.bundle: ") and case.phrase in msg, msg
    assert peak < PEAK_LIMIT, f"{peak / 2**20:.1f} MB allocated refusing {bundle_case}"


PROCESS_CASES = ["deflate bomb of 512 MB", "duplicate model member", "unpinned extra member", "hop is a string",
                 "version is a number", "thresholds are a list"]


@pytest.mark.parametrize("name", PROCESS_CASES)
def test_replay_with_a_hostile_bundle_exits_2_with_one_line(name, hostile, tmp_path):
    _, keys, cases = hostile
    b = tmp_path / "hostile.bundle"
    b.write_bytes(cases[name].build())
    r = subprocess.run([sys.executable, "-m", "edge", "replay", "--no-db", "--bundle", str(b), "--public-key",
                        str(keys.public_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(b) in lines[0] and cases[name].phrase in lines[0], r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{bundle: {b}, public_key: {keys.public_path}}}\n")
    r = subprocess.run([sys.executable, "-m", "edge", "check-config", str(cfg)], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "model.bundle" in r.stderr, r.stderr

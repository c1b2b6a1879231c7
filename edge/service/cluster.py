"""Replay on a Dask cluster: the same units and workers' analysis as ``--jobs``, on other machines.

``python -m edge replay --dask tcp://scheduler:8786 PATH...`` connects to a
running Dask scheduler (``docs/scaling.md``: start one and its workers on
machines with the ``edge`` extra installed), submits every unit of
``edge.service.parallel`` to it, and takes the results back in order into
this process's store: the workers never open the store, so it need not be
reachable from them (only the audio files are, at the same paths). The
bundle, verified here, travels with the work, scattered once to every
worker (which runs the model's self-test on its own interpreter). Dask rather than Ray: pure Python from PyPI on aarch64 and x86-64
alike, a 2 MB install, and a scheduler and workers started with one
command each; the work here is independent tasks returning small results,
which is all it needs (``pip install 'dawnchorus[cluster]'``).
"""
from __future__ import annotations

import dataclasses
import logging
import weakref
from typing import Any, Optional

from edge.service.workers import Unit, Work, _warm, analyse, held_bundle

log = logging.getLogger(__name__)


DASK_BLOCK_S = 1.0  # a Dask worker decodes 1 s at a time (WorkerJob.block_s): 6 MB lower at its peak than 8 s


def _for_dask(work: Work) -> Work:
    """``work`` as a Dask worker gets it: shorter blocks (Dask's own 62 to 66 MB leave less room)."""
    return work.replaced(spec=dataclasses.replace(work.spec, block_s=DASK_BLOCK_S))


class ClusterError(RuntimeError):
    """The cluster cannot be used (not installed, unreachable, no workers)."""


class DaskExecutor:
    """Units on the workers of the Dask scheduler at ``address``."""

    def __init__(self, address: str, work: Work | None = None, *, timeout_s: float = 10.0):
        try:
            from distributed import Client
        except ImportError:
            raise ClusterError("--dask needs Dask distributed: pip install 'dawnchorus[cluster]'") from None
        try:
            self.client = Client(address, timeout=timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        try:
            self.client.wait_for_workers(1, timeout=timeout_s)
        except (OSError, TimeoutError):
            self.client.close()
            raise ClusterError(f"the Dask scheduler at {address} has no workers") from None
        threads = self.client.nthreads()
        self.jobs = max(1, sum(threads.values()))
        self.description = f"Dask {address}: {len(threads)} worker(s), {self.jobs} thread(s)"
        self._work: Optional[tuple[Work, Any]] = None  # (work, its scattered copy)
        self._futures: Any = weakref.WeakSet()  # to cancel: a result is dropped once taken (results_in_order)
        self._warm: list[Any] = []
        if work is not None:  # every worker loads the model now, while the caller loads its own
            scattered = self._send(work)
            self._warm = [self.client.submit(_warm, scattered, workers=[w], allow_other_workers=False, pure=False)
                          for w in threads]  # held: a released future's task may be cancelled

    def _send(self, work: Work) -> Any:
        """The work with its verified bundle once to every worker, not with every unit; returns the scattered
        copy. Workers that all hold that bundle already (an earlier replay) get the work without it."""
        if self._work is None or self._work[0] is not work:
            full = _for_dask(work.to_send())
            sha = full.bundle.sha256 if full.bundle is not None else None
            try:
                held = self.client.run(held_bundle, full.spec) if sha else {}
            except Exception:  # noqa: BLE001 - a worker that cannot answer gets the bundle
                held = {}
            if held and all(v == sha for v in held.values()):
                log.info("every worker holds model %s already: not sent again", full.bundle.version)
                self._work = (work, full.light)
            else:
                self._work = (work, self.client.scatter(full, broadcast=True, hash=False))
        return self._work[1]

    def submit(self, unit: Unit, work: Work):
        scattered = self._send(work) if self._work is None or self._work[0].spec != work.spec else self._work[1]
        f = self.client.submit(analyse, unit, scattered, pure=False)
        self._futures.add(f)
        return f

    def close(self, cancel: bool = False) -> None:
        if cancel:
            self.client.cancel(list(self._futures) + self._warm)
        self._futures, self._warm = weakref.WeakSet(), []
        self.client.close()

"""The feature pages of a site (and the attention heads' and imported records'), rendered batch
file by batch file in a pool of processes.

Pages are independent: each task is one batch file of the cache (a dictionary index and a
path), which a worker reads, renders and writes itself, returning only the batch's index
rows, so the main process holds no FeatureData or HeadData and sends no big objects. Results are taken
in task order, so the rows (and the first error) come out as in a sequential render, and the
site is byte-identical. A worker's SitegenError is raised again as the same one-line error.

Workers start by "forkserver" (else "spawn"), never by forking this process: ``sitegen build``
renders in the process that ran torch, whose threads (and CUDA context) a forked child must
not inherit, and even ``sitegen render`` runs the BLAS threads numpy starts on import. The
fork server is a fresh single-threaded interpreter; each worker, forked from it, imports the
renderer itself (0.5 s, in parallel) and the main module, so a script calling ``render_site``
with a pool needs the ``if __name__ == "__main__":`` guard, as with any multiprocessing.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Protocol

from sitegen.errors import SitegenError
from sitegen.render.index_data import Row

MIN_POOL_PAGES = 64  # fewer pages render in-process: starting workers would cost more


class BatchWriter(Protocol):
    def write_batch(self, index: int, path: Path) -> list[Row]: ...


Task = tuple[int, Path]  # (dictionary index, batch file)


class PagePool(Protocol):
    """Workers elsewhere (the Ray executor's tasks) that render batch files, rows in task order."""

    def write_batches(self, tasks: list[Task], make_writer: Callable[[], BatchWriter]) -> Iterator[list[Row]]: ...


def available_cpus() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pool_size(n_pages: int, n_tasks: int, workers: int | None) -> int:
    """How many worker processes render ``n_tasks`` batch files (1: none, render in-process).
    ``workers`` None: one per core, or 1 when the site has fewer than MIN_POOL_PAGES pages."""
    if workers is None:
        workers = available_cpus() if n_pages >= MIN_POOL_PAGES else 1
    return max(1, min(workers, n_tasks))


def start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


_worker: BatchWriter | None = None  # in a worker process: its own writer, made once


def _start_worker(make_writer: Callable[[], BatchWriter]) -> None:
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _worker = make_writer()


def _write_batch(index: int, path: Path) -> list[Row]:
    assert _worker is not None, "worker not initialised"
    return _worker.write_batch(index, path)


def render_batches(
    tasks: list[Task],
    local: BatchWriter,
    make_writer: Callable[[], BatchWriter],
    n_pages: int,
    workers: int | None = None,
    pool: PagePool | None = None,
) -> Generator[list[Row], None, None]:
    """Each task's index rows, in task order: rendered by ``pool`` when given, else by ``local``
    in this process when ``pool_size`` is 1, else by workers that each make their own writer
    with ``make_writer`` (picklable). Close the iterator to stop early: pending tasks are
    cancelled and running ones finished before it returns, so no worker writes afterwards."""
    if pool is not None:
        yield from pool.write_batches(tasks, make_writer)
        return
    n_workers = pool_size(n_pages, len(tasks), workers)
    if n_workers == 1:
        for index, path in tasks:
            yield local.write_batch(index, path)
        return
    context = multiprocessing.get_context(start_method())
    processes = ProcessPoolExecutor(n_workers, mp_context=context, initializer=_start_worker, initargs=(make_writer,))
    try:
        futures = [processes.submit(_write_batch, index, path) for index, path in tasks]
        for future in futures:
            try:
                rows = future.result()
            except SitegenError as err:  # as raised in the worker, without its remote traceback
                raise SitegenError(err.format_message()) from None
            except BrokenProcessPool:
                raise SitegenError(
                    "render: a worker process rendering feature pages died (out of memory, or see its error above)"
                ) from None
            yield rows
    finally:
        processes.shutdown(wait=True, cancel_futures=True)

"""Where a build's shards run: ``LocalExecutor`` (this process, in order) or ``RayExecutor``
(actors on a Ray cluster that keep the model and dictionaries loaded between shards).

Both run the same stage functions (``stage(sources, plan, k) -> dict``) on the same shards, and
each shard's output is a file in storage whose bytes depend only on the shard, so the cache
and the site come out the same on either. Results are taken back in shard order whatever
order the workers finish in. Ray retries a task whose worker died (and restarts the actor);
a retried shard finds its own or its first attempt's finished output.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from sitegen.compute.shard_files import BuildPlan
from sitegen.config import Config, ExecutorConfig
from sitegen.errors import SitegenError
from sitegen.sources import Sources

Stage = Callable[[Sources, BuildPlan, int], dict]
RETRIES = 3  # attempts after the first of a task whose worker died (its actor restarts each time)


class Executor(Protocol):
    def map(self, name: str, fn: Stage, bp: BuildPlan, items: list[int], progress: bool) -> list[dict]:
        """``fn(sources, bp, k)`` for each k, results in the order of ``items``."""
        ...


def bar(name: str, n: int, progress: bool) -> tqdm:
    """Shards done / total of one stage, with its rate and ETA."""
    return tqdm(total=n, desc=name, unit="shard", disable=not progress or n < 2, smoothing=0)


class LocalExecutor:
    """Every shard in this process, in order (pages: in the render's own process pool)."""

    def __init__(self, sources: Sources):
        self.sources = sources

    def page_pool(self) -> None:
        """Pages render in the render's own process pool."""
        return None

    def close(self) -> None:
        """Nothing to stop."""

    def map(self, name: str, fn: Stage, bp: BuildPlan, items: list[int], progress: bool) -> list[dict]:
        out = []
        with bar(name, len(items), progress) as b:
            for k in items:
                out.append(fn(self.sources, bp, k))
                b.update()
        return out


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SitegenError(
            'executor.kind: "ray" needs Ray, which is not installed: pip install "sitegen-dashboards[ray]"'
        ) from None
    return ray


class ShardWorker:
    """A Ray actor: loads the sources once, then runs shards of any stage."""

    def __init__(self, config: Config):
        from sitegen.sources import load_sources

        logging.getLogger("sitegen").setLevel(logging.WARNING)
        self.sources = load_sources(config)
        self.writer: tuple[str, Any] | None = None  # (render key, its page writer)

    def run(self, fn: Stage, bp: BuildPlan, k: int) -> tuple[dict, float]:
        t0 = time.perf_counter()
        out = fn(self.sources, bp, k)
        return out, time.perf_counter() - t0

    def write_pages(self, key: str, make_writer: Callable[[], Any], index: int, path: Path) -> list:
        """The pages of one batch file (the page writer made once per render)."""
        if self.writer is None or self.writer[0] != key:
            self.writer = (key, make_writer())
        return self.writer[1].write_batch(index, path)


class RayExecutor:
    """Shards on Ray actors: ``workers`` of them (default: as many as the cluster's CPUs allow
    at ``num_cpus`` each, at most ``most`` — the largest stage's shard count), each with
    ``num_cpus`` and ``num_gpus``. Connects to ``address`` (or starts a local instance)."""

    def __init__(self, config: Config, most: int):
        ray = import_ray()
        ex: ExecutorConfig = config.executor
        self.ray, self.started = ray, False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reports sent from a build
            try:
                ray.init(address=ex.address, include_dashboard=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise SitegenError(f"executor.address: cannot connect to Ray at {ex.address!r} ({err})") from None
            self.started = True
        n = ex.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // max(ex.num_cpus, 1e-3)))
        n = max(1, min(n, most))
        actor = ray.remote(ShardWorker).options(
            num_cpus=ex.num_cpus, num_gpus=ex.num_gpus, max_restarts=-1, max_task_retries=RETRIES
        )
        self.actors = [actor.remote(config) for _ in range(n)]
        self.seconds: dict[str, list[float]] = {}  # per stage, each shard's time on its worker

    def map(self, name: str, fn: Stage, bp: BuildPlan, items: list[int], progress: bool) -> list[dict]:
        ref = self.ray.put(bp)
        times = self.seconds.setdefault(name, [])
        with bar(name, len(items), progress) as b:
            out = self.on_actors(lambda a, k: a.run.remote(fn, ref, k), items, b.update)
        times += [seconds for _, seconds in out]
        return [result for result, _ in out]

    def on_actors(self, call: Callable[[Any, Any], Any], items: list, done: Callable[[], Any]) -> list:
        """``call(actor, item)`` for each item, on whichever actor is free; results in item order."""
        queue = list(enumerate(items))
        running: dict[Any, tuple[int, Any]] = {}
        results: dict[int, Any] = {}
        idle = list(self.actors)
        while queue or running:
            while queue and idle:
                n, item = queue.pop(0)
                a = idle.pop(0)
                running[call(a, item)] = (n, a)
            finished, _ = self.ray.wait(list(running), num_returns=1)
            for future in finished:
                n, a = running.pop(future)
                idle.append(a)
                results[n] = self.get(future)
                done()
        return [results[n] for n in range(len(items))]

    def page_pool(self) -> RayExecutor:
        return self

    def write_batches(self, tasks: list[tuple[int, Path]], make_writer: Callable[[], Any]) -> Iterator[list]:
        """Render page batches on the actors (each makes its page writer once per render): their
        index rows, in task order."""
        key, factory = uuid.uuid4().hex, self.ray.put(make_writer)
        yield from self.on_actors(lambda a, task: a.write_pages.remote(key, factory, *task), tasks, lambda: None)

    def get(self, future: Any) -> Any:
        try:
            return self.ray.get(future)
        except self.ray.exceptions.RayTaskError as err:
            cause = err.cause if isinstance(err.cause, SitegenError) else None
            if cause is not None:
                raise SitegenError(cause.format_message()) from None
            raise SitegenError(f"executor: a Ray worker failed: {str(err).splitlines()[0]}") from None
        except self.ray.exceptions.RayError as err:
            lost = type(err).__name__
            raise SitegenError(f"executor: a Ray worker was lost after {RETRIES} retries ({lost})") from None

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        if self.started:
            self.ray.shutdown()


def make_executor(sources: Sources, most: int) -> LocalExecutor | RayExecutor:
    """The configured executor (``most``: the largest number of shards a stage has)."""
    if sources.config.executor.kind == "ray":
        return RayExecutor(sources.config, most)
    return LocalExecutor(sources)

"""Run file tasks on N processes: this process plus a spawn pool of N - 1 workers.

This process indexes files itself while the workers start, so N processes approach N times one.
A worker starts in well under a tenth of a second: it imports only the pyarrow-free indexer, and
not the parent's main script (see `_bare_main`). Tasks arrive largest first; this
process takes the smallest remaining ones and keeps each worker two tasks deep, so no worker idles
while this process is busy and the tail stays short.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from planner.index import indexer

Progress = Callable[[dict[str, Any]], None]
QUEUE_DEPTH = 2  # tasks handed to each worker ahead of time


def run_tasks(
    tasks: list[indexer.FileTask],
    workers: int,
    init_args: tuple[Any, ...],
    progress: Progress | None,
) -> dict[int, indexer.FileResult]:
    """Index ``tasks`` (sorted largest first) on ``workers`` processes; results by file_id.

    ``init_args`` are `indexer.init_worker`'s arguments without the last (tokenizer threads).
    """
    state = {
        "files_done": 0,
        "files_total": len(tasks),
        "records": 0,
        "bytes": 0,
        "bytes_total": sum(t.file.size for t in tasks),
    }
    if progress:
        progress(dict(state))
    results: dict[int, indexer.FileResult] = {}
    indexer.init_worker(*init_args, None)  # this process keeps the tokenizer's own thread setting
    if workers <= 1:
        _collect((indexer.run_task_safe(t) for t in tasks), results, state, progress)
        return results
    ctx = multiprocessing.get_context("spawn")
    # In workers one tokenizer thread each: N processes then use N cores, not N x cores.
    with _bare_main():
        pool = ctx.Pool(workers - 1, initializer=indexer.init_worker, initargs=(*init_args, False))
    with pool:
        pending = deque(tasks)
        inflight: list[Any] = []
        while pending or inflight:
            while pending and len(inflight) < QUEUE_DEPTH * (workers - 1):
                inflight.append(pool.apply_async(indexer.run_task_safe, (pending.popleft(),)))
            if pending:
                _collect([indexer.run_task_safe(pending.pop())], results, state, progress)
            else:
                inflight[0].wait()
            done = [r for r in inflight if r.ready()]
            inflight = [r for r in inflight if not r.ready()]
            _collect((r.get() for r in done), results, state, progress)
    return results


@contextlib.contextmanager
def _bare_main() -> Iterator[None]:
    """Start workers without re-running the parent's main script.

    A spawned worker imports the parent's ``__main__`` (the `mixtera` CLI with typer, rich and every
    command, or a user's script) to find functions pickled by reference from it: about 0.2 s of
    imports per worker. Tasks here reference only `planner.index.indexer`, so while the pool starts
    its processes ``__main__`` is a bare module, which spawn leaves alone.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _collect(
    done: Iterable[indexer.FileResult | indexer.Failure],
    results: dict[int, indexer.FileResult],
    state: dict[str, Any],
    progress: Progress | None,
) -> None:
    for res in done:
        if isinstance(res, indexer.Failure):
            raise res.error()
        results[res.file_id] = res
        state["files_done"] += 1
        state["records"] += res.records
        state["bytes"] += res.file.size
        if progress:
            progress(dict(state))

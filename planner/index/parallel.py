"""Run file tasks on N processes: this process plus a spawn pool of N - 1 workers.

This process indexes files itself while the workers start, so N processes approach N times one.
A worker starts in well under a tenth of a second: it imports only the pyarrow-free indexer, and
not the parent's main script (see `_bare_main`). Tasks arrive largest first in one shared queue:
workers take from the large end, this process from the small end. A worker holds one task at a
time and gets its next one the moment it reports (from the pool's management thread), so neither
side idles while the other still has queued work, and the tail is at most one small file.

The pool is `concurrent.futures.ProcessPoolExecutor`: a worker that dies (killed for memory, say)
fails its task with `BrokenProcessPool` instead of leaving it unanswered, which `multiprocessing.Pool`
does (it replaces the worker and the run waits forever). Workers ignore SIGINT: on Ctrl-C this
process stops handing out tasks and terminates them, so the run ends at once, with no traceback
from a worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import sys
import threading
import types
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from mixtera.planner.index import indexer
from mixtera.planner.index.parts import Sink
from mixtera.runtime.errors import CorpusError


class WorkerDiedError(CorpusError):
    """An index worker process ended without reporting (killed by a signal, e.g. for memory)."""


class _SharedQueue:
    """Tasks sorted largest first; workers pop the left end, this process the right end.

    Every task handed to a worker is answered on ``results`` by its result (or error) followed by
    one marker: ``_FED`` (the worker got its next task) or ``_IDLE``. After :meth:`stop` no task is
    handed out, so the workers go idle one by one and the pool shuts down with none of them busy.
    """

    def __init__(self, tasks: list[indexer.FileTask], pool: ProcessPoolExecutor) -> None:
        self._pending = deque(tasks)
        # Reentrant: a future that is already done runs its callback inside submit's caller.
        self._lock = threading.RLock()
        self._pool = pool
        self._stopped = False
        self.results: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def take_small(self) -> indexer.FileTask | None:
        with self._lock:
            return self._pending.pop() if self._pending else None

    def stop(self) -> None:
        """Hand out no more tasks (after an error): what workers hold still reports back."""
        with self._lock:
            self._stopped = True

    def feed_worker(self) -> bool:
        """Hand the largest pending task to the pool; False when none is left, after stop(), or
        once the pool is broken or shut down."""
        with self._lock:  # held while submitting: stop() cannot slip between the check and the submit
            if self._stopped or not self._pending:
                return False
            task = self._pending.popleft()
            try:
                future = self._pool.submit(indexer.run_task_safe, task)
            except (BrokenProcessPool, RuntimeError):  # a worker died, or Ctrl-C shut the pool down
                self._stopped = True
                return False
            future.add_done_callback(lambda f: self._done(f, task))
        return True

    def _done(self, future: Future, task: indexer.FileTask) -> None:  # the pool's management thread
        self.results.put(_outcome(future, task))
        self.results.put(_FED if self.feed_worker() else _IDLE)


def _outcome(future: Future, task: indexer.FileTask) -> Any:
    """A finished task's result, or the exception to raise for it."""
    if future.cancelled():
        return WorkerDiedError(f"{task.file.relpath}: its index task was cancelled", "run the index again")
    exc = future.exception()
    if isinstance(exc, BrokenProcessPool):
        return WorkerDiedError(
            f"{task.file.relpath}: the index worker process indexing it died without reporting "
            "(killed by a signal: out of memory?)",
            "index with fewer --processes, or give the job more memory; then run the index again",
        )
    return exc if exc is not None else future.result()


_FED, _IDLE = object(), object()  # follow-up markers: a worker got a new task, or none was left


def run_tasks(tasks: list[indexer.FileTask], workers: int, init_args: tuple[Any, ...], sink: Sink) -> None:
    """Index ``tasks`` (sorted largest first) on ``workers`` processes, handing results to ``sink``
    (`parts.Merger.add`, which raises a task's failure).

    ``init_args`` are `indexer.init_worker`'s arguments without the last (tokenizer threads).
    """
    indexer.init_worker(*init_args, None)  # this process keeps the tokenizer's own thread setting
    if workers <= 1:
        for t in tasks:
            sink(indexer.run_task_safe(t))
        return
    ctx = multiprocessing.get_context("spawn")
    # In workers one tokenizer thread each: N processes then use N cores, not N x cores.
    with _bare_main():
        pool = ProcessPoolExecutor(workers - 1, mp_context=ctx, initializer=_init_pool_worker,
                                   initargs=(*init_args, False))
    shared = _SharedQueue(tasks, pool)
    try:
        counter = [sum(shared.feed_worker() for _ in range(workers - 1))]  # workers holding a task
        try:
            _share(shared, counter, sink)
        except Exception:
            shared.stop()
            _wait_idle(shared, counter[0])
            raise
    except BaseException:  # Ctrl-C (or an error): stop the workers now rather than after their task
        shared.stop()
        _terminate_workers(pool)
        # Wait for the terminated workers to be reaped (quick: SIGTERM ends them), so that none
        # outlives the run, even one the executor was still starting.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _init_pool_worker(*args: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it terminates us)
    indexer.init_worker(*args)


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """SIGTERM every worker of ``pool``: Python 3.14 has ``terminate_workers``; before, the
    processes are only reachable through the executor's ``_processes``."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()


def _share(shared: _SharedQueue, busy: list[int], sink: Sink) -> None:
    """Index small tasks here while the workers take large ones; ``busy[0]``: workers holding a task."""
    while True:
        while not shared.results.empty():
            busy[0] = _receive(shared.results.get(), busy[0], sink)
        task = shared.take_small()
        if task is not None:
            sink(indexer.run_task_safe(task))
        elif busy[0] == 0:
            return
        else:
            busy[0] = _receive(shared.results.get(), busy[0], sink)


def _wait_idle(shared: _SharedQueue, busy: int) -> None:
    """After an error: discard what the ``busy`` workers still report until each of them is idle."""
    while busy:
        item = shared.results.get()
        if item is _IDLE:
            busy -= 1


def _receive(item: Any, busy: int, sink: Sink) -> int:
    """Account for one message of the result thread; returns the number of busy workers."""
    if item is _FED:
        return busy
    if item is _IDLE:
        return busy - 1
    if isinstance(item, BaseException):
        raise item  # an internal error in a worker
    sink(item)
    return busy


@contextlib.contextmanager
def _bare_main() -> Iterator[None]:
    """Start workers without re-running the parent's main script.

    A spawned worker imports the parent's ``__main__`` (the `mixtera` CLI with typer, rich and every
    command, or a user's script) to find functions pickled by reference from it: about 0.2 s of
    imports per worker. Tasks here reference only `mixtera.planner.index.indexer`, so while the pool starts
    its processes ``__main__`` is a bare module, which spawn leaves alone.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


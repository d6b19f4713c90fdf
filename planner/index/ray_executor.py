"""Run index tasks on a Ray cluster: the same tasks and merge as the local executor (`parts.py`).

Each task (a file, or a span of a large JSON lines file) is one Ray task taking one CPU; Ray
schedules them over the cluster's nodes and retries a task whose worker dies. Results stream back
as they finish (`ray.wait`) and go to the driver's `Merger`, which writes the index: workers only
read the corpus, so every node needs the corpus at the same path (a shared filesystem or an object
store), and --store-tokens needs the index's folder on a filesystem every node mounts. A bad
record is returned as a value, never raised, so Ray does not retry it and the driver raises it
with the local executor's message. At most ``2 x CPUs`` tasks are in flight: results of finished
tasks do not pile up in the object store while the driver merges.
"""

from __future__ import annotations

import re
import socket
from itertools import islice
from typing import Any

from mixtera.planner.index import indexer
from mixtera.planner.index.parts import Sink
from mixtera.runtime.errors import MixteraUserError

RAY_EXTRA = "mixtera[ray]"
CONNECT_SECONDS = 10  # Ray itself retries an unreachable head for minutes; we fail fast instead
RETRIES = 3  # a task whose worker process or node dies runs again, this many times at most


class RayExecutorError(MixteraUserError):
    pass


def run_tasks_on_ray(
    tasks: list[indexer.FileTask],
    init_args: tuple[Any, ...],
    sink: Sink,
    address: str | None,
    max_in_flight: int | None,
) -> None:
    """Index ``tasks`` on the Ray cluster at ``address`` (None: the local one, started if needed),
    handing each result to ``sink`` as it arrives; ``max_in_flight``: tasks running at once."""
    ray = _import_ray()
    started = _connect(ray, address)
    try:
        remote = ray.remote(_run_task).options(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)
        init_ref = ray.put(init_args)  # shipped to each node once, not with every task
        limit = max_in_flight or 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        _stream(ray, remote, init_ref, tasks, sink, limit)
    finally:
        if started:
            ray.shutdown()


def _stream(
    ray: Any, remote: Any, init_ref: Any, tasks: list[indexer.FileTask], sink: Sink, limit: int
) -> None:
    """Keep ``limit`` tasks in flight, largest first; on a failure cancel the rest and raise it."""
    queue = iter(tasks)
    pending: dict[Any, indexer.FileTask] = {}

    def submit(n: int) -> None:
        for task in islice(queue, n):
            pending[remote.remote(init_ref, task)] = task

    submit(limit)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(done[0])
            sink(_result(ray, done[0], task))
            submit(1)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise


def _result(ray: Any, ref: Any, task: indexer.FileTask) -> indexer.FileResult | indexer.Failure:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:  # its worker or node died on every try, or a bug raised
        span = f" (bytes {task.span[0]}-{task.span[1]})" if task.span is not None else ""
        raise RayExecutorError(
            f"indexing {task.file.relpath}{span} failed on the Ray cluster after {RETRIES} retries: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "check the cluster's nodes (`ray status`) and their logs, then re-run mixtera index",
        ) from None


_INITIALIZED: list[Any] = [None]  # the init_args this worker process was set up with


def _run_task(init_args: tuple[Any, ...], task: indexer.FileTask) -> indexer.FileResult | indexer.Failure:
    """One task in a Ray worker process; the process keeps its tokenizer and hook between tasks."""
    if _INITIALIZED[0] != init_args:
        indexer.init_worker(*init_args, False)  # one tokenizer thread: Ray runs one task per CPU
        _INITIALIZED[0] = init_args
    return indexer.run_task_safe(task)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayExecutorError(
            "--executor ray needs Ray, which is not installed",
            f"install the extra: pip install '{RAY_EXTRA}' (or run with --executor local)",
        ) from None
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address``, or the local one (RAY_ADDRESS, a `ray start` on this
    machine), else start a local Ray; True when this call started or joined it (and so shuts it
    down). An already connected driver (a user's script) keeps its connection."""
    if address is not None:
        _check_reachable(address)
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"at {address}" if address else "on this machine"
        raise RayExecutorError(
            f"cannot connect to the Ray cluster {where}: {exc}",
            "check --ray-address (host:port of the head node, as `ray start --head` prints) and that "
            "the cluster runs the same Ray and Python versions",
        ) from None
    return True


def _check_reachable(address: str) -> None:
    """Fail in seconds, naming the address, when a ``host:port`` head does not answer."""
    found = re.fullmatch(r"\[?([\w.:-]+?)\]?:(\d+)", address)
    if found is None:
        return  # "auto", "ray://...": Ray resolves and reports those itself
    try:
        socket.create_connection((found[1], int(found[2])), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise RayExecutorError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc})",
            "check --ray-address: host:port of the head node's GCS, as `ray start --head` prints it "
            "(default port 6379), and that this machine can reach it",
        ) from None

"""Reporting per-domain losses from the training job into the plan's feedback log.

Every rank calls :meth:`FeedbackReporter.report` once per optimizer step with its own per-domain
token counts and loss sums (domain id = leaf component id of the plan). The values are summed over
data-parallel ranks with ``torch.distributed.all_reduce`` when a process group is initialised
(every rank must then call ``report`` for every step); global rank 0 appends one record per step with
the plan version that produced the step's batch. Under tensor or pipeline parallelism pass the same
``device_mesh=`` or ``process_group=`` as to ``PlanDataset``: the sums then run over the data-parallel
group only, so that replicas of one batch are counted once (see `mixtera.runtime.data_parallel`).

In-process rewrites: the runtime never imports the planner. A job without a side
``mixtera feedback --follow`` process passes ``on_refit``, a callable that rank 0 calls with the
refit step ``t`` right after the record of step ``t - 1`` is written. The planner provides one::

    from mixtera.planner.feedback.orchestrate import inprocess_rewriter
    fb = FeedbackReporter(plan_dir, on_refit=inprocess_rewriter(plan_dir))

It runs the same locked, atomic rewrite as the CLI (``background=True`` runs it in a thread so the
training step does not wait for the fit).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mixtera.runtime.data_parallel import mesh_data_dims, mesh_data_group_ranks
from mixtera.runtime.errors import FeedbackError
from mixtera.runtime.format.feedback_log import UNKNOWN_VERSION, LogWriter
from mixtera.runtime.format.plan_dir import log_path
from mixtera.runtime.plan import read_manifest
from mixtera.runtime.versions import VersionResolver

MAX_TOKENS = 2**53  # token counts travel as float64 through all_reduce: exact up to here


def _distributed() -> Any:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def _reduce_group(dist: Any, device_mesh: Any | None, process_group: Any | None) -> Any:
    """The data-parallel group to sum over; None: the whole world."""
    if device_mesh is None:
        return process_group
    dims = mesh_data_dims(device_mesh)
    if len(dims) <= 1:
        return device_mesh.get_group(dims[0] if dims else 0)
    if dist is None:
        return None
    # Several data dimensions (torchtitan's dp_replicate x dp_shard): one group per replica coordinate.
    # new_group is collective, so every rank creates every group in the same order and keeps its own.
    mine = None
    for ranks in mesh_data_group_ranks(device_mesh):
        group = dist.new_group(ranks)
        if dist.get_rank() in ranks:
            mine = group
    return mine


def _as_numpy(values: Any, dtype: type) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


class FeedbackReporter:
    """Sums per-domain (tokens, loss_sum) over ranks each step; rank 0 appends them to the log."""

    def __init__(self, plan_dir: Path | str, *, rank: int | None = None,
                 on_refit: Callable[[int], Any] | None = None, background: bool = False,
                 fsync: bool = True, device_mesh: Any | None = None,
                 process_group: Any | None = None) -> None:
        self.plan_dir = Path(plan_dir)
        manifest = read_manifest(self.plan_dir)
        self.domains = len(manifest["components"])
        self.segment_steps = int(manifest["segment_steps"])
        self.steps = int(manifest["steps"])
        self._dist = _distributed()
        self._group = _reduce_group(self._dist, device_mesh, process_group)
        self.rank = rank if rank is not None else (
            self._dist.get_rank() if self._dist else int(os.environ.get("RANK", "0")))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise FeedbackError(f"FeedbackReporter(rank={self.rank!r}): the rank must be an integer >= 0",
                                "pass the data-parallel rank as an int (rank 0 writes the log)")
        self._resolver = VersionResolver(self.plan_dir, manifest, who=f"rank {self.rank}")
        sched = self._resolver.schedule
        self._refit_steps = {sched.refit_step(v) for v in sched.versions()} if sched else set()
        self.on_refit = on_refit
        self.background = background
        self._thread: threading.Thread | None = None
        self._writer = (LogWriter(log_path(self.plan_dir), self.domains, manifest["fingerprint"],
                                  fsync=fsync) if self.rank == 0 else None)

    def report(self, step: int, *, tokens: Any, loss_sum: Any) -> None:
        """Record step ``step``: ``tokens[d]`` tokens and ``loss_sum[d]`` nats of domain ``d``."""
        try:
            tok = _as_numpy(tokens, np.float64)
            loss = _as_numpy(loss_sum, np.float64)
        except (TypeError, ValueError) as exc:
            raise FeedbackError(f"{self.plan_dir}: report(step={step!r}): tokens and loss_sum must be "
                                f"numbers ({exc})", "pass one number per plan component") from None
        if tok.shape != (self.domains,) or loss.shape != (self.domains,):
            raise FeedbackError(f"report() needs {self.domains} values per domain (one per plan component), "
                                f"got tokens {tok.shape} and loss_sum {loss.shape}",
                                "pass one token count and one loss sum per component, in component-id order")
        self._check(step, tok, loss, "")
        both = self._all_reduce(np.concatenate([tok, loss]))
        if self._writer is None:
            return
        self._check(step, both[: self.domains], both[self.domains:], " summed over the ranks")
        version = self._resolver.data_version(step // self.segment_steps, wait=False)
        self._writer.append(step, UNKNOWN_VERSION if version is None else version,
                            np.rint(both[: self.domains]).astype(np.int64), both[self.domains:])
        if self.on_refit is not None and step + 1 in self._refit_steps:
            self._run_refit(step + 1)

    def _check(self, step: Any, tok: np.ndarray, loss: np.ndarray, what: str) -> None:
        """Refuse what the log cannot hold or ADO would misread (NaN tokens were stored as -9.2e18,
        negative counts moved the weights)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < self.steps:
            raise FeedbackError(f"{self.plan_dir}: report(step={step!r}): the step must be an integer in "
                                f"0..{self.steps - 1} (the plan has {self.steps} steps)",
                                "report the optimizer step the batch was replayed for")
        bad_tok = ~(np.isfinite(tok) & (tok >= 0) & (tok <= MAX_TOKENS))
        bad_loss = ~(np.isfinite(loss) & (loss >= 0))
        if bad_tok.any() or bad_loss.any():
            d = int(np.argmax(bad_tok | bad_loss))
            raise FeedbackError(
                f"{self.plan_dir}: report(step={step}){what}: domain {d} has tokens = {float(tok[d])!r} and "
                f"loss_sum = {float(loss[d])!r}; token counts must be in 0..{MAX_TOKENS} and loss sums "
                "finite and >= 0",
                "report each domain's token count and the sum of its per-token losses (nats)")

    def _all_reduce(self, vec: np.ndarray) -> np.ndarray:
        if self._dist is None:
            return vec
        import torch

        device = "cpu"
        if self._dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        t = torch.from_numpy(vec).to(device)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM, group=self._group)
        return t.cpu().numpy()

    def _run_refit(self, refit_step: int) -> None:
        self.wait()
        if not self.background:
            self.on_refit(refit_step)
            return
        self._thread = threading.Thread(target=self.on_refit, args=(refit_step,),
                                        name=f"mixtera-refit-{refit_step}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until a background rewrite (if any) has finished."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.wait()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> FeedbackReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

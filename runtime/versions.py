"""Which version of a segment a rank replays: decided by the plan's decisions, never by timing.

A plan with a ``[dynamic]`` table has refit points ``t_i = i * refit_every`` (i = 1, 2, ...). The
decision made from the losses of steps ``[0, t_i)`` is version ``i``; it governs the segments that
start at or after ``t_i + lookahead``, from segment ``first_segment(i)`` until the next decision's
first segment. It is published as ``PLAN/versions/vNNNNNN/`` (``decision.json`` plus, for a
rewrite, one rank file per rank holding every segment from ``first_segment(i)`` to the end of the
plan) with ONE rename of a staged folder. A rename onto an existing version fails, so when two
writers race for the same version exactly one wins and both then read the winner's decision.

A decision is either ``"rewrite"`` (its own rank files: ``data_version == version``) or ``"keep"``
(the previous weights: ``data_version`` names the earlier version whose files keep serving). A
rank that needs decision ``i`` waits for it (``wait_timeout_s``); then, with ``on_missing =
"keep"``, the first rank to time out publishes a keep decision for everyone, and with ``"fail"``
it raises :class:`PlanError`. Version 0 is the compiled plan in the plan directory itself.

:class:`VersionResolver` is the one place that chooses a segment's version: ``data_version`` for
a replaying rank (waits, may publish "keep"), ``current_version`` for every reader that must not
wait or write (inspect, elastic re-partitioning, ``Plan.segment`` without a version).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixtera.runtime.atomic import fsync_path, recover, temp_dir, write_atomic
from mixtera.runtime.errors import PlanError
from mixtera.runtime.format.json_file import json_file_bytes
from mixtera.runtime.format.plan_dir import DECISION, VERSIONS_DIR, version_name, version_path

DECISION_KIND = "mixtera-decision"
DEFAULT_REFIT_EVERY = 1000
DEFAULT_WAIT_TIMEOUT_S = 600.0
DEFAULT_POLL_S = 0.2
ON_MISSING = ("keep", "fail")
REWRITING = ("ado", "loss_proportional")


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionSchedule:
    """Refit points and the segments each decision governs, from the manifest's ``dynamic`` table."""

    steps: int
    segment_steps: int
    refit_every: int
    lookahead: int
    wait_timeout_s: float
    on_missing: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> DecisionSchedule | None:
        """None when the plan has no rewriting ``[dynamic]`` algorithm (every segment is version 0)."""
        dyn = manifest.get("dynamic")
        if not dyn or dyn.get("algorithm") not in REWRITING:
            return None
        seg = int(manifest["segment_steps"])
        out = cls(steps=int(manifest["steps"]), segment_steps=seg,
                  refit_every=int(dyn.get("refit_every", DEFAULT_REFIT_EVERY)),
                  lookahead=int(dyn.get("lookahead", seg)),
                  wait_timeout_s=float(dyn.get("wait_timeout_s", DEFAULT_WAIT_TIMEOUT_S)),
                  on_missing=str(dyn.get("on_missing", "keep")))
        out.validate()
        return out

    def validate(self) -> None:
        if self.refit_every < self.segment_steps:
            raise PlanError(f"dynamic.refit_every = {self.refit_every} is smaller than segment_steps = "
                            f"{self.segment_steps}", "refit at most once per segment")
        if self.lookahead < 0 or self.wait_timeout_s < 0 or self.on_missing not in ON_MISSING:
            raise PlanError(f"dynamic: lookahead = {self.lookahead}, wait_timeout_s = "
                            f"{self.wait_timeout_s}, on_missing = {self.on_missing!r} are invalid",
                            f"use lookahead >= 0, wait_timeout_s >= 0, on_missing in {ON_MISSING}")

    @property
    def segment_count(self) -> int:
        return math.ceil(self.steps / self.segment_steps)

    def refit_step(self, version: int) -> int:
        return version * self.refit_every

    def first_segment(self, version: int) -> int:
        """First segment governed by decision ``version``: starts at or after t_i + lookahead."""
        return -(-(self.refit_step(version) + self.lookahead) // self.segment_steps)

    def versions(self) -> list[int]:
        """Decisions that govern at least one segment of the plan."""
        out, i = [], 1
        while self.first_segment(i) < self.segment_count:
            out.append(i)
            i += 1
        return out

    def decision_of_segment(self, k: int) -> int:
        """The version whose decision governs segment ``k`` (0: the compiled plan)."""
        i = 0
        while self.first_segment(i + 1) <= k:
            i += 1
        return i


def read_decision(plan_dir: Path | str, version: int) -> dict[str, Any] | None:
    """The published decision ``version``, or None when it is not published (yet)."""
    path = version_path(plan_dir, version) / DECISION
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise PlanError(f"{path}: not valid JSON ({exc})", "the version folder is corrupt; restore "
                        "the plan from a backup") from None
    if obj.get("kind") != DECISION_KIND or obj.get("version") != version:
        raise PlanError(f"{path}: not decision {version} of a mixtera plan", "restore the plan")
    return obj


def publish_version(plan_dir: Path | str, version: int, build: Callable[[Path], None]) -> bool:
    """Fill a staged folder with ``build`` and rename it to ``versions/vNNNNNN`` in one step.

    Returns False (and removes the stage) when that version already exists: another writer won.
    ``build`` must write ``decision.json`` last; a crash anywhere leaves only a hidden stage.
    """
    root = Path(plan_dir) / VERSIONS_DIR
    final = root / version_name(version)
    if final.exists():
        return False
    try:
        root.mkdir(exist_ok=True)
        recover(final)  # stages of writers that were killed
        stage = temp_dir(root, prefix=f".{final.name}.")
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise PlanError(f"{root if root.is_dir() else plan_dir}: cannot publish decision {version} "
                        f"({exc.strerror})", "the plan folder must be writable by the training job (a rank "
                        "publishes \"keep\" there when a decision is late) and by `mixtera feedback`: fix "
                        "its permissions, or its mount if it is read-only") from None
    try:
        build(stage)
        fsync_path(stage)
        try:
            os.rename(stage, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise
        fsync_path(root)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(stage)


def keep_decision(schedule: DecisionSchedule, version: int, data_version: int, fingerprint: str,
                  reason: str) -> dict[str, Any]:
    return {"kind": DECISION_KIND, "version": version, "fingerprint": fingerprint, "action": "keep",
            "data_version": data_version, "refit_step": schedule.refit_step(version),
            "first_segment": schedule.first_segment(version),
            "first_step": schedule.first_segment(version) * schedule.segment_steps, "reason": reason}


class VersionResolver:
    """Maps segments to the version whose rank files hold them; published decisions are cached."""

    def __init__(self, plan_dir: Path | str, manifest: dict[str, Any], *, who: str = "a rank") -> None:
        self.plan_dir = Path(plan_dir)
        self.fingerprint = manifest["fingerprint"]
        self.schedule = DecisionSchedule.from_manifest(manifest)
        self.who = who
        self._decisions: dict[int, dict[str, Any]] = {}

    def data_version(self, k: int, *, wait: bool = True) -> int | None:
        """Version folder to read segment ``k`` from; None if undecided and ``wait`` is False."""
        if self.schedule is None:
            return 0
        i = self.schedule.decision_of_segment(k)
        if i == 0:
            return 0
        d = self.decision(i, wait=wait)
        return None if d is None else int(d["data_version"])

    def current_version(self, k: int) -> int:
        """The version whose files hold segment ``k`` now, without waiting or writing: its decision's
        data version when published, else that of the newest published decision before it."""
        if self.schedule is None:
            return 0
        for i in range(self.schedule.decision_of_segment(k), 0, -1):
            d = self.decision(i, wait=False)
            if d is not None:
                return int(d["data_version"])
        return 0

    def published(self) -> list[dict[str, Any]]:
        """The published decisions in order (decisions are made in order: the first gap ends them)."""
        out = []
        for v in self.schedule.versions() if self.schedule else []:
            d = self.decision(v, wait=False)
            if d is None:
                break
            out.append(d)
        return out

    def decision(self, version: int, *, wait: bool = True) -> dict[str, Any] | None:
        if version in self._decisions:
            return self._decisions[version]
        d = read_decision(self.plan_dir, version)
        if d is None and wait:
            d = self._wait(version)
        if d is None:
            return None
        if d.get("fingerprint") != self.fingerprint:
            raise PlanError(f"{version_path(self.plan_dir, version)}: decision for plan "
                            f"{d.get('fingerprint')}, not {self.fingerprint}", "restore the plan")
        self._decisions[version] = d
        return d

    def _wait(self, version: int) -> dict[str, Any]:
        sched = self.schedule
        deadline = time.monotonic() + sched.wait_timeout_s
        while time.monotonic() < deadline:
            time.sleep(min(DEFAULT_POLL_S, max(deadline - time.monotonic(), 0)))
            d = read_decision(self.plan_dir, version)
            if d is not None:
                return d
        where = (f"decision {version} (losses up to step {sched.refit_step(version)}, segments from "
                 f"{sched.first_segment(version)})")
        if sched.on_missing == "fail":
            raise PlanError(f"{self.plan_dir}: {where} did not appear within {sched.wait_timeout_s:g} s",
                            "run `mixtera feedback PLAN --follow` beside the job (or the in-process "
                            "rewrite on rank 0), or set [dynamic] on_missing = \"keep\"")
        prev = 0 if version == 1 else int(self.decision(version - 1)["data_version"])
        body = keep_decision(sched, version, prev, self.fingerprint,
                             f"{self.who} waited {sched.wait_timeout_s:g} s for the decision")
        publish_version(self.plan_dir, version,
                        lambda stage: write_atomic(stage / DECISION, json_file_bytes(body)))
        d = read_decision(self.plan_dir, version)
        if d is None:
            raise PlanError(f"{version_path(self.plan_dir, version)}: could not publish or read {where}",
                            "check that the plan directory is writable")
        return d


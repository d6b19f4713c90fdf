"""A 16-rank torchrun job over a plan with [dynamic] ADO, `mixtera feedback --follow` beside it, then
re-partitioned with `compile --from-plan` and resumed on 8 ranks.

Checked: every rank's batches are its plan (what a fresh PlanDataset of that rank replays once
every decision is published), the ranks of a step together hold exactly the step's per-domain
quotas (the versions replayed), every rank replayed the same decisions, and the 8-rank job goes on
with the global order of the 16-rank plan.
"""

from __future__ import annotations

import subprocess
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from mixtera.planner.report import replayed
from mixtera.runtime import PlanDataset
from mixtera.runtime.versions import read_decision
from tests.helpers.many_ranks import ENV, MIXTERA, REFIT, SEG, STEPS, WORLD, build_pipeline, run_job

NEW_WORLD, STOP = 8, 30  # the job stops at step 30 and resumes on 8 ranks


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    root = tmp_path_factory.mktemp("many")
    build_pipeline(root, tiny_tokenizer)
    return root

@pytest.fixture(scope="module")
def jobs(root: Path, tiny_tokenizer: Path) -> tuple[list[dict], list[dict]]:
    first = run_job(root / "plan", tiny_tokenizer, root / "out16", WORLD, "--stop", str(STOP))
    state = root / "state.pt"
    torch.save(first[3]["state"], state)  # any old rank's state resumes the global position
    run = subprocess.run([*MIXTERA, "compile", str(root / "mix.toml"), "--from-plan", str(root / "plan"),
                          "--from-step", str(STOP), "--world-size", str(NEW_WORLD),
                          "--out", str(root / "new")],
                         capture_output=True, text=True, env=ENV)  # noqa: S603
    assert run.returncode == 0, run.stderr
    second = run_job(root / "new", tiny_tokenizer, root / "out8", NEW_WORLD, "--resume", str(state))
    return first, second


def _replay(plan: Path, tok: Path, rank: int, world: int, steps: range,
            state: Path | None = None) -> list[dict]:
    """Batches of ``steps`` as a fresh PlanDataset of ``rank`` replays them now."""
    ds = PlanDataset(plan, rank=rank, world_size=world, tokenizer=tok)
    if state is not None:
        ds.load_state_dict(torch.load(state, weights_only=False))
    return list(islice(ds.loader(num_workers=0), len(steps)))  # never past the last step asked for


def _check_job(plan: Path, tok: Path, records: list[dict], steps: range,
               state: Path | None = None) -> dict[str, str]:
    """Checks one job's records; returns the decisions its ranks replayed (the same on every rank)."""
    world = len(records)
    quotas = replayed(plan).quotas  # per step and domain, in the versions published
    for r, rec in enumerate(records):
        assert rec["rank"] == r and rec["world"] == world and rec["steps"] == list(steps)
        for got, want in zip(rec["input_ids"], _replay(plan, tok, r, world, steps, state), strict=True):
            assert torch.equal(got, want["input_ids"])
    decisions = [rec["state"]["decisions"] for rec in records]  # version -> digest of the decision
    assert all(d == decisions[0] for d in decisions)
    for i, step in enumerate(steps):
        per_domain = sum(torch.bincount(rec["domain_ids"][i].reshape(-1), minlength=quotas.shape[1])
                         for rec in records)
        np.testing.assert_array_equal(per_domain.numpy(), quotas[step])
    return decisions[0]


@pytest.mark.slow
def test_sixteen_ranks_replay_their_plan_with_feedback_and_resume_on_eight(
        root: Path, tiny_tokenizer: Path, jobs: tuple[list[dict], list[dict]]) -> None:
    first, second = jobs
    assert read_decision(root / "plan", 1) is not None  # decided by --follow from the 16 ranks' losses
    assert read_decision(root / "new", 2) is not None  # decided in the new plan from the 8 ranks' losses
    # Decision 1 (losses of steps 0-19) applies from step 30 (one segment of lookahead): the 16 ranks
    # stop before it, the 8 ranks replay it and decision 2 (losses to step 39, from step 50).
    assert _check_job(root / "plan", tiny_tokenizer, first, range(STOP)) == {}
    replayed_new = _check_job(root / "new", tiny_tokenizer, second, range(STOP, STEPS), root / "state.pt")
    assert sorted(replayed_new) == ["1", "2"]
    assert read_decision(root / "new", 1)["mean_weights"] == read_decision(root / "plan", 1)["mean_weights"]
    # The global order is kept: until the new plan's own decision applies, the 8 ranks' steps are the
    # 16-rank plan's steps (sequences in rank order), read from the old plan after the fact (its
    # decision 2 was never made: the replay stops before step 50).
    kept = range(2 * REFIT + SEG)
    old = [_replay(root / "plan", tiny_tokenizer, r, WORLD, kept) for r in range(WORLD)]
    for i, step in enumerate(range(STOP, kept.stop)):
        want = torch.cat([old[r][step]["input_ids"] for r in range(WORLD)])
        assert torch.equal(torch.cat([rec["input_ids"][i] for rec in second]), want)

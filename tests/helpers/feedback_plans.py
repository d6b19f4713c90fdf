"""Small compiled plans with a [dynamic] table, and a synthetic job that replays them and reports losses.

The job reads what every rank replays through ``mixtera.runtime.plan.Plan`` in the version that
``mixtera.runtime.versions.VersionResolver`` chooses (the same lookup the dataset uses), counts each
domain's tokens per step and reports losses from a known per-domain curve
``L_k(n) = eps_k + beta_k * n_k ** -alpha_k`` (n_k: the domain's tokens so far, in units of 1024).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixtera.planner.compile.pipeline import compile_file
from mixtera.runtime.feedback import FeedbackReporter
from mixtera.runtime.plan import Plan
from mixtera.runtime.versions import VersionResolver
from tests.helpers.synthetic_index import write_synthetic_index

MIXTURE = """
[mixture]
index = "index"
seed = 7
unit = "{unit}"
steps = {steps}
segment_steps = {segment_steps}

[topology]
world_size = {world_size}
batch_size = 2
seq_len = 64

[components.web]
where = "source == 'web'"
weight = 0.4
[components.code]
where = "source == 'code'"
weight = 0.3
[components.books]
where = "source == 'books'"
weight = 0.2
[components.wiki]
where = "source == 'wiki'"
weight = 0.1
on_exhausted = "{wiki_exhausted}"

[dynamic]
{dynamic}
"""

ADO_FAST = ('algorithm = "ado"\nrefit_every = {refit}\nignore_steps = 50\nmin_points = 10\n'
            'savgol_window = 31\nlbfgs_iterations = 40\nwait_timeout_s = {wait}\non_missing = "{missing}"')


def make_plan(root: Path, *, steps: int = 1200, segment_steps: int = 50, refit: int = 200,
              world_size: int = 2, unit: str = "tokens", dynamic: str | None = None,
              wait: float = 30.0, missing: str = "keep", samples: int = 4000,
              wiki_exhausted: str = "repeat") -> Path:
    index = root / "index"
    if not index.exists():
        write_synthetic_index(index, samples, seed=3)
    dyn = dynamic or ADO_FAST.format(refit=refit, wait=wait, missing=missing)
    spec = root / "mixture.toml"
    spec.write_text(MIXTURE.format(unit=unit, steps=steps, segment_steps=segment_steps,
                                   world_size=world_size, dynamic=dyn, wiki_exhausted=wiki_exhausted))
    compile_file(spec, root / "plan")
    return root / "plan"


CURVES = {"eps": np.array([2.0, 1.8, 2.6, 3.2]), "beta": np.array([6.0, 20.0, 4.0, 9.0]),
          "alpha": np.array([0.3, 0.5, 0.2, 0.4])}


class Replay:
    """What every rank replays, one resolved segment at a time (as the dataset reads it)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.resolver = VersionResolver(plan.path, plan.manifest)
        self._cache: dict[int, list] = {}

    def entries(self, rank: int, step: int):
        k = self.plan.segment_of_step(step)
        if k not in self._cache:
            self._cache = {k: [self._resolve(r, k) for r in range(self.plan.world_size)]}
        resolved, bounds, first = self._cache[k][rank]
        i = step - first
        return resolved.take(slice(int(bounds[i]), int(bounds[i + 1])))

    def _resolve(self, rank: int, k: int):
        seg = self.plan.segment(rank, k, self.resolver.data_version(k))
        return self.plan.resolve(seg), seg.step_slices(), seg.first_step

    def step_tokens(self, step: int) -> np.ndarray:
        """Per-domain tokens of ``step`` over all ranks."""
        out = np.zeros(len(self.plan.components), np.int64)
        for rank in range(self.plan.world_size):
            e = self.entries(rank, step)
            np.add.at(out, e.component.astype(np.int64), e.token_end - e.token_start)
        return out


def run_job(plan_dir: Path, steps: range, *, on_step=None, reporter: FeedbackReporter | None = None,
            seen: np.ndarray | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Replay ``steps`` and report synthetic losses; returns per-step token counts and the running n."""
    plan = Plan.open(plan_dir)
    replay = Replay(plan)
    fb = reporter or FeedbackReporter(plan_dir, rank=0, fsync=False)
    seen = np.zeros(len(plan.components)) if seen is None else seen
    counts = []
    for step in steps:
        tok = replay.step_tokens(step)
        seen = seen + tok
        n = np.maximum(seen / 1024, 1e-3)
        loss = CURVES["eps"] + CURVES["beta"] * n ** -CURVES["alpha"]
        fb.report(step, tokens=tok, loss_sum=loss * tok)
        counts.append(tok)
        if on_step:
            on_step(step)
    if reporter is None:
        fb.close()
    plan.close()
    return counts, seen

"""A many-rank torchrun job over a small real pipeline with [dynamic] ADO, `mixtera feedback --follow`
beside it (tests/runtime/test_many_ranks.py; bench/scale.py times its FeedbackReporter).

The ranks run tests/helpers/many_ranks_job.py (gloo, no model).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers import ROOT
from tests.helpers.runtime_plans import make_docs, write_corpus_file

WORLD, STEPS, SEG, REFIT = 16, 60, 10, 20
WEIGHTS = {"web": 0.5, "code": 0.3, "books": 0.2}
MIXTURE = f"""[mixture]
index = "index"
seed = 5
unit = "tokens"
steps = {STEPS}
segment_steps = {SEG}

[topology]
world_size = {WORLD}
batch_size = 1
seq_len = 32

[dynamic]
algorithm = "ado"
refit_every = {REFIT}
ignore_steps = 4
min_points = 5
savgol_window = 5
lbfgs_iterations = 20
wait_timeout_s = 120
""" + "".join(f"\n[components.{n}]\nwhere = \"source == '{n}'\"\nweight = {w}\non_exhausted = \"repeat\"\n"
              for n, w in WEIGHTS.items())
MIXTERA = [str(Path(sys.executable).parent / "mixtera")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
JOB = ROOT / "tests" / "helpers" / "many_ranks_job.py"


def build_pipeline(root: Path, tokenizer: Path) -> Path:
    """Corpus (3 sources of 60 documents), index with stored tokens, ``root/mix.toml`` compiled into
    ``root/plan`` (16 ranks x 1 sequence of 32 tokens, 60 steps, an ADO decision every 20)."""
    from mixtera.planner.compile.pipeline import compile_file
    from mixtera.planner.index.build import build_index

    for k, name in enumerate(WEIGHTS):
        write_corpus_file(root / "corpus" / name / "part.jsonl", make_docs(k + 1, 60), "jsonl", nested=False)
    build_index([root / "corpus"], root / "index", tokenizer=tokenizer, store_tokens=True, processes=1)
    (root / "mix.toml").write_text(MIXTURE)
    compile_file(root / "mix.toml", root / "plan")
    return root / "plan"


def run_job(plan: Path, tokenizer: Path, out: Path, nproc: int, *extra: str) -> list[dict]:
    """Run the job on ``nproc`` processes beside `mixtera feedback PLAN --follow`; every rank's record."""
    out.mkdir()
    follow = subprocess.Popen([*MIXTERA, "feedback", str(plan), "--follow", "--poll", "0.05"],  # noqa: S603
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(JOB), "--plan", str(plan), "--tokenizer", str(tokenizer), "--out", str(out), *extra]
        run = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)  # noqa: S603
        if run.returncode:
            raise RuntimeError(f"the {nproc}-rank job failed:\n{run.stderr[-3000:]}")
    finally:
        if follow.poll() is None:  # a job that stops early leaves it waiting for later losses
            follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=60)
    if "Traceback" in err:
        raise RuntimeError(f"mixtera feedback --follow failed:\n{err[-3000:]}")
    return [torch.load(out / f"rank-{r}.pt", weights_only=False) for r in range(nproc)]

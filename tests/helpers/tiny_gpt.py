"""Run examples/train_tiny_gpt.py under torchrun (gloo, CPU) and return its per-step JSON records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def run_tiny_gpt(plan: Path, tokenizer: Path, ckpt: Path, steps: int, *extra: str, nproc: int = 2,
                 timeout: int = 300) -> list[dict]:
    """``--json`` records (one per step, plus eval records) of ``steps`` steps on ``nproc`` processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "examples" / "train_tiny_gpt.py"), "--plan", str(plan), "--tokenizer", str(tokenizer),
           "--steps", str(steps), "--checkpoint-dir", str(ckpt), "--json", *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "data wait:" in run.stderr
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]

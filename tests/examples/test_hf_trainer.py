"""examples/train_hf_trainer.py: a GPT-2 trained by the Hugging Face Trainer from a plan, resumed exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mixtera.runtime.format.feedback_log import read_log
from mixtera.runtime.format.plan_dir import log_path
from tests.helpers import ROOT
from tests.helpers.runtime_plans import build_plan, make_docs

pytest.importorskip("transformers", reason="needs the hf extra (pip install 'mixtera[hf]')")
pytestmark = pytest.mark.slow
STEPS = 8


def _train(plan: Path, tokenizer: Path, out: Path, *extra: str) -> list[dict]:
    cmd = [sys.executable, str(ROOT / "examples" / "train_hf_trainer.py"), "--plan", str(plan),
           "--tokenizer", str(tokenizer), "--out", str(out), "--save-steps", "4", "--feedback", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "steps-rank-0.jsonl").read_text().splitlines()]


def test_a_resumed_trainer_run_sees_exactly_the_batches_of_an_uninterrupted_one(
    tmp_path: Path, tiny_tokenizer: Path
) -> None:
    sources = {"web": [("a.jsonl", make_docs(1, 40))], "code": [("b.jsonl.gz", make_docs(2, 40))]}
    hand = build_plan(tmp_path / "p", tiny_tokenizer, sources=sources, weights={"web": 0.6, "code": 0.4},
                      steps=STEPS, world_size=1, batch_size=2, seq_len=48, store_tokens=True)
    other = tmp_path / "plan-copy"
    shutil.copytree(hand.path, other)

    whole = _train(hand.path, tiny_tokenizer, tmp_path / "whole", "--max-steps", str(STEPS))
    first = _train(other, tiny_tokenizer, tmp_path / "split", "--max-steps", "4")
    resumed = _train(other, tiny_tokenizer, tmp_path / "split", "--max-steps", str(STEPS), "--resume")

    assert [r["step"] for r in whole] == list(range(STEPS))
    assert resumed[: len(first)] == first  # the log file is appended to
    assert [r["batch"] for r in resumed] == [r["batch"] for r in whole]
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in whole], rtol=1e-4)
    for plan in (hand.path, other):  # every step reported once, with the plan's per-step token count
        fingerprint = json.loads((plan / "manifest.json").read_bytes())["fingerprint"]
        records = read_log(log_path(plan), 2, fingerprint)
        assert list(records.step) == list(range(STEPS))
        assert np.all(records.tokens.sum(axis=1) == 2 * 48 - 2)  # the last label of each sequence is -100

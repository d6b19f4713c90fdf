"""examples/train_tiny_vlm.py: 2 CPU ranks under torchrun on a plan mixing captioned images and text.

A few steps with feedback: per-domain losses of both components, every step in the feedback log once;
a resumed run gives exactly the losses of an uninterrupted one; the held-out caption score is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mixtera.runtime.format.feedback_log import read_log
from mixtera.runtime.format.plan_dir import log_path
from tests.helpers import ROOT
from tests.helpers.image_plans import ImagePlan, build_image_plan

pytest.importorskip("PIL", reason="needs the vision extra (pip install 'mixtera[vision]')")
pytestmark = pytest.mark.slow
STEPS = 6


def _train(plan: Path, tok: Path, ckpt: Path, steps: int, *extra: str) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "examples" / "train_tiny_vlm.py"), "--plan", str(plan), "--tokenizer", str(tok),
           "--steps", str(steps), "--checkpoint-dir", str(ckpt), "--json", "--feedback", *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "data wait:" in run.stderr
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImagePlan, Path, Path]:
    sys.path.insert(0, str(ROOT / "examples"))
    from make_vlm_corpus import build_vlm_corpus, train_vlm_tokenizer

    root = tmp_path_factory.mktemp("vlm")
    corpus = build_vlm_corpus(root / "corpus", shards=1, per_shard=64)
    tok = train_vlm_tokenizer(corpus, root / "tokenizer.json")
    plan = build_image_plan(root / "hand", tok, images=64, texts=80, steps=STEPS, world_size=2, batch_size=4,
                            seq_len=64, image_tokens=16, segment_steps=2)
    return plan, tok, corpus / "heldout" / "heldout-0000.tar"


def test_two_ranks_train_report_feedback_and_resume_exactly(
    vlm: tuple[ImagePlan, Path, Path], tmp_path: Path
) -> None:
    plan, tok, heldout = vlm
    other = tmp_path / "plan-copy"
    shutil.copytree(plan.path, other)
    whole = _train(plan.path, tok, tmp_path / "whole", STEPS, "--heldout", str(heldout))
    steps = [r for r in whole if "step" in r]
    assert [r["step"] for r in steps] == list(range(STEPS))
    assert all(r["domain_tokens"]["pics"] > 0 and r["domain_tokens"]["text"] > 0 for r in steps)
    score = next(r for r in whole if "heldout_caption_loss" in r)
    assert score["heldout_samples"] == 128 and np.isfinite(score["heldout_caption_loss"])

    first = _train(other, tok, tmp_path / "split", 3)
    resumed = _train(other, tok, tmp_path / "split", STEPS, "--resume")
    np.testing.assert_allclose([r["loss"] for r in first + resumed], [r["loss"] for r in steps], rtol=1e-5)
    for p in (plan.path, other):  # every step reported once, both domains counted
        fingerprint = json.loads((p / "manifest.json").read_bytes())["fingerprint"]
        records = read_log(log_path(p), 2, fingerprint)
        assert list(records.step) == list(range(STEPS))
        assert np.all(records.tokens > 0)

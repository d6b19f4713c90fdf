"""PlanDataset(split="validation") replays PLAN/validation/: the same batches at every evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mixtera.runtime import PlanDataset
from mixtera.runtime.errors import PlanError
from tests.helpers.runtime_plans import make_docs, write_corpus_file
from tests.helpers.tiny_gpt import run_tiny_gpt

MIXTURE = """[mixture]
index = "index"
seed = 5
unit = "tokens"
steps = 12
segment_steps = 4

[topology]
world_size = 2
batch_size = 2
seq_len = 64

[components.web]
where = "source == 'web'"
weight = 0.6
[components.code]
where = "source == 'code'"
weight = 0.4

[validation]
tokens_per_component = 300
batch_size = 1
"""


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    from mixtera.planner.compile.pipeline import compile_file
    from mixtera.planner.index.build import build_index

    root = tmp_path_factory.mktemp("val")
    write_corpus_file(root / "corpus" / "web" / "a.jsonl", make_docs(1, 60), "jsonl", nested=False)
    write_corpus_file(root / "corpus" / "code" / "b.jsonl.gz", make_docs(2, 60), "jsonl.gz", nested=False)
    build_index([root / "corpus"], root / "index", tokenizer=tiny_tokenizer, processes=1)
    (root / "mix.toml").write_text(MIXTURE)
    compile_file(root / "mix.toml", root / "plan")
    return root / "plan"


def _batches(ds: PlanDataset, workers: int) -> list[dict]:
    return list(ds.loader(num_workers=workers))


def _sample_ids(batches: list[dict]) -> set[str]:
    return {s[0] for b in batches for seq in b["provenance"] for s in seq}


@pytest.mark.parametrize("rank", [0, 1])
def test_every_evaluation_replays_the_same_batches(plan: Path, tiny_tokenizer: Path, rank: int) -> None:
    ds = PlanDataset(plan, rank=rank, world_size=2, tokenizer=tiny_tokenizer, split="validation")
    first, again = _batches(ds, 0), _batches(ds, 2)  # the same object, evaluated twice
    assert len(first) == ds.steps >= 2 and ds.batch_size == 1
    assert [int(b["step"][0]) for b in again] == list(range(ds.steps))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["domain_ids"], b["domain_ids"])
    assert set(torch.cat([b["domain_ids"] for b in first]).unique().tolist()) <= {0, 1}


def test_validation_documents_are_not_trained_on(plan: Path, tiny_tokenizer: Path) -> None:
    def ids(split: str) -> set[str]:
        return set().union(*(
            _sample_ids(_batches(PlanDataset(plan, rank=r, world_size=2, tokenizer=tiny_tokenizer,
                                             split=split, with_provenance=True), 0))
            for r in range(2)))

    val, train = ids("validation"), ids("train")
    assert val and train and not val & train


def test_a_plan_without_validation_says_how_to_add_it(plan: Path, tiny_tokenizer: Path) -> None:
    with pytest.raises(PlanError, match="has no validation split") as err:
        PlanDataset(plan / "validation", rank=0, world_size=2, tokenizer=tiny_tokenizer, split="validation")
    assert "[validation]" in err.value.hint
    with pytest.raises(PlanError, match="split='test' is not one of train, validation"):
        PlanDataset(plan, rank=0, world_size=2, split="test")


@pytest.mark.slow
def test_the_example_reports_per_domain_validation_loss_without_changing_training(
    plan: Path, tiny_tokenizer: Path, tmp_path: Path
) -> None:
    plain = run_tiny_gpt(plan, tiny_tokenizer, tmp_path / "a", 6, "--workers", "0")
    logged = run_tiny_gpt(plan, tiny_tokenizer, tmp_path / "b", 6, "--workers", "0", "--eval-every", "3")
    evals = [r for r in logged if "eval_after_step" in r]
    assert [r["eval_after_step"] for r in evals] == [2, 5]
    assert all(set(r["validation_loss"]) == {"web", "code"} for r in evals)
    assert evals[1]["validation_loss"] != evals[0]["validation_loss"]  # the model moved in between
    assert [r for r in logged if "step" in r] == plain  # evaluation does not touch the training run

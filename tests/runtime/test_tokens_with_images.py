"""PlanDataset(output="tokens", image_token_id=...) on a plan of captioned images and text.

Hand-made plans (tests/helpers/image_plans.py) with their own oracle: ids with placeholder spans,
labels, image offsets and decoded images must equal it, in process and through loader workers; resume
from a saved state must continue exactly; a plain DataLoader with the collate function stacks them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mixtera.runtime import PlanDataset
from mixtera.runtime.errors import PlanError
from tests.helpers import ROOT
from tests.helpers.image_plans import (
    PLACEHOLDER,
    ImagePlan,
    assert_resumes_exactly,
    build_image_plan,
    expected_step,
)
from tests.helpers.runtime_plans import make_docs

SIZE = (16, 16)


@pytest.fixture(scope="module")
def image_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(ROOT / "examples"))
    from demo_tokenizer import train_tokenizer
    from make_vlm_corpus import COLOURS, KINDS, QUADRANTS

    words = [f"a {c} {k} in the {q} and." for c in COLOURS for k in KINDS for q in QUADRANTS]
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_tokenizer(words + make_docs(3, 200), out, vocab_size=400, extra_special=(PLACEHOLDER,))


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, image_tokenizer: Path) -> ImagePlan:
    return build_image_plan(tmp_path_factory.mktemp("images"), image_tokenizer, steps=6, world_size=2)


def _dataset(plan: ImagePlan, tok: Path, rank: int = 0, **kw: object) -> PlanDataset:
    return PlanDataset(plan.path, rank=rank, world_size=2, tokenizer=tok,
                       **{"image_token_id": plan.image_token_id, **kw})


def _assert_step(batch: dict, want: dict) -> None:
    assert np.array_equal(batch["input_ids"].numpy(), want["input_ids"])
    assert np.array_equal(batch["labels"].numpy(), want["labels"])
    assert batch["image_positions"].tolist() == want["image_positions"].tolist()
    assert len(batch["images"]) == len(want["images"])
    for got, exp in zip(batch["images"], want["images"], strict=True):
        assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), exp)


@pytest.mark.parametrize("size", [SIZE, None], ids=["resized", "as-stored"])
@pytest.mark.parametrize("rank", [0, 1])
def test_every_step_equals_the_oracle(plan: ImagePlan, image_tokenizer: Path, rank: int,
                                      size: tuple[int, int] | None) -> None:
    ds = _dataset(plan, image_tokenizer, rank, image_size=size)
    batches = list(ds.loader(num_workers=0))
    assert len(batches) == ds.steps
    seen_images = 0
    for step, batch in enumerate(batches):
        _assert_step(batch, expected_step(plan, rank, step, size))
        seen_images += len(batch["images"])
        if size is not None:
            assert batch["images"].shape[1:] == (3, *size)
    assert seen_images > 0 and ds.image_tokens == plan.image_tokens


def test_loader_workers_give_the_batches_of_one_process(plan: ImagePlan, image_tokenizer: Path) -> None:
    ds = _dataset(plan, image_tokenizer, image_size=SIZE)
    for step, batch in enumerate(ds.loader(num_workers=2)):
        _assert_step(batch, expected_step(plan, 0, step, SIZE))


def test_a_plain_dataloader_with_the_collate_function_stacks_sequences(
    plan: ImagePlan, image_tokenizer: Path
) -> None:
    ds = _dataset(plan, image_tokenizer, image_size=SIZE)
    loader = DataLoader(ds, batch_size=plan.batch_size, collate_fn=PlanDataset.collate, num_workers=2)
    for step, batch in enumerate(loader):
        _assert_step(batch, expected_step(plan, 0, step, SIZE))


def test_resume_continues_with_exactly_the_images_of_an_uninterrupted_run(
    plan: ImagePlan, image_tokenizer: Path
) -> None:
    assert_resumes_exactly(lambda: _dataset(plan, image_tokenizer, image_size=SIZE), stop=2)


def test_the_placeholder_id_is_required_checked_and_tokens_only(
    plan: ImagePlan, image_tokenizer: Path
) -> None:
    with pytest.raises(PlanError, match="holds image samples .* needs image_token_id"):
        PlanDataset(plan.path, rank=0, world_size=2, tokenizer=image_tokenizer)
    with pytest.raises(PlanError, match="image_token_id=100000 must be an int id"):
        _dataset(plan, image_tokenizer, image_token_id=100_000)
    with pytest.raises(PlanError, match="image_token_id needs output='tokens'"):
        PlanDataset(plan.path, rank=0, world_size=2, output="documents", image_token_id=plan.image_token_id)


def test_a_plan_without_images_refuses_a_placeholder_id(tmp_path: Path, tiny_tokenizer: Path) -> None:
    from tests.helpers.runtime_plans import build_plan

    hand = build_plan(tmp_path, tiny_tokenizer, sources={"a": [("a.jsonl", make_docs(1, 20))]},
                      weights={"a": 1}, steps=2, world_size=1, batch_size=1, seq_len=16)
    with pytest.raises(PlanError, match="the plan has no image_tokens"):
        PlanDataset(hand.path, tokenizer=tiny_tokenizer, image_token_id=0)

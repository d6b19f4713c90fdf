"""position_ids / document_ids of packed sequences follow the plan's document slices (provenance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixtera.runtime import PlanDataset
from mixtera.runtime.document_masks import (
    dense_document_mask,
    document_layout,
    flex_block_mask,
    varlen_metadata,
)
from mixtera.runtime.errors import PlanError
from tests.helpers.small_plan import STEPS, WORLD, small_plan
from tests.helpers.tiny_gpt import run_tiny_gpt


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    return small_plan(tmp_path_factory.mktemp("masks"), tiny_tokenizer).path


def _batches(plan: Path, tok: Path, rank: int, workers: int, **kwargs: bool) -> list[dict]:
    ds = PlanDataset(plan, rank=rank, world_size=WORLD, tokenizer=tok, with_provenance=True,
                     document_masks=True, **kwargs)
    return list(ds.loader(num_workers=workers))


@pytest.mark.parametrize("continue_positions", [False, True])
@pytest.mark.parametrize("rank", range(WORLD))
def test_ids_follow_the_provenance_slices(plan: Path, tiny_tokenizer: Path, rank: int,
                                          continue_positions: bool) -> None:
    batches = _batches(plan, tiny_tokenizer, rank, 0, continue_positions=continue_positions)
    assert len(batches) == STEPS
    continued = 0
    for b in batches:
        for seq, slices in enumerate(b["provenance"]):
            expected_docs, expected_pos = [], []
            for d, (_, start, end) in enumerate(slices):
                expected_docs += [d] * (end - start)
                first = start if continue_positions else 0
                expected_pos += list(range(first, first + end - start))
                continued += start > 0
            assert b["document_ids"][seq].tolist() == expected_docs
            assert b["position_ids"][seq].tolist() == expected_pos
    assert continued  # the plan has slices that continue a document from an earlier sequence


def test_workers_give_the_same_masks(plan: Path, tiny_tokenizer: Path) -> None:
    alone, split = _batches(plan, tiny_tokenizer, 0, 0), _batches(plan, tiny_tokenizer, 0, 2)
    for a, b in zip(alone, split, strict=True):
        for key in ("input_ids", "position_ids", "document_ids"):
            assert torch.equal(a[key], b[key]), key


def test_varlen_metadata_gives_every_slice_its_length(plan: Path, tiny_tokenizer: Path) -> None:
    b = _batches(plan, tiny_tokenizer, 1, 0)[0]
    cu, longest = varlen_metadata(b["document_ids"])
    lengths = [end - start for slices in b["provenance"] for _, start, end in slices]
    assert cu.dtype == torch.int32 and torch.diff(cu).tolist() == lengths and longest == max(lengths)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager on CPU: fine here
def test_the_flex_block_mask_keeps_attention_inside_each_document() -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    from torch.nn.attention.flex_attention import flex_attention

    _, docs = document_layout(np.array([3, 6, 2, 5]), np.zeros(4, np.int64), 2, 8)
    docs = torch.from_numpy(docs)
    q, k, v = torch.randn(3, 2, 1, 8, 4).unbind(0)
    got = flex_attention(q, k, v, block_mask=flex_block_mask(docs, block_size=8))
    same = docs[:, None, :, None] == docs[:, None, None, :]
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    assert torch.equal(dense_document_mask(docs), same & causal)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=same & causal)
    assert torch.allclose(got, want, atol=1e-5)


def test_document_masks_need_the_tokens_output(plan: Path) -> None:
    with pytest.raises(PlanError, match="need output='tokens'"):
        PlanDataset(plan, rank=0, world_size=WORLD, output="documents", document_masks=True)


@pytest.mark.slow
def test_the_example_trains_with_document_masks(plan: Path, tiny_tokenizer: Path, tmp_path: Path) -> None:
    def train(*extra: str) -> list[dict]:
        return run_tiny_gpt(plan, tiny_tokenizer, tmp_path / str(len(extra)), 3, "--workers", "0", *extra)

    plain, masked = train(), train("--document-mask")
    assert [r["step"] for r in masked] == [0, 1, 2]
    assert all(np.isfinite(r["loss"]) for r in masked)
    assert masked[0]["loss"] != plain[0]["loss"]  # the mask changes what the model attends to

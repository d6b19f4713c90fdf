"""PlanDataset replays exactly the plan: tokens, order over workers and ranks, shares, provenance."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mixtera.runtime import PlanDataset
from mixtera.runtime.errors import PlanError
from mixtera.runtime.format.token_file import HEADER_SIZE
from mixtera.runtime.plan import Plan
from tests.helpers import ROOT
from tests.helpers.runtime_plans import HandPlan, expected_tokens, make_docs
from tests.helpers.small_plan import BATCH, SEQ, STEPS, WORLD, small_plan


@pytest.fixture(scope="module")
def hand(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> HandPlan:
    return small_plan(tmp_path_factory.mktemp("hand"), tiny_tokenizer)


def _batches(ds: PlanDataset, workers: int) -> list[dict]:
    return list(ds.loader(num_workers=workers))


@pytest.mark.parametrize("workers", [0, 1, 2], ids=lambda w: f"workers={w}")
@pytest.mark.parametrize("rank", [0, 1], ids=lambda r: f"rank={r}")
def test_tokens_equal_the_plan_in_order(
    hand: HandPlan, tiny_tokenizer: Path, rank: int, workers: int
) -> None:
    ds = PlanDataset(hand.path, rank=rank, world_size=WORLD, tokenizer=tiny_tokenizer)
    batches = _batches(ds, workers)
    assert [int(b["step"][0]) for b in batches] == list(range(STEPS))
    for step, b in enumerate(batches):
        assert b["input_ids"].shape == (BATCH, SEQ)
        assert torch.equal(b["input_ids"], torch.from_numpy(expected_tokens(hand, rank, step)))
        assert torch.equal(b["labels"][:, :-1], b["input_ids"][:, 1:])
        assert bool((b["labels"][:, -1] == -100).all())
    assert ds.state_dict()["next_step"] == STEPS


def test_pretokenized_equals_tokenizing(hand: HandPlan, tiny_tokenizer: Path) -> None:
    for rank in range(WORLD):
        a = _batches(
            PlanDataset(hand.path, rank=rank, world_size=WORLD, tokenizer=tiny_tokenizer, pretokenized=False),
            0,
        )
        b = _batches(PlanDataset(hand.path, rank=rank, world_size=WORLD, pretokenized=True), 0)
        assert len(a) == len(b) == STEPS
        for x, y in zip(a, b, strict=True):
            for key in ("input_ids", "labels", "domain_ids", "step"):
                assert torch.equal(x[key], y[key])


def test_union_over_ranks_is_the_global_step(hand: HandPlan) -> None:
    per_rank = [_batches(PlanDataset(hand.path, rank=r, world_size=WORLD), 0) for r in range(WORLD)]
    for step in range(STEPS):
        union = torch.cat([per_rank[r][step]["input_ids"].reshape(-1) for r in range(WORLD)])
        assert np.array_equal(union.numpy(), hand.global_steps[step])


def test_domain_token_shares_equal_the_plan(hand: HandPlan) -> None:
    per_rank = [_batches(PlanDataset(hand.path, rank=r, world_size=WORLD), 0) for r in range(WORLD)]
    with Plan.open(hand.path) as plan:
        for step in range(STEPS):
            counts = Counter()
            planned = Counter()
            for r in range(WORLD):
                counts.update(per_rank[r][step]["domain_ids"].reshape(-1).tolist())
                ent = plan.step_entries(r, step)
                for c, s, e in zip(
                    ent.component.tolist(), ent.token_start.tolist(), ent.token_end.tolist(), strict=True
                ):
                    planned[c] += e - s
            assert counts == planned
            assert [counts[c] for c in range(3)] == hand.quotas[step].tolist()


def test_provenance_slices_are_the_tokenizers_tokens(hand: HandPlan, tiny_tokenizer: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_tokenizer))
    eos = tok.token_to_id("<|endoftext|>")
    texts = {}
    for name in hand.components:
        for path in sorted((hand.path.parent / "corpus" / name).iterdir()):
            docs = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}[path.name[0]]
            for i, text in enumerate(make_docs(docs, 40)):
                texts[f"{name}/{path.name}#{i}"] = text
    ds = PlanDataset(hand.path, rank=1, world_size=WORLD, tokenizer=tiny_tokenizer, with_provenance=True)
    for b in _batches(ds, 2):
        for seq, slices in zip(b["input_ids"], b["provenance"], strict=True):
            parts = [
                (tok.encode(texts[sid], add_special_tokens=False).ids + [eos])[s:e] for sid, s, e in slices
            ]
            assert sum(parts, []) == seq.tolist()


def test_documents_output_lists_each_step(hand: HandPlan) -> None:
    ds = PlanDataset(hand.path, rank=0, world_size=WORLD, output="documents")
    steps = _batches(ds, 2)
    assert len(steps) == STEPS
    with Plan.open(hand.path) as plan:
        for step, docs in enumerate(steps):
            ent = plan.step_entries(0, step)
            assert [d["sample_id"] for d in docs] == [plan.sample_id(r) for r in ent.row]
            assert [(d["token_start"], d["token_end"]) for d in docs] == list(
                zip(ent.token_start.tolist(), ent.token_end.tolist(), strict=True)
            )
            assert {d["step"] for d in docs} == {step}
            assert all(d["text"] == hand.docs[int(r)] for d, r in zip(docs, ent.row, strict=True))
            assert all(d["domain"] == hand.components[d["domain_id"]] for d in docs)


def test_wrong_rank_or_world_size_is_refused(hand: HandPlan, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PlanError, match="world size 2, this job has world size 3") as err:
        PlanDataset(hand.path, rank=0, world_size=3)
    assert "--from-plan" in err.value.hint
    with pytest.raises(PlanError, match="rank 2 does not exist"):
        PlanDataset(hand.path, rank=2, world_size=2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert PlanDataset(hand.path).rank == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(PlanError, match="world size 4"):
        PlanDataset(hand.path)


def test_another_tokenizer_is_refused(hand: HandPlan, tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "examples"))
    from demo_tokenizer import train_tokenizer

    other = train_tokenizer(make_docs(9, 50), tmp_path / "other.json", vocab_size=300)
    with pytest.raises(PlanError, match="is not the tokenizer of the plan"):
        PlanDataset(hand.path, rank=0, world_size=WORLD, tokenizer=other, pretokenized=False)


def test_changed_corpus_file_fails_with_its_name(tmp_path: Path, tiny_tokenizer: Path) -> None:
    plan = small_plan(tmp_path, tiny_tokenizer)
    target = tmp_path / "corpus" / "web" / "a.jsonl"
    target.write_bytes(target.read_bytes().replace(b"alpha", b"ALPHA"))
    ds = PlanDataset(plan.path, rank=0, world_size=WORLD, tokenizer=tiny_tokenizer, pretokenized=False)
    with pytest.raises(PlanError, match=r"web/a\.jsonl: corpus file changed since indexing"):
        _batches(ds, 0)
    shutil.rmtree(tmp_path / "corpus" / "code")
    ds = PlanDataset(plan.path, rank=0, world_size=WORLD, output="documents")
    with pytest.raises(PlanError, match="missing|changed"):
        _batches(ds, 0)


def test_a_plan_replaced_after_the_dataset_was_made_is_refused(hand: HandPlan, tmp_path: Path) -> None:
    plan = tmp_path / "plan"
    shutil.copytree(hand.path, plan)
    ds = PlanDataset(plan, rank=0, world_size=WORLD, pretokenized=True)
    manifest = json.loads((plan / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 32  # recompiled in place: another plan at the same path
    (plan / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PlanError, match="the plan changed since the dataset was created") as exc:
        next(iter(ds))
    assert "create the PlanDataset again" in (exc.value.hint or "")


def test_a_flipped_token_id_is_an_error_naming_the_token_file(tmp_path: Path, tiny_tokenizer: Path) -> None:
    damaged = small_plan(tmp_path, tiny_tokenizer)
    token_dir = Path(json.loads((damaged.path / "manifest.json").read_text())["token_files"]["dir"])
    for path in token_dir.glob("*.bin"):
        data = bytearray(path.read_bytes())
        data[HEADER_SIZE] ^= 0x01  # the first id: every read of the file touches its block
        path.write_bytes(bytes(data))
    with pytest.raises(PlanError, match=r"tokens/\d+\.bin: block 0 .* fails its checksum"):
        _batches(PlanDataset(damaged.path, rank=0, world_size=WORLD, pretokenized=True), 0)

"""The loader path: compact steps cross worker processes and come back as the same batches, through
ds.loader(), a plain DataLoader and torchdata's StatefulDataLoader (checkpointed mid-epoch)."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from mixtera.runtime import PlanDataset
from mixtera.runtime.batches import StepBatch, StepDocuments
from tests.helpers.small_plan import BATCH, STEPS, WORLD, small_plan

pytestmark = pytest.mark.filterwarnings("ignore:.set_vital. is deprecated")  # inside torchdata 0.11


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    return small_plan(tmp_path_factory.mktemp("loader"), tiny_tokenizer).path


def _ds(plan: Path, output: str, provenance: bool = False) -> PlanDataset:
    return PlanDataset(plan, rank=1, world_size=WORLD, output=output, with_provenance=provenance)


def _plain(batch: object) -> object:
    """A batch as plain lists, dicts and tensors, for comparison."""
    if isinstance(batch, StepDocuments | list):
        return [dict(d) for d in batch]
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in dict(batch).items()}


def _same(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def expected(plan: Path) -> dict[str, list[object]]:
    """Every step of rank 1 in-process, as plain values."""
    return {
        "tokens": [_plain(b) for b in _ds(plan, "tokens", provenance=True).loader(num_workers=0)],
        "documents": [_plain(b) for b in _ds(plan, "documents").loader(num_workers=0)],
    }


@pytest.mark.parametrize("workers", [0, 2], ids=lambda w: f"workers={w}")
def test_plain_dataloader_equals_the_loader(plan: Path, expected: dict, workers: int) -> None:
    tokens = DataLoader(_ds(plan, "tokens", provenance=True), batch_size=BATCH, num_workers=workers)
    docs = DataLoader(_ds(plan, "documents"), batch_size=None, num_workers=workers)
    got_tokens = [_plain(b) for b in tokens]
    got_docs = list(docs)
    assert all(isinstance(d, StepDocuments) for d in got_docs)  # default_convert left it alone
    assert len(got_tokens) == len(got_docs) == STEPS
    assert all(_same(a, b) for a, b in zip(got_tokens, expected["tokens"], strict=True))
    assert [_plain(d) for d in got_docs] == expected["documents"]


def test_a_dataloader_rebuilt_from_the_loader_yields_the_same(plan: Path, expected: dict) -> None:
    """What accelerate and other wrappers do: a new DataLoader of loader.dataset and loader.collate_fn."""
    loader = _ds(plan, "tokens", provenance=True).loader()
    rebuilt = DataLoader(loader.dataset, batch_size=None, collate_fn=loader.collate_fn, num_workers=2)
    got = [_plain(b) for b in rebuilt]
    assert len(got) == STEPS and all(_same(a, b) for a, b in zip(got, expected["tokens"], strict=True))


def test_batches_are_views_of_one_buffer(plan: Path) -> None:
    batch = next(iter(_ds(plan, "tokens").loader(num_workers=2)))
    storages = {batch[k].untyped_storage().data_ptr() for k in ("input_ids", "labels", "domain_ids", "step")}
    assert len(storages) == 1
    assert batch["step"].tolist() == [0] * BATCH


def test_step_batch_crosses_compactly_unless_changed(plan: Path, expected: dict) -> None:
    batch = next(iter(_ds(plan, "tokens", provenance=True).loader()))
    assert len(pickle.dumps(batch)) < batch["input_ids"].numel() * 8  # not the int64 tensors
    back = pickle.loads(pickle.dumps(batch))
    assert type(back) is StepBatch and _same(_plain(back), expected["tokens"][0])
    batch["input_ids"] = batch["input_ids"] + 1  # the user's change travels too
    back = pickle.loads(pickle.dumps(batch))
    assert type(back) is dict and torch.equal(back["input_ids"], expected["tokens"][0]["input_ids"] + 1)
    assert _same(_plain(copy.copy(batch)), _plain(batch))


def test_collating_other_groupings_stacks(plan: Path, expected: dict) -> None:
    items = list(_ds(plan, "tokens", provenance=True))
    assert len(items) == STEPS * BATCH and all(type(it["step"]) is int for it in items)
    pairs = list(DataLoader(items, batch_size=2, collate_fn=PlanDataset.collate))  # across steps
    ids = torch.cat([p["input_ids"] for p in pairs])
    assert torch.equal(ids, torch.cat([b["input_ids"] for b in expected["tokens"]]))
    assert pairs[1]["step"].tolist() == [0, 1]
    assert pairs[0]["provenance"] == expected["tokens"][0]["provenance"][:2]
    items[0]["input_ids"] = torch.zeros_like(items[0]["input_ids"])  # a changed item is stacked
    first = PlanDataset.collate(items[:BATCH])
    assert type(first) is dict and int(first["input_ids"][0].abs().sum()) == 0
    assert torch.equal(first["input_ids"][1:], expected["tokens"][0]["input_ids"][1:])


def test_documents_cross_as_one_string(plan: Path, expected: dict) -> None:
    docs = next(iter(_ds(plan, "documents").loader()))
    assert len(docs) == len(expected["documents"][0])
    back = pickle.loads(pickle.dumps(docs))
    assert back == expected["documents"][0] and back.texts() == [d["text"] for d in back]
    assert docs[0] == expected["documents"][0][0] and docs[-2:] == expected["documents"][0][-2:]
    docs[0]["text"] = "changed"  # once used, the dicts are what crosses
    assert pickle.loads(pickle.dumps(docs))[0]["text"] == "changed"


@pytest.mark.parametrize("output", ["tokens", "documents"])
def test_stateful_dataloader_resumes_mid_epoch(plan: Path, expected: dict, output: str) -> None:
    batch_size = BATCH if output == "tokens" else None
    want = [{k: v for k, v in b.items() if k != "provenance"} for b in expected["tokens"]]
    want = want if output == "tokens" else expected["documents"]

    def loader() -> StatefulDataLoader:
        return StatefulDataLoader(_ds(plan, output), batch_size=batch_size, num_workers=2)

    first, seen = loader(), []
    for batch in first:
        seen.append(_plain(batch))
        if len(seen) == 3:
            state = copy.deepcopy(first.state_dict())
            break
    del first
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [_plain(b) for b in resumed]
    assert len(seen) + len(rest) == STEPS
    assert all(_same(a, b) for a, b in zip(seen + rest, want, strict=True))

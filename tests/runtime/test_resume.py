"""Resume equality: run N steps, save, rebuild, load, and the next M batches equal an uninterrupted run."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mixtera.runtime import PlanDataset
from mixtera.runtime import dataset as dataset_module
from mixtera.runtime.errors import PlanError, StateError
from tests.helpers.small_plan import STEPS, WORLD, small_plan


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    return small_plan(tmp_path_factory.mktemp("resume"), tiny_tokenizer).path


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _make(plan: Path, tok: Path, output: str, rank: int) -> PlanDataset:
    return PlanDataset(
        plan,
        rank=rank,
        world_size=WORLD,
        tokenizer=tok if output == "tokens" else None,
        output=output,
        with_provenance=output == "tokens",
        pretokenized=False,
    )


@pytest.mark.parametrize("output", ["tokens", "documents"])
@pytest.mark.parametrize("workers", [0, 1, 2], ids=lambda w: f"workers={w}")
@pytest.mark.parametrize("rank", [0, 1], ids=lambda r: f"rank={r}")
def test_resume_equals_uninterrupted(
    plan: Path, tiny_tokenizer: Path, output: str, workers: int, rank: int
) -> None:
    full = list(_make(plan, tiny_tokenizer, output, rank).loader(num_workers=workers))
    for n in (0, 3, STEPS - 1):
        first = _make(plan, tiny_tokenizer, output, rank)
        seen = []
        for batch in first.loader(num_workers=workers) if n else ():
            seen.append(batch)  # a batch the loader handed out counts as consumed
            if len(seen) == n:
                break
        state = copy.deepcopy(first.state_dict())
        assert state["next_step"] == n
        resumed = _make(plan, tiny_tokenizer, output, rank)
        resumed.load_state_dict(state)
        rest = list(resumed.loader(num_workers=(workers + 1) % 3))  # any worker count may resume
        assert _equal(seen + rest, full)


def test_worker_states_resume_like_stateful_dataloader(
    plan: Path, tiny_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-worker protocol torchdata's StatefulDataLoader uses: state_dict/load_state_dict in workers."""
    workers = 2
    full = list(_make(plan, tiny_tokenizer, "tokens", 0).loader(num_workers=0))
    states = []
    for wid in range(workers):
        monkeypatch.setattr(
            dataset_module, "get_worker_info", lambda w=wid: SimpleNamespace(id=w, num_workers=workers)
        )
        ds = _make(plan, tiny_tokenizer, "tokens", 0)
        it = iter(ds)
        for _ in range(ds.batch_size * 2):  # two steps of this worker
            next(it)
        states.append(ds.state_dict())
    assert [s["next_step"] for s in states] == [4, 5]
    for wid in range(workers):
        monkeypatch.setattr(
            dataset_module, "get_worker_info", lambda w=wid: SimpleNamespace(id=w, num_workers=workers)
        )
        ds = _make(plan, tiny_tokenizer, "tokens", 0)
        ds.load_state_dict(states[wid])
        items = list(ds)
        steps = sorted({it["step"] for it in items})
        assert steps == list(range(4 + wid, STEPS, workers))
        for step in steps:
            got = torch.stack([it["input_ids"] for it in items if it["step"] == step])
            assert torch.equal(got, full[step]["input_ids"])
    monkeypatch.setattr(dataset_module, "get_worker_info", lambda: SimpleNamespace(id=0, num_workers=3))
    ds = _make(plan, tiny_tokenizer, "tokens", 0)
    ds.load_state_dict(states[0])
    with pytest.raises(PlanError, match="2 loader workers cannot resume with 3"):
        next(iter(ds))


def test_foreign_states_are_refused(plan: Path, tiny_tokenizer: Path, tmp_path: Path) -> None:
    ds = _make(plan, tiny_tokenizer, "tokens", 0)
    state = ds.state_dict()
    other = small_plan(tmp_path, tiny_tokenizer, seed=99)
    with pytest.raises(StateError, match="belongs to plan") as err:
        _make(other.path, tiny_tokenizer, "tokens", 0).load_state_dict(state)
    assert "--from-plan" in err.value.hint
    with pytest.raises(StateError, match="world size 4") as err:
        ds.load_state_dict({**state, "world_size": 4})
    assert "--from-plan" in err.value.hint
    with pytest.raises(StateError, match="rank 1's"):
        ds.load_state_dict({**state, "rank": 1})
    with pytest.raises(StateError, match="tokenizer"):
        ds.load_state_dict({**state, "tokenizer_blake2b": "0" * 32})
    with pytest.raises(StateError, match="output"):
        _make(plan, tiny_tokenizer, "documents", 0).load_state_dict(state)
    with pytest.raises(StateError, match="not a mixtera runtime state"):
        ds.load_state_dict({"next_step": 3})

"""Elastic resume: a state of OLD at step S continues in a plan compiled --from-plan OLD --from-step S."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mixtera.runtime import PlanDataset
from mixtera.runtime.errors import StateError
from tests.helpers.runtime_plans import make_docs, write_corpus_file

OLD_WORLD, OLD_BATCH, STEPS, S = 2, 2, 8, 3  # S is inside a segment (segment_steps = 2)
MIXTURE = f"""[mixture]
index = "index"
seed = 5
unit = "tokens"
steps = {STEPS}
segment_steps = 2

[topology]
world_size = {OLD_WORLD}
batch_size = {OLD_BATCH}
seq_len = 32

[components.web]
where = "source == 'web'"
weight = 0.6

[components.code]
where = "source == 'code'"
weight = 0.4
"""


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    from mixtera.planner.compile.elastic import repartition
    from mixtera.planner.compile.pipeline import compile_file
    from mixtera.planner.index.build import build_index
    from mixtera.planner.mixture.spec import load_spec

    root = tmp_path_factory.mktemp("elastic")
    for name, seed in (("web", 11), ("code", 12)):
        write_corpus_file(root / "corpus" / name / "part.jsonl", make_docs(seed, 40), "jsonl", nested=False)
    build_index([root / "corpus"], root / "index", tokenizer=tiny_tokenizer, processes=1)
    (root / "mix.toml").write_text(MIXTURE)
    compile_file(root / "mix.toml", root / "old")
    for world in (1, 4):
        repartition(root / "old", load_spec(root / "mix.toml"), root / f"new{world}", world_size=world,
                    from_step=S)
    return root


def _ds(plan: Path, tok: Path, rank: int, world: int, output: str = "tokens") -> PlanDataset:
    return PlanDataset(plan, rank=rank, world_size=world, tokenizer=tok if output == "tokens" else None,
                       output=output, pretokenized=False)


def _old_state(plans: Path, tok: Path, rank: int, steps: int, output: str = "tokens") -> dict:
    ds = _ds(plans / "old", tok, rank, OLD_WORLD, output)
    for i, _ in enumerate(ds.loader()):
        if i + 1 == steps:
            break
    return copy.deepcopy(ds.state_dict())


def _global(batches: list[dict], key: str = "input_ids") -> torch.Tensor:
    """One step's sequences of all ranks, rank after rank: the plan's global step."""
    return torch.cat([b[key] for b in batches])


@pytest.mark.parametrize("world", [1, 4])
@pytest.mark.parametrize("workers", [0, 2], ids=lambda w: f"workers={w}")
def test_resume_with_another_world_size_continues_the_global_steps(
    plans: Path, tiny_tokenizer: Path, world: int, workers: int
) -> None:
    old = [list(_ds(plans / "old", tiny_tokenizer, r, OLD_WORLD).loader()) for r in range(OLD_WORLD)]
    resumed = []
    for rank in range(world):
        state = _old_state(plans, tiny_tokenizer, rank % OLD_WORLD, S)  # any old rank's state
        ds = _ds(plans / f"new{world}", tiny_tokenizer, rank, world)
        ds.load_state_dict(state)
        batches = list(ds.loader(num_workers=workers))
        assert [int(b["step"][0]) for b in batches] == list(range(S, STEPS))
        assert ds.state_dict()["next_step"] == STEPS and ds.state_dict()["world_size"] == world
        resumed.append(batches)
    for i, step in enumerate(range(S, STEPS)):
        for key in ("input_ids", "labels", "domain_ids"):
            want = _global([old[r][step] for r in range(OLD_WORLD)], key)
            assert torch.equal(_global([resumed[m][i] for m in range(world)], key), want)


def test_documents_resume_with_another_world_size(plans: Path, tiny_tokenizer: Path) -> None:
    old = [list(_ds(plans / "old", None, r, OLD_WORLD, "documents").loader()) for r in range(OLD_WORLD)]
    new = []
    for rank in range(4):
        ds = _ds(plans / "new4", None, rank, 4, "documents")
        ds.load_state_dict(_old_state(plans, tiny_tokenizer, 1, S, "documents"))
        new.append(list(ds.loader()))
    key = ("sample_id", "token_start", "token_end", "domain", "text")

    def pieces(docs: list[dict]) -> list[tuple]:
        return [tuple(d[k] for k in key) for d in docs]

    for i, step in enumerate(range(S, STEPS)):
        want = [p for r in range(OLD_WORLD) for p in pieces(old[r][step])]
        got = [p for m in range(4) for p in pieces(new[m][i])]
        # a document cut at a new rank boundary comes back as two slices of the same tokens
        assert _merge(got) == _merge(want)


def _merge(pieces: list[tuple]) -> list[tuple]:
    out: list[tuple] = []
    for p in pieces:
        if out and out[-1][0] == p[0] and out[-1][2] == p[1]:
            out[-1] = (p[0], out[-1][1], p[2], *p[3:])
        else:
            out.append(p)
    return out


def test_a_state_at_another_step_is_refused_naming_the_step(plans: Path, tiny_tokenizer: Path) -> None:
    state = _old_state(plans, tiny_tokenizer, 0, S + 1)
    with pytest.raises(StateError, match=f"from step {S}") as err:
        _ds(plans / "new4", tiny_tokenizer, 0, 4).load_state_dict(state)
    assert f"--from-step {S + 1}" in err.value.hint


def test_worker_states_of_the_old_plan_resume_their_share(plans: Path, tiny_tokenizer: Path) -> None:
    state = _old_state(plans, tiny_tokenizer, 0, S)
    ds = _ds(plans / "new1", tiny_tokenizer, 0, 1)
    ds.load_state_dict({**state, "stride": 2, "next_step": S + 1, "worker": 0})  # a worker's first step
    ds.load_state_dict({**state, "stride": 2, "next_step": S, "worker": 1})
    with pytest.raises(StateError, match=f"from step {S}"):
        ds.load_state_dict({**state, "stride": 2, "next_step": S + 2})


def test_unrelated_states_are_still_refused(plans: Path, tiny_tokenizer: Path) -> None:
    state = _old_state(plans, tiny_tokenizer, 0, S)
    new = _ds(plans / "new4", tiny_tokenizer, 0, 4)
    with pytest.raises(StateError, match="world size 3"):
        new.load_state_dict({**state, "world_size": 3})  # not the old plan's topology
    with pytest.raises(StateError, match="rank 2's"):
        new.load_state_dict({**state, "rank": 2})
    with pytest.raises(StateError, match="belongs to plan"):
        new.load_state_dict({**state, "plan_fingerprint": "0" * 32})
    with pytest.raises(StateError, match="output="):
        new.load_state_dict({**state, "output": "documents"})
    other_state = _ds(plans / "new1", tiny_tokenizer, 0, 1).state_dict()  # a sibling re-partition
    with pytest.raises(StateError, match="belongs to plan"):
        new.load_state_dict(other_state)
    # the old plan itself does not take the new plan's states
    new.load_state_dict(state)
    with pytest.raises(StateError, match="belongs to plan"):
        _ds(plans / "old", tiny_tokenizer, 0, OLD_WORLD).load_state_dict(new.state_dict())

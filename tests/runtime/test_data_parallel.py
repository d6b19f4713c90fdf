"""Plans are per data-parallel rank: under tensor parallelism both TP ranks of a DP group get one batch.

A real 4-process gloo job (DP=2 x TP=2) replays a 2-rank plan through ``PlanDataset(device_mesh=...)``
and ``process_group=``, and reports per-domain sums that must count every batch once.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mixtera.runtime import PlanDataset
from mixtera.runtime.data_parallel import data_parallel_rank, mesh_data_group_ranks
from mixtera.runtime.errors import PlanError
from mixtera.runtime.format.feedback_log import read_log
from mixtera.runtime.format.plan_dir import log_path
from tests.helpers import dp_job
from tests.helpers.small_plan import STEPS, WORLD, small_plan

pytestmark = pytest.mark.slow
MESHES = {  # (shape, names): process r sits at the row-major coordinate of r
    "dp-x-tp": ((2, 2), ("dp", "tp")),
    "tp-x-dp": ((2, 2), ("tp", "dp")),
    "torchtitan": ((1, 2, 2), ("dp_replicate", "dp_shard", "tp")),
}


def _run_job(tmp: Path, plan: Path, tokenizer: Path, mesh: str, how: str) -> list[dict]:
    shape, names = MESHES[mesh]
    if how == "group":
        names = tuple("dp" if n.startswith("dp") else n for n in names)
    out = tmp / "out"
    out.mkdir()
    args = (4, f"file://{tmp / 'rendezvous'}", str(plan), str(tokenizer), shape, names, how, str(out))
    mp.spawn(dp_job.run, args=args, nprocs=4, join=True)
    return [torch.load(out / f"rank-{r}.pt") for r in range(4)]


@pytest.mark.parametrize(("mesh", "how"), [("dp-x-tp", "mesh"), ("tp-x-dp", "mesh"), ("torchtitan", "mesh"),
                                           ("dp-x-tp", "group")])
def test_tensor_parallel_peers_get_their_data_parallel_ranks_batches(
    tmp_path: Path, tiny_tokenizer: Path, mesh: str, how: str
) -> None:
    plan = small_plan(tmp_path / "p", tiny_tokenizer).path
    seen = _run_job(tmp_path, plan, tiny_tokenizer, mesh, how)
    shape, names = MESHES[mesh]
    coords = [np.unravel_index(r, shape) for r in range(4)]
    dp_axes = [i for i, n in enumerate(names) if n.startswith("dp")]
    for r, got in enumerate(seen):
        dp_coord, dp_shape = [coords[r][a] for a in dp_axes], [shape[a] for a in dp_axes]
        expected_rank = int(np.ravel_multi_index(dp_coord, dp_shape))
        assert (got["dp_rank"], got["dp_world"]) == (expected_rank, WORLD)
        alone = PlanDataset(plan, rank=expected_rank, world_size=WORLD, tokenizer=tiny_tokenizer)
        reference = [b["input_ids"] for b in alone.loader(num_workers=0)]
        assert len(got["input_ids"]) == STEPS
        assert all(torch.equal(a, b) for a, b in zip(got["input_ids"], reference, strict=True))
    # The log counts each global step's tokens once: 2 DP ranks x batch x seq_len, not 4 processes' worth.
    manifest = json.loads((plan / "manifest.json").read_bytes())
    records = read_log(log_path(plan), len(manifest["components"]), manifest["fingerprint"])
    topo = manifest["topology"]
    assert list(records.step) == list(range(STEPS))
    assert np.all(records.tokens.sum(axis=1) == topo["world_size"] * topo["batch_size"] * topo["seq_len"])


class FakeMesh(SimpleNamespace):
    """The part of DeviceMesh that the rank lookup reads, for error cases that need no processes."""

    def size(self, dim: int | None = None) -> int:
        return int(np.prod(self.shape)) if dim is None else self.shape[dim]

    def get_local_rank(self, dim: str | int | None = None) -> int:
        return self.coords[self.mesh_dim_names.index(dim)]


def test_a_mesh_without_a_data_parallel_dimension_is_refused_with_a_hint() -> None:
    mesh = FakeMesh(mesh_dim_names=("tp", "pp"), ndim=2, shape=(2, 2), coords=(0, 1))
    with pytest.raises(PlanError, match="none of them is data-parallel") as err:
        data_parallel_rank(mesh)
    assert "mesh_dim_names" in err.value.hint


def test_the_data_parallel_rank_flattens_torchtitans_batch_dimensions() -> None:
    mesh = FakeMesh(mesh_dim_names=("dp_replicate", "dp_shard", "cp", "tp"), ndim=4, shape=(2, 3, 2, 2),
                    coords=(1, 2, 0, 1))
    dp = data_parallel_rank(mesh)
    assert (dp.rank, dp.world_size, dp.dims) == (1 * 3 + 2, 6, ("dp_replicate", "dp_shard"))


def test_every_replica_coordinate_gets_one_data_parallel_group() -> None:
    mesh = SimpleNamespace(mesh_dim_names=("dp", "tp"), ndim=2, mesh=torch.arange(4).reshape(2, 2))
    assert mesh_data_group_ranks(mesh) == [[0, 2], [1, 3]]


def test_a_data_parallel_size_that_does_not_match_the_plan_names_its_source(
    tmp_path: Path, tiny_tokenizer: Path
) -> None:
    plan = small_plan(tmp_path, tiny_tokenizer).path
    mesh = FakeMesh(mesh_dim_names=("dp", "tp"), ndim=2, shape=(4, 2), coords=(3, 0))
    expected = r"world size 2, this job has world size 4 \(.*device mesh's dp"
    with pytest.raises(PlanError, match=expected) as err:
        PlanDataset(plan, tokenizer=tiny_tokenizer, device_mesh=mesh)
    assert "--world-size 4" in err.value.hint

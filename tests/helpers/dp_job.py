"""A 4-process gloo job for the data-parallel tests: every process replays its plan rank and reports.

Run by ``torch.multiprocessing.spawn`` from tests/runtime/test_data_parallel.py; each process writes
what it saw to ``OUT/rank-N.pt``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from mixtera.runtime import FeedbackReporter, PlanDataset


def run(rank: int, world: int, rendezvous: str, plan: str, tokenizer: str, shape: tuple[int, ...],
        names: tuple[str, ...], how: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=names)
        kwargs = {"device_mesh": mesh} if how == "mesh" else {"process_group": mesh.get_group("dp")}
        ds = PlanDataset(plan, tokenizer=tokenizer, **kwargs)
        batches = list(ds.loader(num_workers=0))
        with FeedbackReporter(plan, fsync=False, **kwargs) as fb:
            for b in batches:
                tokens = torch.bincount(b["domain_ids"].reshape(-1), minlength=len(ds.domains))
                fb.report(int(b["step"][0]), tokens=tokens.double(), loss_sum=tokens.double())
        torch.save({"dp_rank": ds.rank, "dp_world": ds.world_size,
                    "input_ids": [b["input_ids"] for b in batches]}, Path(out) / f"rank-{rank}.pt")
    finally:
        dist.destroy_process_group()

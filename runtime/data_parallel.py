"""Which data-parallel rank this process is: plans are per data-parallel rank, not per process.

Under tensor, pipeline or context parallelism several processes share one data-parallel rank and
must get identical batches. The rank comes from, in this order:

1. ``device_mesh=``: the mesh's data-parallel dimension(s), by name: ``dp`` if the mesh has it, else
   the batch dimensions of torchtitan's meshes, ``dp_replicate`` and ``dp_shard`` (those present,
   flattened in mesh order). A 1-D mesh without names is all data-parallel. Other dimensions
   (``tp``, ``pp``, ``cp``, ...) replicate the data.
2. ``process_group=``: the data-parallel group's rank and size.
3. ``torch.distributed``'s global rank and world size when initialised, else ``RANK`` / ``WORLD_SIZE``,
   else (0, 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixtera.runtime.errors import PlanError

DP_DIM = "dp"
BATCH_DIMS = ("dp_replicate", "dp_shard")  # torchtitan's names for the dimensions that split the batch


@dataclass(frozen=True)
class DataParallelRank:
    rank: int
    world_size: int
    source: str  # where the rank came from, for error messages
    dims: tuple[str, ...] = ()  # the mesh dimensions that make up the data-parallel rank


def data_parallel_rank(device_mesh: Any | None = None, process_group: Any | None = None) -> DataParallelRank:
    if device_mesh is not None and process_group is not None:
        raise PlanError("pass device_mesh= or process_group=, not both",
                        "the data-parallel group follows from either one")
    if device_mesh is not None:
        return _of_mesh(device_mesh)
    import torch.distributed as dist

    if process_group is not None:
        return DataParallelRank(dist.get_rank(process_group), dist.get_world_size(process_group),
                                "the data-parallel process group")
    if dist.is_available() and dist.is_initialized():
        return DataParallelRank(dist.get_rank(), dist.get_world_size(), "torch.distributed")
    return DataParallelRank(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                            "RANK / WORLD_SIZE")


def mesh_data_dims(device_mesh: Any) -> tuple[str, ...]:
    """The names of ``device_mesh``'s data-parallel dimensions (empty tuple: a 1-D unnamed mesh)."""
    names = tuple(device_mesh.mesh_dim_names or ())
    if DP_DIM in names:
        return (DP_DIM,)
    batch = tuple(n for n in names if n in BATCH_DIMS)
    if batch:
        return batch
    if not names and device_mesh.ndim == 1:
        return ()
    raise PlanError(f"the device mesh has dimensions {names or device_mesh.ndim} but none of them is "
                    f"data-parallel (looked for {DP_DIM!r}, then {' and '.join(map(repr, BATCH_DIMS))})",
                    "name the data-parallel dimension 'dp' (init_device_mesh(..., mesh_dim_names=...)), "
                    "or pass process_group= with the data-parallel group")


def _of_mesh(device_mesh: Any) -> DataParallelRank:
    dims = mesh_data_dims(device_mesh)
    if not dims:
        return DataParallelRank(device_mesh.get_local_rank(), device_mesh.size(), "the device mesh")
    rank, world = 0, 1
    names = list(device_mesh.mesh_dim_names)
    for dim in dims:  # row-major over the data dimensions, as torchtitan flattens them
        size = device_mesh.size(names.index(dim))
        rank, world = rank * size + device_mesh.get_local_rank(dim), world * size
    return DataParallelRank(rank, world, f"the device mesh's {'x'.join(dims)} dimensions", dims)


def mesh_data_group_ranks(device_mesh: Any) -> list[list[int]]:
    """Global ranks of every data-parallel group of ``device_mesh`` (one per replica coordinate)."""
    dims = mesh_data_dims(device_mesh)
    mesh = np.asarray(device_mesh.mesh.tolist())
    if not dims:
        return [mesh.reshape(-1).tolist()]
    names = list(device_mesh.mesh_dim_names)
    data_axes = [names.index(d) for d in dims]
    other_axes = [i for i in range(mesh.ndim) if i not in data_axes]
    moved = np.transpose(mesh, other_axes + data_axes)
    return moved.reshape(-1, int(np.prod([mesh.shape[a] for a in data_axes]))).tolist()

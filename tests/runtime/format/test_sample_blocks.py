"""Block checksums of samples.npy: a rank hashes only the blocks it gathers rows from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mixtera.planner.compile.pipeline import compile_file
from mixtera.runtime.errors import PlanError
from mixtera.runtime.format.plan_dir import SAMPLE_BLOCKS, SAMPLES
from mixtera.runtime.format.sample_blocks import BLOCK_BYTES
from mixtera.runtime.plan import CHECKSUMS, Plan, manifest_checksum
from tests.helpers.synthetic_index import scale_mixture, write_scale_index


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("blocks")
    index = write_scale_index(root / "index", 20_000, components=4, files=3, tokens=(5, 60))
    (root / "mix.toml").write_text(scale_mixture(index, 8, components=4, world_size=4, batch_size=2,
                                                 seq_len=32, segment_steps=4))
    compile_file(root / "mix.toml", root / "plan")
    return root / "plan"


def _copy(plan: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(plan, tmp / "plan"))


def _blocks(rows: np.ndarray) -> set[int]:
    """Blocks holding a byte of ``rows`` (40-byte rows after a 128-byte npy header)."""
    return {int((128 + r * 40) // BLOCK_BYTES) for r in rows} | {int((128 + r * 40 + 39) // BLOCK_BYTES)
                                                                 for r in rows}


def _touched_rows(plan: Path) -> np.ndarray:
    with Plan.open(plan) as p:
        return p.resolve(p.segment(0, 0)).row


def test_a_rank_hashes_only_the_blocks_of_the_rows_it_resolves(compiled: Path) -> None:
    size = (compiled / SAMPLES).stat().st_size
    assert size > 150 * BLOCK_BYTES  # 20,000 rows of 40 bytes
    with Plan.open(compiled) as p:
        rows = p.resolve(p.segment(0, 0)).row
        assert p.sample_bytes_read == len(_blocks(rows)) * BLOCK_BYTES < size // 4


def test_a_flipped_bit_is_found_in_the_block_read_and_only_there(compiled: Path, tmp_path: Path) -> None:
    rows = _touched_rows(compiled)
    plan = _copy(compiled, tmp_path)
    data = bytearray((plan / SAMPLES).read_bytes())
    untouched = sorted(set(range(len(data) // BLOCK_BYTES)) - _blocks(rows))
    data[untouched[len(untouched) // 2] * BLOCK_BYTES + 7] ^= 0x10
    (plan / SAMPLES).write_bytes(bytes(data))
    with Plan.open(plan) as p:
        np.testing.assert_array_equal(p.resolve(p.segment(0, 0)).row, rows)  # nothing it read is damaged
    at = int((128 + rows[0] * 40) // BLOCK_BYTES) * BLOCK_BYTES + 3
    data[at] ^= 0x01
    (plan / SAMPLES).write_bytes(bytes(data))
    with Plan.open(plan) as p, pytest.raises(PlanError, match=rf"samples.npy: bytes {at - 3}\.\.\d+ differ"):
        p.resolve(p.segment(0, 0))


def test_damaged_block_checksums_are_refused(compiled: Path, tmp_path: Path) -> None:
    plan = _copy(compiled, tmp_path)
    data = bytearray((plan / SAMPLE_BLOCKS).read_bytes())
    data[-1] ^= 0x01
    (plan / SAMPLE_BLOCKS).write_bytes(bytes(data))
    with Plan.open(plan) as p, pytest.raises(PlanError, match="samples.blocks.npy: its content hash differs"):
        p.resolve(p.segment(0, 0))


def test_a_plan_of_format_1_1_is_still_hashed_whole(compiled: Path, tmp_path: Path) -> None:
    plan = _copy(compiled, tmp_path)
    (plan / SAMPLE_BLOCKS).unlink()
    manifest = json.loads((plan / "manifest.json").read_bytes())
    manifest["format_version"] = "1.1"
    del manifest[CHECKSUMS][SAMPLE_BLOCKS]
    manifest[CHECKSUMS]["manifest"] = manifest_checksum(manifest)
    (plan / "manifest.json").write_text(json.dumps(manifest))
    with Plan.open(plan) as p:
        assert len(p.resolve(p.segment(0, 0))) > 0
        assert p.sample_bytes_read == (plan / SAMPLES).stat().st_size
    data = bytearray((plan / SAMPLES).read_bytes())
    data[-1] ^= 0x01
    (plan / SAMPLES).write_bytes(bytes(data))
    with Plan.open(plan) as p, pytest.raises(PlanError, match="samples.npy: its content hash differs"):
        p.resolve(p.segment(0, 0))

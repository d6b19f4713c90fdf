"""Benchmark `mixtera compile`: a synthetic index of 10 M samples, 8 components, 256 ranks.

Prints plan entries/s (packing alone, and packing + encoding + writing), peak memory, bytes per entry
on disk and the time to seek to the last step, with ratios against baselines measured in this
process: the keyed shuffle alone (``permute`` over as many positions as the plan has documents) and
``np.argsort`` of as many int64 keys as the plan has entries.

    .venv/bin/python bench/compile.py [--samples 10000000] [--steps 2000]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from synthetic_index import write_synthetic_index  # noqa: E402

from planner.compile import compile_plan  # noqa: E402
from planner.index import load_index  # noqa: E402
from planner.plan_manifest import manifest_of, needed_columns  # noqa: E402
from planner.plan_writer import write_plan  # noqa: E402
from planner.spec import parse_spec  # noqa: E402
from runtime.plan import Plan  # noqa: E402
from runtime.shuffle import permute  # noqa: E402

SOURCES = ("web", "code", "books", "wiki", "news", "papers", "forum", "legal")
DATA = ROOT / "bench" / "data"


def mixture(index: Path, steps: int) -> str:
    comps = "\n".join(f"[components.{s}]\nwhere = \"source == '{s}'\"\nweight = {w}\n"
                      for s, w in zip(SOURCES, (0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05), strict=True))
    return f"""
[mixture]
index = "{index}"
seed = 1
steps = {steps}
segment_steps = 100
[topology]
world_size = 256
batch_size = 8
seq_len = 2048
{comps}"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10_000_000)
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    index_dir = DATA / f"index-{args.samples}"
    if not (index_dir / "manifest.json").exists():
        t = time.perf_counter()
        write_synthetic_index(index_dir, args.samples, files=64, tokens=(20, 900), sources=SOURCES)
        print(f"generated index of {args.samples:,} samples in {time.perf_counter() - t:.1f} s")
    spec = parse_spec(mixture(index_dir, args.steps), file="bench.toml")
    index = load_index(index_dir, columns=needed_columns(spec))

    t0 = time.perf_counter()
    plan = compile_plan(spec, index)
    t_prepare = time.perf_counter() - t0
    t0 = time.perf_counter()
    entries = docs = 0
    for _, block in plan.blocks():
        entries += int(block.counts.sum())
    t_pack = time.perf_counter() - t0
    docs = int(sum(c.used for c in plan.components) / np.mean([s.mean() for s in plan.streams.doc_lengths]))

    out = DATA / "plan"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    written = write_plan(out, manifest=manifest_of(plan, index), samples=plan.samples, quotas=plan.quotas,
                         weights=plan.weights, blocks=plan.blocks())
    t_write = time.perf_counter() - t0

    t0 = time.perf_counter()
    with Plan.open(out) as p:
        last = p.step_entries(255, p.steps - 1)
    t_seek = time.perf_counter() - t0

    positions = np.arange(docs, dtype=np.int64) % 1_250_000
    t0 = time.perf_counter()
    permute(positions, 1_250_000, 12345)
    t_perm = time.perf_counter() - t0
    keys = np.random.default_rng(0).integers(0, 2**40, entries)
    t0 = time.perf_counter()
    np.argsort(keys)
    t_sort = time.perf_counter() - t0

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"plan: {entries:,} entries, {args.steps} steps, 256 ranks, 8 components, ~{docs:,} documents")
    print(f"prepare (match components, quotas, sample table): {t_prepare:.2f} s")
    print(f"packing alone:       {entries / t_pack / 1e6:6.2f} M entries/s  ({t_pack:.2f} s)")
    print(f"pack+encode+write:   {entries / t_write / 1e6:6.2f} M entries/s  ({t_write:.2f} s)")
    print(f"baseline permute of {docs:,} positions: {t_perm:.2f} s -> packing / permute = "
          f"{t_pack / t_perm:.2f}x the shuffle's time")
    print(f"baseline argsort of {entries:,} keys: {t_sort:.2f} s -> packing / argsort = "
          f"{t_pack / t_sort:.2f}x")
    print(f"bytes per entry (rank files): {written.bytes_per_entry:.3f}; plan on disk: "
          f"{written.bytes_on_disk / 1e6:.1f} MB")
    print(f"seek to the last step (open plan, read + resolve rank 255's last segment): "
          f"{t_seek * 1e3:.1f} ms ({len(last)} entries)")
    print(f"peak RSS: {peak:.0f} MB")


if __name__ == "__main__":
    main()

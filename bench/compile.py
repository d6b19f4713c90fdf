"""Benchmark `mixtera compile`: a synthetic index of 10 M samples, 8 components, 256 ranks.

Prints plan entries/s for packing alone and end to end (packing + encoding + compressing +
writing the plan directory), peak memory, bytes per entry on disk and the time to seek to the last
step, with ratios against baselines measured in this process on the same sizes: ``np.argsort`` and
``np.random.permutation`` of as many values as the plan has entries, the keyed shuffle alone
(``permute`` over as many positions as the plan has documents), and a raw write + fsync of as
many bytes as the plan directory holds.

    .venv/bin/python bench/compile.py [--samples 10000000] [--steps 1000] [--profile]
    .venv/bin/python bench/compile.py --images 2000000 [--profile]

``--profile`` runs the end-to-end compile under cProfile and prints the top functions (by own
time, main thread; the packing and compression threads show up as waits).

``--images N`` benchmarks packing whole samples instead (no index needed): N image-text samples of
one image (576 tokens, LLaVA's) and a 5..60 token caption, half of every step's tokens, beside text
documents of 20..899 tokens, for 64 ranks x 4 sequences x 4,096 tokens; it prints packing entries/s
of the plan (``plan_steps``, every image-text sample whole) against packing the same quotas over the
same streams with every member text (the text packer, cutting documents at sequence ends), and with
``--profile`` the top functions of the whole-sample packing.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers: the builders the tests use too

from bench.scale import warm_up_kernels  # noqa: E402
from mixtera.planner.compile.packing import PlanState, Streams, compact_lengths, plan_steps  # noqa: E402
from mixtera.planner.compile.pipeline import manifest_of, needed_columns  # noqa: E402
from mixtera.planner.compile.plan_arrays import CompiledPlan, compile_plan  # noqa: E402
from mixtera.planner.compile.quotas import largest_remainder  # noqa: E402
from mixtera.planner.compile.writer import WrittenPlan, write_plan  # noqa: E402
from mixtera.planner.index import load_index  # noqa: E402
from mixtera.planner.mixture.spec import parse_spec  # noqa: E402
from mixtera.runtime.errors import MixteraUserError  # noqa: E402
from mixtera.runtime.plan import Plan  # noqa: E402
from mixtera.runtime.shuffle import permute  # noqa: E402
from tests.helpers.synthetic_index import BENCH_SOURCES, bench_mixture, write_synthetic_index  # noqa: E402

DATA = ROOT / "bench" / "data"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(samples: int, steps: int) -> tuple[dict[str, Any], CompiledPlan, float]:
    index_dir = DATA / f"index-{samples}"
    spec = None
    for attempt in range(2):
        if attempt or not (index_dir / "manifest.json").exists():
            shutil.rmtree(index_dir, ignore_errors=True)  # missing, or written by an older mixtera
            t = time.perf_counter()
            write_synthetic_index(index_dir, samples, files=64, tokens=(20, 900), sources=BENCH_SOURCES)
            print(f"generated index of {samples:,} samples in {time.perf_counter() - t:.1f} s")
        try:
            spec = parse_spec(bench_mixture(index_dir, steps, batch=8, seq_len=2048), file="bench.toml")
            index = load_index(index_dir, columns=needed_columns(spec))
            break
        except MixteraUserError:
            if attempt:
                raise
    t0 = time.perf_counter()
    plan = compile_plan(spec, index)
    t_prepare = time.perf_counter() - t0
    manifest = manifest_of(plan, index)
    del index  # as `mixtera compile` does: free the index tables before packing
    pa.default_memory_pool().release_unused()
    return manifest, plan, t_prepare


def write(out: Path, plan: CompiledPlan, manifest: dict[str, Any],
          profile: bool) -> tuple[WrittenPlan, float]:
    shutil.rmtree(out, ignore_errors=True)
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    written = write_plan(out, manifest=manifest, samples=plan.samples, quotas=plan.quotas,
                         weights=plan.weights, blocks=plan.blocks())
    if prof:
        prof.disable()
    elapsed = time.perf_counter() - t0
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return written, elapsed


def raw_write(path: Path, size: int) -> float:
    """Seconds to write ``size`` bytes and fsync them: the disk's share of any plan write."""
    data = np.random.default_rng(0).integers(0, 256, min(size, 64 << 20), dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(data[: min(left, len(data))])
            left -= len(data)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - t0
    path.unlink()
    return elapsed


def timed(fn: object, *args: object) -> float:
    t0 = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - t0


IMAGE_TOKENS = 576
IMAGE_TOPOLOGY = {"world_size": 64, "batch_size": 4, "seq_len": 4096}
SEGMENT_STEPS = 100


def pack_all(streams: Streams, quotas: np.ndarray) -> tuple[int, float]:
    """(entries, seconds) of packing ``quotas`` segment by segment, as `mixtera compile` does."""
    state, entries = PlanState.initial(len(streams.names)), 0
    t0 = time.perf_counter()
    for lo in range(0, quotas.shape[0], SEGMENT_STEPS):
        block, state = plan_steps(streams, state, quotas[lo: lo + SEGMENT_STEPS], **IMAGE_TOPOLOGY)
        entries += int(block.counts.sum())
    return entries, time.perf_counter() - t0


def image_case(images: int, profile: bool) -> None:
    rng = np.random.default_rng(0)
    image = IMAGE_TOKENS + rng.integers(5, 61, images)  # one image and its caption (and framing)
    text = rng.integers(20, 900, images * 2)
    step = int(np.prod(list(IMAGE_TOPOLOGY.values())))
    steps = int(image.sum() * 0.98 / (step / 2))  # half of every step: all but the last images once
    quotas, _ = largest_remainder(np.full((steps, 2), step / 2), np.zeros(2), step)
    lengths = (compact_lengths(image), compact_lengths(text))
    whole = Streams(names=("img", "text"), doc_lengths=lengths, seed=1, unit="tokens", whole=(True, False))
    plain = Streams(names=("img", "text"), doc_lengths=lengths, seed=1, unit="tokens")
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    n_whole, t_whole = pack_all(whole, quotas)
    if prof:
        prof.disable()
    n_text, t_text = pack_all(plain, quotas)
    topo = "x".join(str(v) for v in IMAGE_TOPOLOGY.values())
    print(f"plan: {steps:,} steps of {topo} tokens, half image-text samples "
          f"({int(quotas[:, 0].sum() / image.mean()):,} of {images:,}, {IMAGE_TOKENS} image tokens each)")
    print(f"whole-sample packing: {n_whole / t_whole / 1e6:6.2f} M entries/s ({n_whole:,} entries, "
          f"{t_whole:.2f} s)")
    print(f"baseline, the same quotas packed as text: {n_text / t_text / 1e6:6.2f} M entries/s "
          f"({n_text:,} entries, {t_text:.2f} s) -> whole-sample packing runs at "
          f"{(n_whole / t_whole) / (n_text / t_text):.2f}x its rate")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10_000_000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--profile", action="store_true", help="cProfile the end-to-end compile")
    ap.add_argument("--images", type=int, default=0,
                    help="benchmark packing this many whole image-text samples beside text instead")
    args = ap.parse_args()
    t0 = time.perf_counter()
    warm_up_kernels()
    print(f"numba: the packing loops loaded in {time.perf_counter() - t0:.2f} s (once per process, not in "
          "the rates below; the first run on a machine compiles them)")
    if args.images:
        image_case(args.images, args.profile)
        return
    manifest, plan, t_prepare = load(args.samples, args.steps)
    rss_before = rss_mb()

    t0, c0 = time.perf_counter(), time.process_time()
    entries = sum(int(block.counts.sum()) for _, block in plan.blocks())
    t_pack, c_pack = time.perf_counter() - t0, time.process_time() - c0
    docs = int(sum(c.used for c in plan.components) / np.mean([s.mean() for s in plan.streams.doc_lengths]))

    out = DATA / "plan"
    c0 = time.process_time()
    written, t_write = write(out, plan, manifest, args.profile)
    c_write = time.process_time() - c0
    peak = peak_mb()

    t0 = time.perf_counter()
    with Plan.open(out) as p:
        last = p.step_entries(255, p.steps - 1)
    t_seek = time.perf_counter() - t0

    t_perm = timed(permute, np.arange(docs, dtype=np.int64) % 1_250_000, 1_250_000, 12345)
    keys = np.random.default_rng(0).integers(0, 2**40, entries)
    t_sort = timed(np.argsort, keys)
    del keys
    t_shuffle = timed(np.random.default_rng(0).permutation, entries)
    t_raw = raw_write(DATA / "raw-write.bin", written.bytes_on_disk)

    print(f"plan: {entries:,} entries, {args.steps} steps, 256 ranks, 8 components, ~{docs:,} documents")
    print(f"prepare (match components, quotas, sample table): {t_prepare:.2f} s")
    print(f"packing alone:     {entries / t_pack / 1e6:6.2f} M entries/s  ({t_pack:.2f} s; "
          f"CPU {c_pack:.2f} s in all threads = {entries / c_pack / 1e6:.2f} M entries per CPU-second)")
    print(f"end to end:        {entries / t_write / 1e6:6.2f} M entries/s  ({t_write:.2f} s; "
          f"CPU {c_write:.2f} s = {entries / c_write / 1e6:.2f} M entries per CPU-second; pack, encode, "
          f"compress, write {written.bytes_on_disk / 1e6:.0f} MB, fsync)")
    print(f"baseline np.argsort of {entries:,} int64: {t_sort:.2f} s -> packing takes "
          f"{t_pack / t_sort:.2f}x, end to end {t_write / t_sort:.2f}x its time")
    print(f"baseline np.random.permutation({entries:,}): {t_shuffle:.2f} s -> packing takes "
          f"{t_pack / t_shuffle:.2f}x, end to end {t_write / t_shuffle:.2f}x its time")
    print(f"baseline permute of {docs:,} positions (the shuffle alone): {t_perm:.2f} s -> packing takes "
          f"{t_pack / t_perm:.2f}x its time")
    print(f"baseline raw write + fsync of {written.bytes_on_disk / 1e6:.0f} MB: {t_raw:.2f} s "
          f"({written.bytes_on_disk / t_raw / 1e6:.0f} MB/s) -> end to end takes {t_write / t_raw:.2f}x "
          "its time")
    print(f"bytes per entry (rank files): {written.bytes_per_entry:.3f}; plan on disk: "
          f"{written.bytes_on_disk / 1e6:.1f} MB")
    print(f"seek to the last step (open plan, read + resolve rank 255's last segment): "
          f"{t_seek * 1e3:.1f} ms ({len(last)} entries)")
    print(f"peak RSS: {peak:.0f} MB (compiled plan before packing: {rss_before:.0f} MB)")


if __name__ == "__main__":
    main()

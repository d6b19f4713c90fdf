"""Scale: a Pile-sized plan for 256 ranks, compiled and opened on this machine.

    .venv/bin/python bench/scale.py [--samples 100000000] [--components 16] [--processes 1,2]
                                    [--parts compile,rank]

1. Generates (once, under bench/data/scale/) a synthetic index of ``--samples`` samples straight in
   the index format (``tests.helpers.synthetic_index.write_scale_index``: 16 sources with a
   ``1 / (k + 1)`` long tail, 20..899 tokens per document, 1,024 files; no corpus is needed to
   compile).
2. ``compile``: runs ``mixtera compile`` (a child process, so its peak RSS is its own) for 256 ranks
   x 4 sequences x 4,096 tokens (a global batch of 1,024 x 4,096) over the steps that use every
   document about once, and prints its peak RSS, wall time and the plan's file sizes; then, in
   this process, times the phases (load, prepare, packing alone) and packing + encoding + writing
   the plan with each ``--processes`` count, printing entries/s (per process too), entries per
   CPU-second (this process and its workers) with the load average (the machine may be shared),
   the speed-up over the first count (the baseline, in this process) and whether the bytes equal
   the CLI's plan.
3. ``rank``: compiles the same index for world sizes 8, 64 and 256 (the same per-rank batch of
   4 x 4,096 tokens, 200 steps: the global files, above all the sample table, are as large as in
   the full plan) and, in a fresh child process per world size, opens rank 0's ``PlanDataset`` and
   replays its first step: the plan's files opened and checked, the first segment read, decoded
   and resolved to corpus locations. The synthetic index has no corpus, so reading the texts (a
   per-document cost that does not depend on the world size) is left out. Prints the bytes read
   (``read`` system calls, ``/proc/self/io`` rchar, plus pages of memory maps touched, RssFile),
   the sample table's bytes read and hashed, peak RSS and the time, and the ratios 256 / 8.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers: the builders the tests use too

from tests.helpers.synthetic_index import scale_mixture, write_scale_index  # noqa: E402

DATA = ROOT / "bench" / "data" / "scale"
MIXTERA = Path(sys.executable).parent / "mixtera"
STEP_TOKENS = 1024 * 4096  # the global batch: 1,024 sequences of 4,096 tokens
BATCH, SEQ_LEN = 4, 4096  # per rank


def index_dir(samples: int, components: int) -> Path:
    path = DATA / f"index-{samples}-{components}"
    if not (path / "manifest.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        write_scale_index(path, samples, components=components)
        print(f"generated an index of {samples:,} samples in {time.perf_counter() - t0:.0f} s "
              f"({sum(f.stat().st_size for f in path.iterdir()) / 1e9:.2f} GB)")
    return path


def steps_for_one_epoch(index: Path) -> int:
    """Steps whose tokens (documents and their end-of-document tokens) use the index about once."""
    counts = json.loads((index / "manifest.json").read_text())["counts"]
    return int((counts["tokens"] + counts["samples"]) * 0.99) // STEP_TOKENS


def child_peak_rss(cmd: list[str], **kwargs: object) -> tuple[float, float, subprocess.CompletedProcess]:
    """(seconds, peak RSS in GiB of the child, its result): one child at a time, so
    RUSAGE_CHILDREN's maximum is this child's."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # noqa: S603 - our own CLI
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, proc


def write_mixture(index: Path, name: str, steps: int, world: int, components: int) -> Path:
    path = DATA / f"{name}.toml"
    path.write_text(scale_mixture(index, steps, components=components, world_size=world,
                                  batch_size=BATCH, seq_len=SEQ_LEN))
    return path


def same_plans(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    other = sorted(p.name for p in b.iterdir() if p.is_file())
    if names != other:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors


def plan_sizes(plan: Path) -> dict[str, int]:
    sizes = {p.name: p.stat().st_size for p in plan.iterdir() if p.is_file()}
    ranks = [n for n in sizes if n.startswith("rank-")]
    out = {n: s for n, s in sizes.items() if not n.startswith("rank-")}
    out["rank files"] = sum(sizes[n] for n in ranks)
    out["one rank file"] = max(sizes[n] for n in ranks)
    return out


def bench_compile(index: Path, components: int, processes: list[int]) -> None:
    """`mixtera compile` as a child (peak RSS, wall time), then the phases in this process."""
    steps = steps_for_one_epoch(index)
    mixture = write_mixture(index, "compile", steps, 256, components)
    out = DATA / "plan-cli"
    shutil.rmtree(out, ignore_errors=True)
    seconds, peak, proc = child_peak_rss([str(MIXTERA), "compile", str(mixture), "--out", str(out), "--json"])
    entries = json.loads(proc.stdout)["entries"]
    print(f"mixtera compile: {entries:,} entries, {steps:,} steps, 256 ranks, {components} components: "
          f"{seconds:.1f} s, peak RSS {peak:.2f} GiB")
    print("plan files (bytes): " + ", ".join(f"{k} {v:,}" for k, v in plan_sizes(out).items()))
    phases(mixture, processes, out)


def phases(mixture: Path, processes: list[int], reference: Path) -> None:
    """Load, prepare, pack alone, and pack + encode + write with each process count (one load)."""
    from mixtera.planner.compile.parallel import packed_segments
    from mixtera.planner.compile.pipeline import manifest_of, needed_columns
    from mixtera.planner.compile.plan_arrays import compile_plan
    from mixtera.planner.compile.writer import write_plan
    from mixtera.planner.index import load_index
    from mixtera.planner.mixture.spec import load_spec

    spec = load_spec(mixture)
    t0 = time.perf_counter()
    index = load_index(spec.index, columns=needed_columns(spec))
    t1 = time.perf_counter()
    plan = compile_plan(spec, index)
    t2 = time.perf_counter()
    manifest = manifest_of(plan, index)
    del index
    print(f"phases: load index {t1 - t0:.1f} s, prepare (select, quotas, sample table) {t2 - t1:.1f} s")
    t0, c0 = time.perf_counter(), cpu_seconds()
    warm_up_kernels()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    print(f"numba: the packing loops loaded in {wall:.2f} s ({cpu:.2f} CPU-s; "
          "once per process, not in the rates below; the first run on a machine compiles them)")
    t0, c0 = time.perf_counter(), cpu_seconds()
    entries = sum(int(block.counts.sum()) for _, block in plan.blocks())
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    print(f"packing alone (1 process): {entries / wall / 1e6:.2f} M entries/s ({wall:.1f} s; "
          f"{entries / cpu / 1e6:.2f} M entries per CPU-second; {load()})")
    base = None
    for n in processes:
        out = DATA / f"plan-p{n}"
        shutil.rmtree(out, ignore_errors=True)
        segments = {"blocks": plan.blocks()} if n == 1 else {"packed": packed_segments(plan, n)}
        t0, c0 = time.perf_counter(), cpu_seconds()
        write_plan(out, manifest=manifest, samples=plan.samples, quotas=plan.quotas, weights=plan.weights,
                   **segments)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        base = base or wall
        print(f"pack + encode + write, --processes {n}: {wall:.1f} s, {entries / wall / 1e6:.2f} M entries/s "
              f"({entries / wall / n / 1e6:.2f} M per process; {cpu:.1f} CPU-s, "
              f"{entries / cpu / 1e6:.2f} M per CPU-second), speed-up {base / wall:.2f}x, {load()}, "
              f"same bytes as `mixtera compile`: {same_plans(reference, out)}")
        shutil.rmtree(out, ignore_errors=True)


def warm_up_kernels() -> None:
    """Pack a tiny plan, so the timed packing does not include loading numba's cached machine code."""
    import numpy as np

    from mixtera.planner.compile.packing import PlanState, Streams, plan_steps

    spans = np.arange(1, 99, dtype=np.uint16)
    streams = Streams(names=("a", "b"), doc_lengths=(spans, spans), seed=0, unit="tokens")
    plan_steps(streams, PlanState.initial(2), np.array([[64, 64]]), world_size=2, batch_size=1, seq_len=64)


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the --processes workers): the machine
    may be shared, so wall time alone says little."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load() -> str:
    return "load average " + " / ".join(f"{x:.1f}" for x in os.getloadavg())


RANK_WORLDS = (8, 64, 256)
RANK_STEPS = 200


def bench_rank(index: Path, components: int, processes: int) -> None:
    results = {}
    for world in RANK_WORLDS:
        out = DATA / f"plan-w{world}"
        if not (out / "manifest.json").exists():
            mixture = write_mixture(index, f"rank-w{world}", RANK_STEPS, world, components)
            child_peak_rss([str(MIXTERA), "compile", str(mixture), "--out", str(out),
                            "--processes", str(processes), "--json"])
        proc = subprocess.run([sys.executable, __file__, "--rank-child", str(out), str(world)],  # noqa: S603
                              capture_output=True, text=True, check=True)
        results[world] = json.loads(proc.stdout)
        r = results[world]
        print(f"world {world:3d}: rank 0 to its first step in {r['seconds'] * 1e3:.0f} ms, read "
              f"{r['rchar'] / 2**20:.1f} MiB (read calls) + {r['rss_file'] / 2**20:.1f} MiB mapped pages, "
              f"sample table read and hashed {r['sample_bytes'] / 2**20:.1f} MiB of "
              f"{r['table_bytes'] / 2**20:.0f} MiB, peak RSS {r['peak'] / 2**20:.0f} MiB, "
              f"{r['entries']} entries in step 0")
    a, b = results[RANK_WORLDS[0]], results[RANK_WORLDS[-1]]
    print(f"ratios {RANK_WORLDS[-1]} / {RANK_WORLDS[0]}: time {b['seconds'] / a['seconds']:.2f}, "
          f"bytes read {(b['rchar'] + b['rss_file']) / (a['rchar'] + a['rss_file']):.2f}, "
          f"peak RSS {b['peak'] / a['peak']:.2f}")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def rank_child(plan: Path, world: int) -> None:
    """Rank 0 of ``world`` up to its first step; prints what it cost as JSON."""
    import torch  # noqa: F401 - imported before the clock: the training job has it already

    from mixtera.runtime import PlanDataset

    file0, rchar0, t0 = _status_kib("RssFile"), _rchar(), time.perf_counter()
    ds = PlanDataset(plan, rank=0, world_size=world, output="documents")
    replay = ds._open_runtime()  # what iterating does first, up to the corpus reads
    entries = replay.entries(0)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "rchar": _rchar() - rchar0,
                      "rss_file": (_status_kib("RssFile") - file0) * 1024,
                      "peak": _status_kib("VmHWM") * 1024,
                      "sample_bytes": replay.plan.sample_bytes_read,
                      "table_bytes": (plan / "samples.npy").stat().st_size, "entries": len(entries)}))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--rank-child":
        rank_child(Path(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100_000_000)
    ap.add_argument("--components", type=int, default=16)
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts to compile with")
    ap.add_argument("--parts", default="compile,rank")
    args = ap.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    index = index_dir(args.samples, args.components)
    parts = args.parts.split(",")
    if "compile" in parts:
        bench_compile(index, args.components, [int(p) for p in args.processes.split(",")])
    if "rank" in parts:
        bench_rank(index, args.components, max(int(p) for p in args.processes.split(",")))


if __name__ == "__main__":
    main()

"""Benchmark `mixtera feedback`: rewrite one refit interval of a 256-rank plan, the ADO fit timed apart.

A synthetic index (8 components) is compiled into a plan of ``refit + lookahead + refit`` steps, a
feedback log with synthetic per-domain losses is written for the first ``refit`` steps, and decision
1 is made: the ADO fit (8 domains x 512 starts), then the rewrite proper (roll the policy over the
interval, exact quotas, pack every segment with the compiler's core, encode 256 rank files,
publish). Baseline in the same process: compiling the same plan from scratch (per step).

    .venv/bin/python bench/feedback.py [--samples 1000000] [--refit 1000] [--batch 1] [--seq-len 2048]
    .venv/bin/python bench/feedback.py --sweep [--intervals 250,500,1000,2000,4000] [--worlds 64,256]

``--sweep`` does the same for every refit interval at every world size (the same per-rank batch)
and fits each quantity as ``a + b * x`` by least squares over the intervals of one world size:
the rewrite time against the rewritten steps and entries (the slope per 1,000 steps, the fixed
cost ``a``, R^2), the ADO fit against its points, and the compile time and the plan folder's bytes
against the plan's steps and entries (the fixed part is mostly the sample table, the slope the rest).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers: the builders the tests use too

from mixtera.planner.compile.packing import plan_steps  # noqa: E402
from mixtera.planner.compile.pipeline import compile_file  # noqa: E402
from mixtera.planner.compile.writer import WrittenPlan  # noqa: E402
from mixtera.planner.feedback.orchestrate import read_history  # noqa: E402
from mixtera.planner.feedback.rewrite import Decision, PlanContext, decide, write_version  # noqa: E402
from mixtera.runtime.errors import MixteraUserError  # noqa: E402
from mixtera.runtime.format.feedback_log import LogWriter  # noqa: E402
from mixtera.runtime.format.plan_dir import QUOTAS, VERSIONS_DIR, log_path  # noqa: E402
from mixtera.runtime.format.rank_frames import BlockEncoder, encode_rank_segment  # noqa: E402
from mixtera.runtime.versions import VersionResolver, read_decision  # noqa: E402
from tests.helpers.synthetic_index import BENCH_SOURCES, bench_mixture, write_synthetic_index  # noqa: E402

DATA = ROOT / "bench" / "data" / "feedback"


def mixture(steps: int, refit: int, batch: int, seq_len: int, world: int) -> str:
    dynamic = f'[dynamic]\nalgorithm = "ado"\nrefit_every = {refit}\nignore_steps = {refit // 5}'
    return bench_mixture("index", steps, batch=batch, seq_len=seq_len, extra=dynamic, world_size=world)


def write_log(ctx: PlanContext, steps: int) -> None:
    quotas = np.load(ctx.path / QUOTAS)[:steps]
    n = np.cumsum(quotas, axis=0) / 1024.0
    k = quotas.shape[1]
    eps, beta, alpha = np.linspace(1.8, 3.0, k), np.linspace(5, 40, k), np.linspace(0.2, 0.6, k)
    rng = np.random.default_rng(0)
    loss = (eps + beta * np.maximum(n, 1) ** -alpha) * (1 + rng.normal(0, 0.01, n.shape))
    with LogWriter(log_path(ctx.path), k, ctx.manifest["fingerprint"], fsync=False) as w:
        for s in range(steps):
            w.append(s, 0, quotas[s], loss[s] * quotas[s])


def fit_scaling(points: list[int]) -> None:
    """Fit time of 8 domains x 512 starts against the number of fit points (noiseless curves)."""
    from mixtera.planner.feedback.ado import AdoParams
    from mixtera.planner.feedback.ado_fit import fit

    settings = AdoParams().resolved().fit_settings()
    for p in points:
        steps = 1000 + 10 * p
        tokens = np.full(steps, 256 * 1024, np.int64)
        n = np.cumsum(tokens) / 1024
        losses = np.linspace(1.8, 3.0, 8) + np.linspace(5, 40, 8) * n[:, None] ** -np.linspace(0.2, 0.6, 8)
        t = time.perf_counter()
        res = fit(losses, tokens, 1000, 1024, settings)
        print(f"ADO fit, {res.points} points: {time.perf_counter() - t:.3f} s")


def compile_plan(work: Path, args: argparse.Namespace, steps: int, *, rebuild: bool, refit: int,
                 world: int) -> tuple[WrittenPlan, np.ndarray]:
    """Compile the bench plan (the index is generated once); returns it and the (wall, CPU) seconds."""
    index = DATA / f"index-{args.samples}"
    if rebuild:
        shutil.rmtree(index, ignore_errors=True)
    if not index.exists():
        write_synthetic_index(index, args.samples, seed=1, files=16, sources=BENCH_SOURCES)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "index").symlink_to(index.resolve())
    (work / "mixture.toml").write_text(mixture(steps, refit, args.batch, args.seq_len, world))
    t0 = clock()
    written = compile_file(work / "mixture.toml", work / "plan")[1]
    return written, clock() - t0


def clock() -> np.ndarray:
    """(wall, CPU) seconds now; the CPU time is this process's, all its threads."""
    return np.array([time.perf_counter(), time.process_time()])


def encode_ratio(ctx: PlanContext, dec: Decision, repeats: int = 3) -> None:
    """One rewritten segment for 256 ranks: the batched, threaded encoder vs one segment at a time."""
    topo = ctx.manifest["topology"]
    state = copy.deepcopy(dec.start)
    state.carry = dec.carries[0].copy()
    block, _ = plan_steps(ctx.streams(), state, dec.quotas[: ctx.schedule.segment_steps],
                          world_size=256, batch_size=int(topo["batch_size"]), seq_len=int(topo["seq_len"]))
    compressor = zstandard.ZstdCompressor(level=3)
    single, batched = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        one = [encode_rank_segment(block.rank_segment(r, 1), compressor) for r in range(256)]
        single.append(time.perf_counter() - t)
        t = time.perf_counter()
        enc = BlockEncoder(256, 1)
        enc.submit(block)
        frames = enc.frames()
        batched.append(time.perf_counter() - t)
    assert [f[0] for f in frames] == one  # the same bytes
    print(f"encode one segment ({int(block.counts.sum()):,} entries, 256 ranks): one rank at a time "
          f"{min(single):.3f} s, batched on {enc.workers} threads {min(batched):.3f} s "
          f"(ratio {min(single) / min(batched):.1f}x)")


@dataclasses.dataclass(frozen=True)
class Interval:
    """One plan compiled, then decision 1 made and published: what it cost. Times are (wall, CPU)
    seconds, each the least of the repeats (the least disturbed by other load on a shared machine)."""

    world: int
    refit: int
    steps: int  # of the whole plan
    entries: int  # of the whole plan
    plan_bytes: int  # every file of the compiled plan folder
    compile_t: np.ndarray
    fit_t: np.ndarray
    fit_points: int
    accepted: bool
    rewritten_steps: int
    rewritten_entries: int
    log_t: np.ndarray
    decide_t: np.ndarray  # rolling the policy and the exact quotas, the fit left out
    first_decide_t: np.ndarray  # the same, the first time: with loading the sample table into the streams
    writes: tuple[np.ndarray, ...]  # pack, encode, publish, once per repeat

    @property
    def write_t(self) -> np.ndarray:
        return np.min(self.writes, axis=0)

    @property
    def rewrite_t(self) -> np.ndarray:
        return self.log_t + self.decide_t + self.write_t

    @property
    def compile_s(self) -> float:
        return float(self.compile_t[0])

    @property
    def rewrite_s(self) -> float:
        return float(self.rewrite_t[0])

    @property
    def fit_s(self) -> float:
        return float(self.fit_t[0])


LOOKAHEAD = 100


def compile_fastest(work: Path, args: argparse.Namespace, steps: int, refit: int,
                    world: int) -> tuple[WrittenPlan, np.ndarray]:
    """Compile ``args.repeats`` times (the bytes are the same each time); the least wall and CPU time."""
    try:
        written, seconds = compile_plan(work, args, steps, rebuild=False, refit=refit, world=world)
    except MixteraUserError:  # an index of an older mixtera in bench/data: rebuild it once
        written, seconds = compile_plan(work, args, steps, rebuild=True, refit=refit, world=world)
    for _ in range(args.repeats - 1):
        seconds = np.minimum(seconds, compile_plan(work, args, steps, rebuild=False, refit=refit,
                                                   world=world)[1])
    return written, seconds


def timed_decide(ctx: PlanContext, hist: object,
                 repeats: int) -> tuple[Decision, np.ndarray, list[np.ndarray]]:
    """Decision 1 ``repeats`` times: (decision, fit (wall, CPU), each decide's (wall, CPU) less the fit).

    The fit runs once (it is deterministic); later decisions replay its result and what it did to
    the policy state, so what they time is the policy roll and the quotas alone. Every decision
    must equal the first."""
    fit_s: list[np.ndarray] = []
    done: dict[str, Any] = {}
    real_refit = ctx.algorithm.refit

    def replayed_refit(params: object, state: Any, *a: object) -> dict:
        if not fit_s:
            t = clock()
            done["out"] = real_refit(params, state, *a)
            fit_s.append(clock() - t)
            done["state"] = copy.deepcopy(state)
        for f in dataclasses.fields(state):  # the refit mutates the state (ADO: its theta)
            setattr(state, f.name, copy.deepcopy(getattr(done["state"], f.name)))
        return copy.deepcopy(done["out"])

    ctx.algorithm = dataclasses.replace(ctx.algorithm, refit=replayed_refit)
    times, first = [], None
    for i in range(repeats):
        t0 = clock()
        dec = decide(ctx, 1, hist)
        times.append(clock() - t0 - (fit_s[0] if i == 0 else 0.0))
        first = first or dec
        assert np.array_equal(dec.quotas, first.quotas) and dec.body == first.body
    ctx.algorithm = dataclasses.replace(ctx.algorithm, refit=real_refit)
    return first, fit_s[0], times


def measure(args: argparse.Namespace, world: int, refit: int) -> tuple[Interval, PlanContext, Decision]:
    """Compile ``refit + lookahead + refit`` steps for ``world`` ranks, write a log of ``refit`` steps,
    make decision 1 (the ADO fit timed apart) and publish it; each ``args.repeats`` times."""
    steps = 2 * refit + LOOKAHEAD
    work = DATA / "work"
    written, compile_t = compile_fastest(work, args, steps, refit, world)
    plan_bytes = sum(f.stat().st_size for f in (work / "plan").rglob("*") if f.is_file())
    ctx = PlanContext.open(work / "plan")
    write_log(ctx, refit)
    t0 = clock()
    hist = read_history(ctx, steps)
    t_log = clock() - t0
    dec, fit_t, decides = timed_decide(ctx, hist, args.repeats)
    writes = []
    for _ in range(args.repeats):  # the same decision published again: the bytes are identical
        shutil.rmtree(ctx.path / VERSIONS_DIR, ignore_errors=True)
        ctx.resolver = VersionResolver(ctx.path, ctx.manifest)
        t0 = clock()
        assert write_version(ctx, copy.deepcopy(dec))
        writes.append(clock() - t0)
    entries = sum(seg["entries"] for seg in read_decision(ctx.path, 1)["segments"])
    return Interval(world=world, refit=refit, steps=steps, entries=written.entries, plan_bytes=plan_bytes,
                    compile_t=compile_t, fit_t=fit_t, fit_points=int(dec.body["fit"]["points"]),
                    accepted=bool(dec.body["fit"]["accepted"]),
                    rewritten_steps=steps - int(dec.body["first_step"]), rewritten_entries=entries,
                    log_t=t_log, decide_t=np.min(decides, axis=0), first_decide_t=decides[0],
                    writes=tuple(writes)), ctx, dec


def report_one(args: argparse.Namespace, m: Interval) -> None:
    print(f"plan: {m.world} ranks x batch {args.batch} x seq_len {args.seq_len}, {m.steps} steps, "
          f"{m.entries:,} entries, 8 components ({args.samples:,} samples)")
    print(f"ADO fit (8 domains x 512 starts, {m.fit_points} points): {m.fit_s:.3f} s "
          f"(accepted: {m.accepted})")
    print(f"rewrite of one refit interval ({m.rewritten_steps} steps, "
          f"{m.rewritten_entries:,} entries): {m.rewrite_s:.3f} s "
          f"= read log {m.log_t[0]:.3f} + roll policy and quotas {m.decide_t[0]:.3f} (the first time, with "
          f"loading the sample table: {m.first_decide_t[0]:.3f}) + pack, encode, publish {m.write_t[0]:.3f} "
          f"(fastest of {len(m.writes)}; median {np.median([w[0] for w in m.writes]):.3f})  (target <= 1 s); "
          f"CPU {m.rewrite_t[1]:.3f} s")
    print(f"baseline compile of the whole plan: {m.compile_s:.3f} s, {m.entries / m.compile_s / 1e6:.2f} M "
          f"entries/s (CPU {m.compile_t[1]:.3f} s)")
    per_step = (m.rewrite_s / m.rewritten_steps) / (m.compile_s / m.steps)
    print(f"ratio rewrite / compile per step: {per_step:.2f}; "
          f"rewrite {m.rewritten_entries / m.rewrite_s / 1e6:.2f} M entries/s")
    print(f"fit + rewrite: {m.fit_s + m.rewrite_s:.3f} s")


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b * x``: (a, b, R^2)."""
    b, a = np.polyfit(np.asarray(x, np.float64), np.asarray(y, np.float64), 1)
    pred = a + b * np.asarray(x)
    ss_res = float(np.sum((np.asarray(y) - pred) ** 2))
    ss_tot = float(np.sum((np.asarray(y) - np.mean(y)) ** 2))
    return float(a), float(b), 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def print_slope(what: str, x: list[float], y: list[float], per: str, scale: float, unit: str,
                fixed_unit: tuple[str, float] | None = None) -> None:
    """The fitted slope per ``scale`` units of x; the fixed cost in ``fixed_unit`` (name, divisor)."""
    a, b, r2 = linear_fit(x, y)
    name, div = fixed_unit or (unit, 1.0)
    print(f"    {what}: {b * scale:.3f} {unit} per {per}, fixed {a / div:.3f} {name}, R^2 {r2:.4f}")


def sweep(args: argparse.Namespace) -> None:
    """Every (world size, refit interval): compile, decide, publish; then fit time and bytes as
    ``a + b * x`` over the intervals of each world size (x: steps, then entries)."""
    worlds = [int(w) for w in args.worlds.split(",") if w]
    refits = [int(r) for r in args.intervals.split(",") if r]
    print(f"sweep: refit intervals {refits} x world sizes {worlds}; batch {args.batch} x seq_len "
          f"{args.seq_len} per rank, {args.samples:,} samples; times are the least of {args.repeats} "
          f"compiles, decisions and publishes, wall [CPU]")
    print("world refit | plan steps    entries  plan MB  compile s      | fit pts fit s         | rewritten "
          "steps   entries  policy s write s  rewrite s")
    for world in worlds:
        runs = []
        for refit in refits:
            m = measure(args, world, refit)[0]
            runs.append(m)
            print(f"{m.world:5d} {m.refit:5d} | {m.steps:10d} {m.entries:10,d} {m.plan_bytes / 1e6:8.1f} "
                  f"{m.compile_t[0]:6.2f} [{m.compile_t[1]:5.2f}] | {m.fit_points:7d} {m.fit_s:5.2f} "
                  f"[{m.fit_t[1]:5.2f}] | "
                  f"{m.rewritten_steps:15d} {m.rewritten_entries:9,d} {m.decide_t[0]:8.3f} "
                  f"{m.write_t[0]:7.3f} {m.rewrite_t[0]:6.3f} [{m.rewrite_t[1]:5.3f}]", flush=True)
        if len(runs) < 2:
            continue
        print_fits(world, runs)


def print_fits(world: int, runs: list[Interval]) -> None:
    steps, entries = [m.steps for m in runs], [m.entries for m in runs]
    rsteps, rentries = [m.rewritten_steps for m in runs], [m.rewritten_entries for m in runs]
    points = [m.fit_points for m in runs]
    print(f"  world {world}: least squares a + b * x over {len(runs)} intervals")
    for i, name in enumerate(("wall", "CPU")):
        rewrite = [float(m.rewrite_t[i]) for m in runs]
        compiled = [float(m.compile_t[i]) for m in runs]
        print_slope(f"rewrite time ({name}: log + policy + pack, encode, publish)", rsteps, rewrite,
                    "1,000 rewritten steps", 1e3, "s")
        print_slope(f"rewrite time ({name})", rentries, rewrite, "M rewritten entries", 1e6, "s")
        print_slope(f"ADO fit alone ({name})", points, [float(m.fit_t[i]) for m in runs], "100 fit points",
                    100, "s")
        print_slope(f"compile time ({name}, the whole plan in process)", steps, compiled, "1,000 plan steps",
                    1e3, "s")
        print_slope(f"compile time ({name})", entries, compiled, "M entries", 1e6, "s")
        ratio = linear_fit(rsteps, rewrite)[1] / linear_fit(steps, compiled)[1]
        print(f"    ratio of slopes, rewrite / compile per step ({name}): {ratio:.2f}")
    print_slope("plan bytes", steps, [m.plan_bytes / 1e6 for m in runs], "1,000 plan steps", 1e3, "MB")
    print_slope("plan bytes", entries, [m.plan_bytes for m in runs], "entry", 1, "bytes", ("MB", 1e6))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--refit", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--fit-points", default="100,400", help="also time the fit alone at these sizes")
    ap.add_argument("--repeats", type=int, default=3,
                    help="compile, decide and publish this many times; the fastest counts")
    ap.add_argument("--sweep", action="store_true",
                    help="fit time and plan bytes against --intervals at each of --worlds instead")
    ap.add_argument("--intervals", default="250,500,1000,2000,4000", help="refit intervals of the sweep")
    ap.add_argument("--worlds", default="64,256", help="world sizes of the sweep")
    args = ap.parse_args()
    if args.sweep:
        sweep(args)
        return
    m, ctx, dec = measure(args, 256, args.refit)
    report_one(args, m)
    encode_ratio(ctx, dec)
    fit_scaling([int(p) for p in args.fit_points.split(",") if p])


if __name__ == "__main__":
    main()

"""Benchmark `mixtera feedback`: rewrite one refit interval of a 256-rank plan, the ADO fit timed apart.

A synthetic index (8 components) is compiled into a plan of ``refit + lookahead + refit`` steps, a
feedback log with synthetic per-domain losses is written for the first ``refit`` steps, and decision
1 is made: the ADO fit (8 domains x 512 starts), then the rewrite proper (roll the policy over the
interval, exact quotas, pack every segment with the compiler's core, encode 256 rank files,
publish). Baseline in the same process: compiling the same plan from scratch (per step).

    .venv/bin/python bench/feedback.py [--samples 1000000] [--refit 1000] [--batch 1] [--seq-len 2048]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shutil
import sys
import time
from pathlib import Path

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


def mixture(steps: int, refit: int, batch: int, seq_len: int) -> str:
    dynamic = f'[dynamic]\nalgorithm = "ado"\nrefit_every = {refit}\nignore_steps = {refit // 5}'
    return bench_mixture("index", steps, batch=batch, seq_len=seq_len, extra=dynamic)


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


def compile_plan(work: Path, args: argparse.Namespace, steps: int, *,
                 rebuild: bool) -> tuple[WrittenPlan, float]:
    """Compile the bench plan (the index is generated once); returns it and the compile seconds."""
    index = DATA / f"index-{args.samples}"
    if rebuild:
        shutil.rmtree(index, ignore_errors=True)
    if not index.exists():
        write_synthetic_index(index, args.samples, seed=1, files=16, sources=BENCH_SOURCES)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "index").symlink_to(index.resolve())
    (work / "mixture.toml").write_text(mixture(steps, args.refit, args.batch, args.seq_len))
    t0 = time.perf_counter()
    written = compile_file(work / "mixture.toml", work / "plan")[1]
    return written, time.perf_counter() - t0


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--refit", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--fit-points", default="100,400", help="also time the fit alone at these sizes")
    ap.add_argument("--repeats", type=int, default=3, help="publish the decision this many times")
    args = ap.parse_args()
    lookahead = 100
    steps = 2 * args.refit + lookahead
    work = DATA / "work"
    try:
        written, compile_s = compile_plan(work, args, steps, rebuild=False)
    except MixteraUserError:  # an index of an older mixtera in bench/data: rebuild it once
        written, compile_s = compile_plan(work, args, steps, rebuild=True)
    ctx = PlanContext.open(work / "plan")
    write_log(ctx, args.refit)

    fit_s = []
    real_refit = ctx.algorithm.refit

    def timed_refit(*a: object) -> dict:
        t = time.perf_counter()
        out = real_refit(*a)
        fit_s.append(time.perf_counter() - t)
        return out

    ctx.algorithm = dataclasses.replace(ctx.algorithm, refit=timed_refit)
    t0 = time.perf_counter()
    hist = read_history(ctx, steps)
    t_log = time.perf_counter() - t0
    t0 = time.perf_counter()
    dec = decide(ctx, 1, hist)
    t_decide = time.perf_counter() - t0 - fit_s[0]
    writes = []
    for _ in range(args.repeats):  # the same decision published again: the bytes are identical
        shutil.rmtree(ctx.path / VERSIONS_DIR, ignore_errors=True)
        ctx.resolver = VersionResolver(ctx.path, ctx.manifest)
        t0 = time.perf_counter()
        assert write_version(ctx, copy.deepcopy(dec))
        writes.append(time.perf_counter() - t0)
    t_write = float(np.median(writes))
    rewritten = steps - int(dec.body["first_step"])
    entries = sum(seg["entries"] for seg in read_decision(ctx.path, 1)["segments"])
    rewrite_s = t_log + t_decide + t_write
    per_step_compile = compile_s / steps
    per_step_rewrite = rewrite_s / rewritten
    print(f"plan: 256 ranks x batch {args.batch} x seq_len {args.seq_len}, {steps} steps, "
          f"{written.entries:,} entries, 8 components ({args.samples:,} samples)")
    print(f"ADO fit (8 domains x 512 starts, {dec.body['fit']['points']} points): {fit_s[0]:.3f} s "
          f"(accepted: {dec.body['fit']['accepted']})")
    print(f"rewrite of one refit interval ({rewritten} steps, "
          f"{entries:,} entries): {rewrite_s:.3f} s "
          f"= read log {t_log:.3f} + roll policy and quotas {t_decide:.3f} + pack, encode, publish "
          f"{t_write:.3f} (median of {len(writes)}; min {min(writes):.3f})  (target <= 1 s)")
    print(f"baseline compile of the whole plan: {compile_s:.3f} s, {written.entries / compile_s / 1e6:.2f} M "
          f"entries/s")
    print(f"ratio rewrite / compile per step: {per_step_rewrite / per_step_compile:.2f}; rewrite "
          f"{entries / rewrite_s / 1e6:.2f} M entries/s")
    print(f"fit + rewrite: {fit_s[0] + rewrite_s:.3f} s")
    encode_ratio(ctx, dec)
    fit_scaling([int(p) for p in args.fit_points.split(",") if p])


if __name__ == "__main__":
    main()

"""Does ADO help? Natural vs uniform vs ADO mixtures on the same token budget, per-domain validation loss.

A tiny GPT is trained on CPU (one process) on the demo corpus (Python's standard library: code,
docstrings, notes, licence texts), for the same number of steps and tokens per run, with the mixture
given by: the natural shares of the data, uniform weights, and ADO rewriting the plan in-process from
the reported per-domain training losses (prior: natural). Every mixture has the same `[validation]`
table: 10% of the smallest domain's tokens from every domain, held out of training at every epoch
(mixtera-compile(1), "Validation splits"). For a given seed the three mixtures hold out the same
samples, so their validation losses compare on the same tokens; each seed draws another split, another
shuffle and another model initialisation, which gives the spread.

    .venv/bin/python examples/ado_experiment.py [--workdir build/ado_experiment] [--steps 1000] [--seeds 3]

It prints mean and standard deviation over seeds of the per-domain and average validation loss, the
ADO fits (per domain: accepted, fit objective, fitted eps/beta/alpha of L(n) = eps + beta * n^-alpha)
and writes OUT/ado_weights.png (ADO's target weights over the steps, one line per seed and domain)
and OUT/results.json. Results are printed as measured; nothing is tuned for ADO to win.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # the sibling example modules

from demo_tokenizer import train_tokenizer  # noqa: E402
from make_demo_corpus import build_demo_corpus  # noqa: E402
from train_tiny_gpt import TinyGPT, domain_losses  # noqa: E402

from mixtera.planner.compile.pipeline import compile_file  # noqa: E402
from mixtera.planner.feedback.orchestrate import inprocess_rewriter  # noqa: E402
from mixtera.planner.index.build import build_index  # noqa: E402
from mixtera.planner.report import replayed  # noqa: E402
from mixtera.runtime import FeedbackReporter, PlanDataset  # noqa: E402
from mixtera.runtime.versions import read_decision  # noqa: E402

DOMAINS = ("code", "docs", "notes", "licenses")
def prepare(work: Path) -> tuple[Path, Path]:
    """Corpus, tokenizer and index, built once per workdir."""
    corpus, tok, index = work / "corpus", work / "tokenizer.json", work / "index"
    if not corpus.exists():
        build_demo_corpus(corpus)
    if not tok.exists():
        notes = (corpus / "notes" / "notes.jsonl").read_text().split("\n")
        texts = [json.loads(line)["text"] for line in notes if line]
        import pyarrow.parquet as pq

        texts += pq.read_table(corpus / "code" / "stdlib_functions.parquet").column("text").to_pylist()
        train_tokenizer(texts, tok, vocab_size=2048)
    if not index.exists():
        build_index([corpus], index, ROOT / "examples" / "demo_index.toml", tokenizer=tok, processes=1)
    return tok, index


def mixture(steps: int, seed: int, weights: str | dict[str, float], held_out: int, dynamic: str = "") -> str:
    comps = "\n".join(
        f"[components.{d}]\nwhere = \"source == '{d}'\"\n"
        f"weight = {json.dumps(weights if isinstance(weights, str) else weights[d])}\n" for d in DOMAINS)
    return (f"[mixture]\nindex = \"index\"\nseed = {seed}\nunit = \"tokens\"\nsteps = {steps}\n"
            f"segment_steps = {max(steps // 30, 1)}\n"
            f"[topology]\nworld_size = 1\nbatch_size = 8\nseq_len = 128\n{comps}\n"
            f"[validation]\ntokens_per_component = {held_out}\nbatch_size = 8\n{dynamic}")


def ado_table(steps: int) -> str:
    """ADO with its reference rules and a refit interval scaled to a short run."""
    refit = steps // 6
    return (f"[dynamic]\nalgorithm = \"ado\"\nrefit_every = {refit}\nignore_steps = {refit // 4}\n"
            f"savgol_window = 31\nsubsample = 2\nmin_points = 20\nprior = \"natural\"\n"
            f"lookahead = {max(steps // 30, 1)}\nwait_timeout_s = 600\n")


def train(plan: Path, tok: Path, steps: int, seed: int,
          feedback: bool) -> tuple[torch.nn.Module, list[float]]:
    torch.manual_seed(seed)
    ds = PlanDataset(plan, rank=0, world_size=1, tokenizer=tok)
    model = TinyGPT(int(ds.tokenizer_info["vocab_size"]), ds.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    fb = FeedbackReporter(plan, rank=0, on_refit=inprocess_rewriter(plan), fsync=False) if feedback else None
    losses = []
    for step, batch in enumerate(ds.loader(num_workers=0)):
        if step >= steps:
            break
        loss, tokens, loss_sum = domain_losses(model(batch["input_ids"]), batch["labels"],
                                                batch["domain_ids"], len(ds.domains))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if fb is not None:
            fb.report(step, tokens=tokens, loss_sum=loss_sum)
    if fb is not None:
        fb.close()
    return model, losses


@torch.no_grad()
def validate(model: torch.nn.Module, plan: Path, tok: Path) -> dict[str, float]:
    ds = PlanDataset(plan, rank=0, world_size=1, tokenizer=tok, split="validation")
    tokens = torch.zeros(len(DOMAINS), dtype=torch.float64)
    loss = torch.zeros(len(DOMAINS), dtype=torch.float64)
    for batch in ds.loader(num_workers=0):
        _, t, s = domain_losses(model(batch["input_ids"]), batch["labels"], batch["domain_ids"], len(DOMAINS))
        tokens += t
        loss += s
    per = {d: float(loss[i] / tokens[i]) for i, d in enumerate(DOMAINS)}
    per["mean_over_domains"] = float(np.mean([per[d] for d in DOMAINS]))
    per["all_tokens"] = float(loss.sum() / tokens.sum())
    return per


def held_out_tokens(index: Path) -> int:
    """10% of the smallest domain's tokens: every domain keeps 90% or more for training."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(index / "samples.parquet", columns=["tokens", "source"])
    per = [pc.sum(pc.filter(t.column("tokens"), pc.equal(t.column("source"), d))).as_py() for d in DOMAINS]
    return max(int(min(per) * 0.1), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "ado_experiment")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    tok, index = prepare(work)
    held_out = held_out_tokens(index)
    runs = {"natural": ("natural", ""), "uniform": ({d: 0.25 for d in DOMAINS}, ""),
            "ado": ("natural", ado_table(args.steps))}
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for seed in range(11, 11 + args.seeds):
        for name, (weights, dynamic) in runs.items():
            spec = work / f"{name}-{seed}.toml"
            spec.write_text(mixture(args.steps, seed, weights, held_out, dynamic))
            plan = work / f"plan-{name}-{seed}"
            if plan.exists():
                shutil.rmtree(plan)  # a fresh plan: ADO's decisions of an earlier run are not reused
            compile_file(spec, plan)
            t0 = time.perf_counter()
            model, losses = train(plan, tok, args.steps, seed, feedback=bool(dynamic))
            run = {"seed": seed, "val": validate(model, plan, tok), "seconds": time.perf_counter() - t0,
                   "final_train_loss": float(np.mean(losses[-20:]))}
            if dynamic:
                run["decisions"] = [d for d in (read_decision(plan, v) for v in range(1, args.steps)) if d]
                run["weights"] = replayed(plan).weights.tolist()
            results[name].append(run)
            print(f"seed {seed} {name}: {args.steps} steps in {run['seconds']:.1f} s", file=sys.stderr)
    report(results, args.steps, held_out)
    plot_weights(results["ado"], work / "ado_weights.png")
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))


def report(results: dict[str, list[dict]], steps: int, held_out: int) -> None:
    cols = [*DOMAINS, "mean_over_domains", "all_tokens"]
    seeds = len(next(iter(results.values())))
    print(f"validation loss (nats/token), mean +- std over {seeds} seeds, after {steps} steps x 1024 tokens; "
          f"{held_out:,} held-out tokens per domain")
    print(f"{'mixture':10s}" + "".join(f"{c:>20s}" for c in cols))
    for name, runs in results.items():
        vals = np.array([[r["val"][c] for c in cols] for r in runs])
        print(f"{name:10s}" + "".join(f"{m:>12.4f} +-{s:6.4f}" for m, s in zip(vals.mean(0), vals.std(0),
                                                                               strict=True)))
    for run in results.get("ado", []):
        for d in run["decisions"]:
            if d["action"] == "rewrite":
                print(f"seed {run['seed']} {decision_line(d)}")


def decision_line(d: dict) -> str:
    """One ADO decision: its weights and, per domain, how well the scaling law fitted."""
    fit = d["fit"]
    objectives = fit.get("objective") or [None] * len(DOMAINS)
    thetas = fit.get("theta") or [None] * len(DOMAINS)
    per = []
    for dom, obj, th in zip(DOMAINS, objectives, thetas, strict=True):
        text = f"{dom}: obj " + ("-" if obj is None else f"{obj:.3g}")
        if th is not None:
            text += f", eps {th[0]:.2f} beta {th[1]:.2f} alpha {th[2]:.2f}"
        per.append(text)
    weights = " ".join(f"{x:.3f}" for x in d["weights"])
    verdict = "accepted" if fit["accepted"] else f"rejected ({fit['reason']})"
    return (f"ado decision {d['version']} (losses to step {d['refit_step']}, from step {d['first_step']}): "
            f"weights [{weights}]; fit {verdict}, {fit['points']} points; {'; '.join(per)}")


def plot_weights(runs: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        w = np.asarray(run["weights"])
        for k, dom in enumerate(DOMAINS):
            ax.plot(w[:, k], color=colors[k], alpha=0.9 - 0.25 * i, label=dom if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("target weight")
    ax.set_title(f"ADO's mixture over the steps ({len(runs)} seeds, one line each)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()

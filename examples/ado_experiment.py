"""Does ADO help? Natural vs uniform vs ADO mixtures on the same token budget, per-domain validation loss.

A tiny GPT is trained on CPU (one process) three times on the demo corpus (Python's standard
library: code, docstrings, notes, licence texts), each time for the same number of steps and
tokens, with the mixture given by: the natural shares of the data, uniform weights, and ADO
rewriting the plan in-process from the reported per-domain losses (prior: natural). About 10% of
the documents of every domain (chosen by a hash of the text, via an index hook) are held out and
never enter a training plan; the per-domain validation loss is the mean over those tokens.

    .venv/bin/python examples/ado_experiment.py [--workdir build/ado_experiment] [--steps 600]

Results are printed as measured; nothing is tuned for ADO to win.
"""

from __future__ import annotations

import argparse
import json
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
from mixtera.runtime import FeedbackReporter, PlanDataset  # noqa: E402
from mixtera.runtime.versions import read_decision  # noqa: E402

DOMAINS = ("code", "docs", "notes", "licenses")
SPLIT_HOOK = '''import hashlib


def split(record, path):
    """About 10% of every source is held out for validation, chosen by a hash of the text."""
    h = hashlib.blake2b(str(record.get("text", "")).encode(), digest_size=1).digest()[0]
    return {"split": "val" if h < 26 else "train"}
'''


def prepare(work: Path) -> tuple[Path, Path]:
    """Corpus, tokenizer and index (with a `split` property), built once per workdir."""
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
        (work / "ado_split.py").write_text(SPLIT_HOOK)
        cfg = (ROOT / "examples" / "demo_index.toml").read_text().replace(
            'on_error = "fail"', 'on_error = "fail"\nfunction = "ado_split:split"')
        (work / "index.toml").write_text(cfg)
        build_index([corpus], index, work / "index.toml", tokenizer=tok, processes=1)
    return tok, index


def mixture(name: str, steps: int, weights: str | dict[str, float], split: str, dynamic: str = "") -> str:
    comps = "\n".join(
        f"[components.{d}]\nwhere = \"source == '{d}' and split == '{split}'\"\n"
        f"weight = {json.dumps(weights if isinstance(weights, str) else weights[d])}\n" for d in DOMAINS)
    return (f"[mixture]\nindex = \"index\"\nseed = 11\nunit = \"tokens\"\nsteps = {steps}\n"
            f"segment_steps = {max(steps // 30, 1)}\n"
            f"[topology]\nworld_size = 1\nbatch_size = 8\nseq_len = 128\n{comps}\n{dynamic}")


def ado_table(steps: int) -> str:
    """ADO with its reference rules and a refit interval scaled to a short run."""
    refit = steps // 6
    return (f"[dynamic]\nalgorithm = \"ado\"\nrefit_every = {refit}\nignore_steps = {refit // 4}\n"
            f"savgol_window = 31\nsubsample = 2\nmin_points = 20\nprior = \"natural\"\n"
            f"lookahead = {max(steps // 30, 1)}\nwait_timeout_s = 600\n")


def train(plan: Path, tok: Path, steps: int, feedback: bool) -> tuple[torch.nn.Module, list[float]]:
    torch.manual_seed(0)
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
def validate(model: torch.nn.Module, val_plan: Path, tok: Path) -> dict[str, float]:
    ds = PlanDataset(val_plan, rank=0, world_size=1, tokenizer=tok)
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


def val_steps(index: Path) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(index / "samples.parquet", columns=["tokens", "split"])
    val = pc.sum(pc.filter(t.column("tokens"), pc.equal(t.column("split"), "val"))).as_py()
    return max(int(val * 1.02) // 1024, 1)  # about one pass over the held-out tokens, EOS included


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "ado_experiment")
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    tok, index = prepare(work)
    runs = {"natural": ("natural", ""), "uniform": ({d: 0.25 for d in DOMAINS}, ""),
            "ado": ("natural", ado_table(args.steps))}
    (work / "val.toml").write_text(mixture("val", val_steps(index), "natural", "val"))
    compile_file(work / "val.toml", work / "plan-val")
    results = {}
    for name, (weights, dynamic) in runs.items():
        (work / f"{name}.toml").write_text(mixture(name, args.steps, weights, "train", dynamic))
        plan = work / f"plan-{name}"
        compile_file(work / f"{name}.toml", plan)
        t0 = time.perf_counter()
        model, losses = train(plan, tok, args.steps, feedback=bool(dynamic))
        results[name] = {"val": validate(model, work / "plan-val", tok), "seconds": time.perf_counter() - t0,
                         "final_train_loss": float(np.mean(losses[-20:]))}
        if dynamic:
            found = [read_decision(plan, v) for v in range(1, args.steps)]
            results[name]["decisions"] = [d for d in found if d is not None]
        print(f"{name}: trained {args.steps} steps in {results[name]['seconds']:.1f} s", file=sys.stderr)
    report(results, args.steps)
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))


def report(results: dict, steps: int) -> None:
    cols = [*DOMAINS, "mean_over_domains", "all_tokens"]
    print(f"per-domain validation loss (nats/token) after {steps} steps x 1024 tokens")
    print(f"{'mixture':10s}" + "".join(f"{c:>19s}" for c in cols))
    for name, r in results.items():
        print(f"{name:10s}" + "".join(f"{r['val'][c]:>19.4f}" for c in cols))
    for d in results.get("ado", {}).get("decisions", []):
        if d["action"] == "rewrite":
            w = " ".join(f"{x:.3f}" for x in d["weights"])
            print(f"ado decision {d['version']}: losses to step {d['refit_step']}, from step "
                  f"{d['first_step']}: {d['action']} weights [{w}] (fit {d['fit']['accepted']})")


if __name__ == "__main__":
    main()

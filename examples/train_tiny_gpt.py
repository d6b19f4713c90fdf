"""Train a tiny GPT on a mixtera plan with DDP on CPU, logging the loss per domain; checkpoint and resume.

    torchrun --standalone --nproc_per_node=2 examples/train_tiny_gpt.py \\
        --plan plan/ --tokenizer tok.json --steps 20 --checkpoint-dir ckpt [--resume]

Every rank replays its own rank file through ``PlanDataset``; ``domain_ids`` give per-domain token
counts and loss sums, which are summed over ranks for the log and handed, per rank, to any
``--feedback`` reporter (``mixtera.runtime.FeedbackReporter.report(step, tokens=..., loss_sum=...)``).
A checkpoint holds the model, the optimizer and every rank's data state; ``--resume`` continues
from the latest one and replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mixtera.runtime import PlanDataset
from mixtera.runtime.atomic import atomic_file, write_atomic
from mixtera.runtime.document_masks import dense_document_mask, flex_block_mask
from mixtera.runtime.packing import IGNORE_INDEX

DomainHook = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step, tokens[D], loss_sum[D]) of this rank


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if mask is None:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif isinstance(mask, torch.Tensor):  # --document-mask on CPU: a dense boolean mask
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:  # --document-mask on a GPU: a FlexAttention block mask
            from torch.nn.attention.flex_attention import flex_attention

            att = flex_attention(q, k, v, block_mask=mask)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, dim: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                mask: Any = None) -> torch.Tensor:
        positions = torch.arange(ids.shape[1]) if position_ids is None else position_ids
        x = self.tok(ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))


def model_inputs(batch: dict[str, torch.Tensor], document_mask: bool) -> dict[str, Any]:
    """With --document-mask: positions restart and attention stays inside every packed document
    (FlexAttention on a GPU; its backward pass does not run on the CPU, so there a dense mask)."""
    if not document_mask:
        return {}
    docs = batch["document_ids"]
    mask = flex_block_mask(docs) if docs.is_cuda else dense_document_mask(docs)
    return {"position_ids": batch["position_ids"], "mask": mask}


def domain_losses(
    logits: torch.Tensor, labels: torch.Tensor, domain_ids: torch.Tensor, domains: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean loss for backward, and per-domain (tokens, loss sums) over the counted labels."""
    flat = labels.flatten()
    per_token = F.cross_entropy(logits.flatten(0, 1), flat, ignore_index=IGNORE_INDEX, reduction="none")
    counted = flat != IGNORE_INDEX
    dom, losses = domain_ids.flatten()[counted], per_token[counted]
    tokens = torch.bincount(dom, minlength=domains).double()
    loss_sum = torch.zeros(domains, dtype=torch.float64).index_add_(0, dom, losses.detach().double())
    return losses.mean(), tokens, loss_sum


def save_checkpoint(
    folder: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer, data_state: dict, rank: int
) -> None:
    """Each rank writes its data state; rank 0 writes model + optimizer and then the pointer to it."""
    target = folder / f"step-{step:07d}"
    target.mkdir(parents=True, exist_ok=True)
    _save(target / f"data-rank-{rank:05d}.pt", data_state)
    dist.barrier()
    if rank == 0:
        _save(target / "model.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step})
        write_atomic(folder / "latest.json", json.dumps({"step": step, "dir": target.name}).encode())
    dist.barrier()


def _save(path: Path, obj: object) -> None:
    with atomic_file(path) as f:
        torch.save(obj, f)


def load_checkpoint(
    folder: Path, model: nn.Module, opt: torch.optim.Optimizer, ds: PlanDataset, rank: int
) -> int:
    if not (folder / "latest.json").is_file():
        raise SystemExit(f"error: --resume: no checkpoint in {folder} (latest.json is missing)")
    latest = json.loads((folder / "latest.json").read_text())
    target = folder / latest["dir"]
    state = torch.load(target / "model.pt", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    # Rank r loads data-rank-r; with another world size (--plan NEW compiled with --from-plan OLD
    # --from-step S from a checkpoint at step S) the old ranks' states are all at S: any one will do.
    saved = sorted(target.glob("data-rank-*.pt"))
    ds.load_state_dict(torch.load(saved[rank % len(saved)], weights_only=False))
    return int(state["step"])


def feedback_hooks(args: argparse.Namespace) -> list[DomainHook]:
    if not args.feedback:
        return []
    from mixtera.runtime import FeedbackReporter

    on_refit = None
    if args.feedback == "inprocess":  # no side `mixtera feedback --follow`: rank 0 rewrites the plan itself
        from mixtera.planner.feedback.orchestrate import inprocess_rewriter

        on_refit = inprocess_rewriter(args.plan)
    reporter = FeedbackReporter(args.plan, on_refit=on_refit)
    return [
        lambda step, tokens, loss_sum: reporter.report(
            step, tokens=tokens.tolist(), loss_sum=loss_sum.tolist()
        )
    ]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json of the index (optional with stored tokens)")
    p.add_argument("--steps", type=int, required=True, help="train until this step (absolute)")
    p.add_argument("--checkpoint-dir", type=Path, required=True)
    p.add_argument("--checkpoint-every", type=int, default=0, help="0: only at the end")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per rank")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--feedback", nargs="?", const="report", choices=["report", "inprocess"],
                   help="report per-domain losses to the plan; `inprocess`: rank 0 also runs the rewrite")
    p.add_argument("--json", action="store_true", help="log one JSON object per step on stdout")
    p.add_argument("--document-mask", action="store_true",
                   help="attend within each packed document only (FlexAttention), positions per document")
    p.add_argument("--eval-every", type=int, default=0,
                   help="every N steps, the per-domain loss on the plan's [validation] split (0: never)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = PlanDataset(args.plan, tokenizer=args.tokenizer,  # rank and world size from torch.distributed
                     document_masks=args.document_mask)
    vocab = int(ds.tokenizer_info["vocab_size"])
    model = nn.parallel.DistributedDataParallel(TinyGPT(vocab, ds.seq_len))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    start = load_checkpoint(args.checkpoint_dir, model.module, opt, ds, rank) if args.resume else 0
    if rank == 0 and args.resume:
        print(f"resumed at step {start}", file=sys.stderr)
    hooks = feedback_hooks(args)
    if args.eval_every:
        hooks.append(evaluation_hook(args, model, rank))
    stats = train(args, model, opt, ds, start, hooks, rank)
    if start < args.steps:
        save_checkpoint(args.checkpoint_dir, args.steps, model.module, opt, ds.state_dict(), rank)
    if rank == 0:
        wait, total = stats
        print(
            f"data wait: {100 * wait / max(total, 1e-9):.2f}% of step time ({wait:.3f} s of {total:.3f} s)",
            file=sys.stderr,
        )
    dist.destroy_process_group()


def train(
    args: argparse.Namespace,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    ds: PlanDataset,
    start: int,
    hooks: list[DomainHook],
    rank: int,
    forward: Callable[[dict[str, Any]], torch.Tensor] | None = None,
) -> tuple[float, float]:
    """Steps ``[start, args.steps)``; returns (seconds waiting for data, seconds in steps).
    ``forward(batch)`` gives the logits (default: the GPT on ``input_ids``; the VLM passes its own)."""
    if forward is None:
        def forward(batch: dict[str, Any]) -> torch.Tensor:
            return model(batch["input_ids"], **model_inputs(batch, args.document_mask))
    wait = total = 0.0
    domains = len(ds.domains)
    loader = iter(ds.loader(num_workers=args.workers))
    for step in range(start, min(args.steps, ds.steps)):
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        if int(batch["step"][0]) != step:
            raise RuntimeError(f"loader yielded step {int(batch['step'][0])}, expected {step}")
        loss, tokens, loss_sum = domain_losses(forward(batch), batch["labels"], batch["domain_ids"], domains)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for hook in hooks:
            hook(step, tokens, loss_sum)
        log_step(step, loss, tokens, loss_sum, ds.domains, rank, args.json)
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and step + 1 < args.steps:
            save_checkpoint(args.checkpoint_dir, step + 1, model.module, opt, ds.state_dict(), rank)
        t2 = time.perf_counter()
        if step > start:  # the first step includes starting the loader's workers
            wait, total = wait + t1 - t0, total + t2 - t0
    return wait, total


def evaluation_hook(args: argparse.Namespace, model: nn.Module, rank: int) -> DomainHook:
    """Every ``--eval-every`` steps: mean loss per domain over the whole validation split."""
    val = PlanDataset(args.plan, tokenizer=args.tokenizer, split="validation",
                      document_masks=args.document_mask)

    def evaluate(step: int, _tokens: torch.Tensor, _loss_sum: torch.Tensor) -> None:
        if (step + 1) % args.eval_every:
            return
        model.eval()
        tokens = torch.zeros(len(val.domains), dtype=torch.float64)
        loss_sum = torch.zeros_like(tokens)
        with torch.no_grad():
            for batch in val.loader(num_workers=0):  # the same batches at every evaluation
                logits = model(batch["input_ids"], **model_inputs(batch, args.document_mask))
                _, t, s = domain_losses(logits, batch["labels"], batch["domain_ids"], len(val.domains))
                tokens, loss_sum = tokens + t, loss_sum + s
        model.train()
        both = torch.stack([tokens, loss_sum])
        dist.all_reduce(both)
        if rank == 0:
            per = {n: float(both[1, i] / both[0, i]) for i, n in enumerate(val.domains) if both[0, i]}
            if args.json:
                print(json.dumps({"eval_after_step": step, "validation_loss": per}), flush=True)
            else:
                shown = "  ".join(f"{n} {v:.3f}" for n, v in per.items())
                print(f"eval after step {step}: validation loss  {shown}", flush=True)

    return evaluate


def log_step(
    step: int,
    loss: torch.Tensor,
    tokens: torch.Tensor,
    loss_sum: torch.Tensor,
    names: list[str],
    rank: int,
    as_json: bool,
) -> None:
    both = torch.stack([tokens, loss_sum])
    dist.all_reduce(both)
    mean = torch.tensor([float(loss.detach())], dtype=torch.float64)
    dist.all_reduce(mean)
    if rank != 0:
        return
    per = {n: (float(both[1, i] / both[0, i]) if both[0, i] else None) for i, n in enumerate(names)}
    record = {
        "step": step,
        "loss": float(mean) / dist.get_world_size(),
        "domain_loss": per,
        "domain_tokens": {n: int(both[0, i]) for i, n in enumerate(names)},
    }
    if as_json:
        print(json.dumps(record), flush=True)
    else:
        doms = "  ".join(f"{n} {v:.3f}" for n, v in per.items() if v is not None)
        print(f"step {step:5d}  loss {record['loss']:.4f}  {doms}", flush=True)


if __name__ == "__main__":
    main()

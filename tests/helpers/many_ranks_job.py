"""A torchrun job (gloo, no model) for tests/runtime/test_many_ranks.py and bench/scale.py.

    python -m torch.distributed.run --standalone --nproc_per_node=N tests/helpers/many_ranks_job.py \
        --plan PLAN --tokenizer TOK --out OUT [--stop S] [--resume STATE.pt]

Every rank replays its plan rank through ``PlanDataset`` (rank and world size from torch.distributed),
reports per-domain token counts and losses from a fixed per-domain curve through
``FeedbackReporter`` (an all-reduce of the per-domain sums every step, rank 0 writes the log) and
stops after step ``S - 1``. It writes ``OUT/rank-N.pt``: its steps, batches, dataset state and the
seconds every ``report`` took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.distributed as dist

from mixtera.runtime import FeedbackReporter, PlanDataset

EPS, BETA, ALPHA = 2.0, 8.0, 0.4  # loss of domain k at step s: EPS + k / 4 + BETA * (s + 1) ** -ALPHA


def domain_losses(step: int, domains: int) -> torch.Tensor:
    return EPS + torch.arange(domains, dtype=torch.float64) / 4 + BETA * (step + 1) ** -ALPHA


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stop", type=int, default=None)
    ap.add_argument("--resume", default=None, help="a dataset state (torch.save) to resume from")
    args = ap.parse_args()
    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        ds = PlanDataset(args.plan, tokenizer=args.tokenizer)
        if args.resume:
            ds.load_state_dict(torch.load(args.resume, weights_only=False))
        stop = args.stop if args.stop is not None else ds.steps
        rec: dict = {"rank": ds.rank, "world": ds.world_size, "steps": [], "input_ids": [], "domain_ids": [],
                     "report_s": []}
        with FeedbackReporter(args.plan, fsync=False) as fb:
            for b in ds.loader(num_workers=0):
                step = int(b["step"][0])
                tokens = torch.bincount(b["domain_ids"].reshape(-1), minlength=len(ds.domains)).double()
                t0 = time.perf_counter()
                fb.report(step, tokens=tokens, loss_sum=tokens * domain_losses(step, len(ds.domains)))
                rec["report_s"].append(time.perf_counter() - t0)
                for key in ("input_ids", "domain_ids"):
                    rec[key].append(b[key])
                rec["steps"].append(step)
                if step + 1 >= stop:
                    break
        rec["state"] = ds.state_dict()
        torch.save(rec, Path(args.out) / f"rank-{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

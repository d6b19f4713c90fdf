"""Train a small GPT-2 from a mixtera plan with the Hugging Face `Trainer` (the `hf` extra).

The model is a GPT-2 *config* built in code (nothing is downloaded). Three things connect the Trainer
to the plan:

1. `PlanTrainer.get_train_dataloader` returns the rank's own `PlanDataset` loader. A plan already
   holds one batch stream per data-parallel rank, so accelerate must neither dispatch nor shard it.
2. `PlanTrainer.compute_loss` uses the plan's labels (already shifted by one, -100 where nothing is
   predicted) and hands per-domain (tokens, loss sums) to `FeedbackReporter`, so that
   `mixtera feedback` can adapt the mixture (ADO) while the Trainer runs.
3. `DataStateCallback` stores every rank's data state in each Trainer checkpoint; `--resume` loads it,
   and the Trainer's own batch skipping is off: the plan continues exactly at the next step.

    pip install 'mixtera[hf]'
    torchrun --standalone --nproc_per_node=2 examples/train_hf_trainer.py \\
        --plan build/demo/plan --tokenizer build/demo/tokenizer.json --out build/hf --max-steps 40
    # later, the same command with --resume (and a larger --max-steps) continues from the last checkpoint

Every step appends `{"step", "batch", "loss"}` to OUT/steps-rank-R.jsonl (`batch` is a digest of the
step's input ids), which is how tests/examples/test_hf_trainer.py checks that a resumed run sees exactly
the batches of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from mixtera.runtime import FeedbackReporter, PlanDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling example module
from train_tiny_gpt import domain_losses  # noqa: E402

DATA_STATE = "mixtera-data-rank-{rank:05d}.pt"


class PlanTrainer(Trainer):
    """A Trainer whose batches come from the rank's plan and whose losses feed back into it."""

    def __init__(self, *args: Any, plan_data: PlanDataset, reporter: FeedbackReporter | None,
                 step_log: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan_data = plan_data
        self.reporter = reporter
        self.step_log = step_log

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        return self.plan_data.loader(num_workers=self.args.dataloader_num_workers)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        outputs = model(input_ids=inputs["input_ids"])
        loss, tokens, loss_sum = domain_losses(outputs.logits, inputs["labels"], inputs["domain_ids"],
                                               len(self.plan_data.domains))
        step = int(inputs["step"][0])
        if model.training:
            if self.reporter is not None:
                self.reporter.report(step, tokens=tokens, loss_sum=loss_sum)
            self._log_step(step, inputs["input_ids"], float(loss.detach()))
        return (loss, outputs) if return_outputs else loss

    def _log_step(self, step: int, input_ids: torch.Tensor, loss: float) -> None:
        digest = hashlib.blake2b(input_ids.cpu().numpy().tobytes(), digest_size=8).hexdigest()
        with self.step_log.open("a") as f:
            f.write(json.dumps({"step": step, "batch": digest, "loss": round(loss, 6)}) + "\n")


class DataStateCallback(TrainerCallback):
    """Saves the rank's data state into every checkpoint folder the Trainer writes."""

    def __init__(self, plan_data: PlanDataset, out: Path) -> None:
        self.plan_data = plan_data
        self.out = out

    def on_save(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        folder = self.out / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.plan_data.state_dict(), folder / DATA_STATE.format(rank=self.plan_data.rank))


def build_model(plan_data: PlanDataset, vocab_size: int, eos_id: int | None) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=vocab_size, n_positions=plan_data.seq_len, n_embd=64, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos_id,
                        eos_token_id=eos_id)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plan", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="Trainer output and checkpoint folder")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--save-steps", type=int, default=20)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--feedback", action="store_true", help="report per-domain losses to the plan's log")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    args = ap.parse_args()

    from tokenizers import Tokenizer

    plan_data = PlanDataset(args.plan, tokenizer=args.tokenizer)
    tokenizer = Tokenizer.from_file(str(args.tokenizer))
    eos_id = (plan_data.tokenizer_info or {}).get("eos_id")
    checkpoint = get_last_checkpoint(str(args.out)) if args.resume else None
    if args.resume and checkpoint is None:
        sys.exit(f"--resume: no checkpoint-N folder in {args.out}")
    if checkpoint is not None:
        plan_data.load_state_dict(torch.load(Path(checkpoint) / DATA_STATE.format(rank=plan_data.rank)))
    reporter = FeedbackReporter(args.plan) if args.feedback else None
    training = TrainingArguments(
        output_dir=str(args.out), max_steps=args.max_steps, save_steps=args.save_steps,
        per_device_train_batch_size=plan_data.batch_size, learning_rate=3e-3, warmup_steps=0,
        lr_scheduler_type="constant",  # a resumed run may raise --max-steps: a decay would depend on it
        logging_steps=10, report_to=[], use_cpu=not torch.cuda.is_available(), seed=0,
        dataloader_num_workers=args.num_workers, remove_unused_columns=False,
        ignore_data_skip=True,  # the data state resumes the plan; skipping batches again would lose them
    )
    trainer = PlanTrainer(
        model=build_model(plan_data, tokenizer.get_vocab_size(), eos_id), args=training, plan_data=plan_data,
        reporter=reporter,
        step_log=args.out / f"steps-rank-{plan_data.rank}.jsonl",
        callbacks=[DataStateCallback(plan_data, args.out)],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    trainer.train(resume_from_checkpoint=checkpoint)
    if reporter is not None:
        reporter.close()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained to step {trainer.state.global_step}; checkpoints in {args.out}")


if __name__ == "__main__":
    main()

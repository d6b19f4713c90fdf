"""Train a tiny LLaVA-style vision-language model on a mixtera plan of image-text and text samples (DDP, CPU).

    torchrun --standalone --nproc_per_node=2 examples/train_tiny_vlm.py --plan plan/ --tokenizer tok.json \\
        --steps 40 --checkpoint-dir ckpt [--resume] [--feedback] [--heldout heldout.tar] [--blank-images]

The plan's image samples arrive as ``image_tokens`` placeholder ids before their caption
(``PlanDataset(output="tokens", image_token_id=...)``); the model embeds every image as 8 x 8 patches,
projects them into the tiny GPT's embedding space (a two-layer MLP, as LLaVA does) and writes them over
the placeholder positions, so the text that follows attends to the image. Per-domain losses go to the
log and, with ``--feedback``, to ``mixtera feedback`` (ADO over the image-text and text components).
``--heldout`` measures the caption loss on a shard the plan never saw, with its images and with them
blanked; ``--blank-images`` trains the same model with every image blanked: the text-only baseline.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_tiny_gpt import (  # noqa: E402
    TinyGPT,
    feedback_hooks,
    load_checkpoint,
    save_checkpoint,
    train,
)

from mixtera.runtime import PlanDataset  # noqa: E402
from mixtera.runtime.packing import IGNORE_INDEX  # noqa: E402

IMAGE_TOKEN = "<image>"
PATCH = 8  # pixels per patch side: a 32 x 32 image gives 16 patches, the plan's image_tokens


class PatchProjector(nn.Module):
    """Images (uint8, N x 3 x H x W) to N x patches x dim: a strided convolution, then an MLP projector."""

    def __init__(self, dim: int, patch: int = PATCH) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.project = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patches(images.float() / 127.5 - 1.0)  # N x dim x H/p x W/p
        return self.project(x.flatten(2).transpose(1, 2))


class TinyVLM(nn.Module):
    """The tiny GPT with image patches written over the placeholder spans of ``input_ids``."""

    def __init__(self, vocab: int, seq_len: int, dim: int = 64) -> None:
        super().__init__()
        self.gpt = TinyGPT(vocab, seq_len, dim=dim)
        self.vision = PatchProjector(dim)

    def forward(self, ids: torch.Tensor, images: torch.Tensor, image_positions: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        x = self.gpt.tok(ids)
        if images.shape[0]:
            patches = self.vision(images)  # N x P x dim
            span = torch.arange(patches.shape[1])
            where = (image_positions[:, :1] * t + image_positions[:, 1:] + span).reshape(-1)
            x = x.reshape(b * t, -1).index_copy(0, where, patches.reshape(-1, x.shape[-1])).view(b, t, -1)
        x = x + self.gpt.pos(torch.arange(t))
        for block in self.gpt.blocks:
            x = block(x)
        return self.gpt.head(self.gpt.ln(x))


def blank(images: torch.Tensor) -> torch.Tensor:
    """What the text-only baseline sees: every pixel the same mid grey, so no image carries information."""
    return torch.full_like(images, 128)


# -- held-out captions -------------------------------------------------------------------------------
def heldout_batch(path: Path, tokenizer_path: Path, image_token_id: int, image_tokens: int,
                  image_size: int) -> dict[str, torch.Tensor]:
    """Every sample of a held-out shard as one sequence: placeholders, caption, end of text; labels only
    on the caption (and its end): what a captioner is scored on."""
    from make_vlm_corpus import read_shard
    from PIL import Image
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    eos = tok.token_to_id("<|endoftext|>")
    samples = read_shard(path)
    captions = [tok.encode(s["txt"].decode(), add_special_tokens=False).ids + [eos] for s in samples]
    width = image_tokens + max(len(c) for c in captions)
    ids = torch.full((len(samples), width), eos, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, caption in enumerate(captions):
        seq = [image_token_id] * image_tokens + caption
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, image_tokens - 1 : len(seq) - 1] = torch.tensor(caption)
    images = []
    for s in samples:
        img = Image.open(io.BytesIO(next(v for k, v in s.items() if k in ("png", "jpg"))))
        img = img.convert("RGB").resize((image_size, image_size))
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    positions = torch.stack([torch.arange(len(samples)), torch.zeros(len(samples), dtype=torch.long)], 1)
    return {"input_ids": ids, "labels": labels, "images": torch.stack(images), "image_positions": positions}


def caption_loss(model: nn.Module, batch: dict[str, torch.Tensor], blanked: bool) -> float:
    model.eval()
    with torch.no_grad():
        images = blank(batch["images"]) if blanked else batch["images"]
        logits = model(batch["input_ids"], images, batch["image_positions"])
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
    model.train()
    return float(loss)


# -- training -----------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--tokenizer", required=True, type=Path, help="tokenizer.json of the index, with <image>")
    p.add_argument("--steps", type=int, required=True, help="train until this step (absolute)")
    p.add_argument("--checkpoint-dir", type=Path, required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per rank")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--image-size", type=int, default=32, help="images are resized to SIZE x SIZE pixels")
    p.add_argument("--feedback", nargs="?", const="report", choices=["report", "inprocess"],
                   help="report per-domain losses to the plan; `inprocess`: rank 0 also runs the rewrite")
    p.add_argument("--heldout", type=Path,
                   help="a WebDataset shard outside the plan: its caption loss at the end")
    p.add_argument("--blank-images", action="store_true", help="the text-only baseline: every image blanked")
    p.add_argument("--json", action="store_true", help="log one JSON object per step on stdout")
    p.add_argument("--checkpoint-every", type=int, default=0, help="0: only at the end")
    return p.parse_args()


def image_token_id(tokenizer: Path) -> int:
    from tokenizers import Tokenizer

    found = Tokenizer.from_file(str(tokenizer)).token_to_id(IMAGE_TOKEN)
    if found is None:
        raise SystemExit(f"error: {tokenizer} has no {IMAGE_TOKEN} token (train it with that special token)")
    return int(found)


def main() -> None:
    args = parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    placeholder = image_token_id(args.tokenizer)
    ds = PlanDataset(args.plan, tokenizer=args.tokenizer, image_token_id=placeholder,
                     image_size=(args.image_size, args.image_size))
    if ds.image_tokens != (args.image_size // PATCH) ** 2:
        raise SystemExit(f"error: the plan's image_tokens is {ds.image_tokens}; {args.image_size} px images "
                         f"give {(args.image_size // PATCH) ** 2} patches of {PATCH} px")
    model = nn.parallel.DistributedDataParallel(TinyVLM(int(ds.tokenizer_info["vocab_size"]), ds.seq_len))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    start = load_checkpoint(args.checkpoint_dir, model.module, opt, ds, rank) if args.resume else 0
    if rank == 0 and args.resume:
        print(f"resumed at step {start}", file=sys.stderr)

    def forward(batch: dict) -> torch.Tensor:
        images = blank(batch["images"]) if args.blank_images else batch["images"]
        return model(batch["input_ids"], images, batch["image_positions"])

    wait, total = train(args, model, opt, ds, start, feedback_hooks(args), rank, forward)
    if start < args.steps:
        save_checkpoint(args.checkpoint_dir, args.steps, model.module, opt, ds.state_dict(), rank)
    if rank == 0:
        print(f"data wait: {100 * wait / max(total, 1e-9):.2f}% of step time", file=sys.stderr)
        if args.heldout:
            report_heldout(args, model.module, placeholder, ds.image_tokens)
    dist.destroy_process_group()


def report_heldout(args: argparse.Namespace, model: nn.Module, placeholder: int, image_tokens: int) -> None:
    batch = heldout_batch(args.heldout, args.tokenizer, placeholder, image_tokens, args.image_size)
    record = {"heldout_caption_loss": caption_loss(model, batch, blanked=args.blank_images),
              "heldout_caption_loss_blanked": caption_loss(model, batch, blanked=True),
              "trained_on": "blank images" if args.blank_images else "images",
              "heldout_samples": int(batch["input_ids"].shape[0])}
    print(json.dumps(record) if args.json else
          f"held-out caption loss {record['heldout_caption_loss']:.4f} (images blanked at evaluation: "
          f"{record['heldout_caption_loss_blanked']:.4f}; trained on {record['trained_on']})", flush=True)


if __name__ == "__main__":
    main()

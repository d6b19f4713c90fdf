"""Decoded images per second per worker: PlanDataset against two baselines, measured in the same run.

    .venv/bin/python bench/vision.py [--size 224] [--repeats 3] [--epochs 2] [--parts decode,tokens]

Shards: ../shared/corpora/image_text (cc12m JPEGs, tuxpaint PNGs) when present, else the generated
captioned-image corpus (examples/make_vlm_corpus.py, under bench/data/vision/). They are indexed and
compiled into a `unit = "samples"` plan over every sample (one rank, batch 16), and then:

- ours: `PlanDataset(output="documents", decode_images=True, image_size=(S, S))`, through
  `ds.loader(num_workers=w)` (each item: text, record columns, decoded images; the image bytes are
  not repeated in `media`, the default `keep_image_bytes=False`);
- (a) the same samples in the same order, each image member read with one `os.pread` at its offset
  (found by a `tarfile` scan, untimed) and decoded by the same function (runtime/images.py:
  transparency over white, JPEG draft, one boxed resize), one tensor per image;
- (b) the `webdataset` library (what a user would pick instead) reading the same shards sequentially,
  decoding each sample's image member with the same function.

The decoder is the same in all three, so the ratios compare loaders, not decoders.

Each with 0 and 2 loader workers. Rates are images per CPU second of the process that decodes (the
main one with 0 workers; the workers' CPU time summed with 2), so they are per worker and hardly
disturbed by other load on a shared machine; wall-clock rates are printed beside them. Every rate is
the best of --repeats alternating rounds. Targets: ours >= 0.8x (a), and ahead of (b), per worker.

``--parts tokens`` measures what a VLM's loader worker delivers: the same shards indexed with the
gpt-neox tokenizer (../shared/tokenizers) and compiled as a `unit = "tokens"` plan with
``image_tokens = 576`` (LLaVA-1.5's 24 x 24 patches of a 336 px image), one rank, batch 8 x 2,048;
`PlanDataset(output="tokens", image_token_id=<|padding|>, image_size=(336, 336))` (tokenizing the
captions, decoding and stacking the images, packing) through `ds.loader(num_workers=w)` with 0 and
2 workers, in image-text samples and tokens per CPU second of a worker, against the documents path
decoding the same images at the same size (`decode_images=True`), the baseline in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))
DATA = ROOT / "bench" / "data" / "vision"
SHARED = ROOT.parent / "shared" / "corpora" / "image_text"
BATCH = 16
TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "gpt-neox-olmo-dolma-v1_5.json"
PLACEHOLDER = "<|padding|>"  # a special token of that tokenizer that no text encodes to
VLM_IMAGE_TOKENS, VLM_SIZE, VLM_BATCH, VLM_SEQ_LEN = 576, 336, 8, 2048
VLM_IMAGE_SHARE = 0.85  # of the plan's tokens; tldr pages fill the rest
TEXT = ROOT.parent / "shared" / "corpora" / "text" / "tldr"


def _bench_runtime() -> Any:
    """bench/runtime.py, for its /proc helpers (a plain `import runtime` would find the runtime/ package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_runtime", ROOT / "bench" / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_PROC = _bench_runtime()
child_pids, process_cpu = _PROC.child_pids, _PROC.process_cpu
Run = Callable[[], tuple[int, float, float]]  # -> (images, wall seconds, decoding CPU seconds)


def shards_dir() -> Path:
    if SHARED.is_dir() and any(SHARED.glob("*.tar")):
        return SHARED
    from make_vlm_corpus import build_vlm_corpus

    corpus = DATA / "corpus"
    if not corpus.is_dir():
        build_vlm_corpus(corpus)
    return corpus / "shapes"


def build_plan(shards: Path, epochs: int) -> Path:
    """Index the shards and compile every sample ``epochs`` times into a one-rank samples plan."""
    from mixtera.planner.index.build import build_index

    work = fresh_work("work")
    report = build_index([shards], work / "index", index_config(work))
    steps = epochs * report.samples // BATCH
    return compile_mixture(work, f'unit = "samples"\nsteps = {steps}\nsegment_steps = 16',
                           f"batch_size = {BATCH}")


def build_token_plan(shards: Path, epochs: int, tokenizer: Path) -> Path:
    """The shards and tldr pages (the text that fills what whole image-text samples leave of a
    sequence: a plan never pads) indexed with ``tokenizer``, about ``epochs`` passes over the images
    as a LLaVA-shaped tokens plan."""
    from mixtera.planner.index.build import build_index

    work = fresh_work("work-tokens")
    config = work / "index.toml"
    config.write_text('[index]\ntext = ["txt", "text"]\n\n[properties.source]\npath = "{source}/**"\n')
    build_index([shards, TEXT], work / "index", config, tokenizer=tokenizer, processes=1)
    import pyarrow.compute as pc

    from mixtera.planner.index import load_index

    table = load_index(work / "index", columns=["source", "tokens"]).samples
    images = table.filter(pc.equal(table["source"], shards.name))
    # The image-text samples' tokens: text, placeholders, bos and eos.
    tokens = pc.sum(images["tokens"]).as_py() + images.num_rows * (VLM_IMAGE_TOKENS + 2)
    steps = max(1, int(epochs * tokens / VLM_IMAGE_SHARE) // (VLM_BATCH * VLM_SEQ_LEN))
    return compile_mixture(
        work, f'unit = "tokens"\nsteps = {steps}\nsegment_steps = 4\nimage_tokens = {VLM_IMAGE_TOKENS}',
        f"batch_size = {VLM_BATCH}\nseq_len = {VLM_SEQ_LEN}",
        f"[components.images]\nwhere = \"source == '{shards.name}'\"\nweight = {VLM_IMAGE_SHARE}\n\n"
        f"[components.text]\nwhere = \"source == '{TEXT.parent.name}'\"\n"
        f"weight = {1 - VLM_IMAGE_SHARE:.2f}\n")


def fresh_work(name: str) -> Path:
    import shutil

    work = DATA / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def index_config(work: Path) -> Path:
    config = work / "index.toml"
    config.write_text('[index]\ntext = "txt"\n')
    return config


def compile_mixture(work: Path, mixture: str, topology: str,
                    components: str = "[components.images]\nweight = 1.0\n") -> Path:
    from mixtera.planner.compile.pipeline import compile_file

    (work / "mixture.toml").write_text(
        f'[mixture]\nindex = "index"\nseed = 1\n{mixture}\n\n[topology]\nworld_size = 1\n{topology}\n\n'
        f"{components}"
    )
    compile_file(work / "mixture.toml", work / "plan")
    return work / "plan"


def image_members(shard: Path) -> list[tuple[int, int, str]]:
    """Per sample of ``shard``, in order: (data offset, size, extension) of its first image member."""
    from mixtera.runtime.webdataset import kind_of, split_name

    found: dict[str, tuple[int, int, str]] = {}
    order: list[str] = []
    with tarfile.open(shard) as tar:
        for info in tar:
            key, ext = split_name(info.name)
            if key not in order:
                order.append(key)
            if kind_of(ext) == "image" and key not in found:
                found[key] = (info.offset_data, info.size, ext)
    return [found[k] for k in order if k in found]


def planned_reads(plan: Path) -> list[tuple[Path, int, int, str]]:
    """The plan's samples in replay order as (shard, image offset, size, where)."""
    from mixtera.runtime.plan import Plan

    with Plan.open(plan) as p:
        paths = {int(f["file_id"]): p.corpus_root / f["path"] for f in p.files}
        members = {fid: image_members(path) for fid, path in paths.items()}
        reads = []
        for step in range(p.steps):
            ent = p.step_entries(0, step)
            for f, r in zip(ent.file.tolist(), ent.record.tolist(), strict=True):
                off, size, ext = members[f][r]
                reads.append((paths[f], off, size, f"{paths[f].name}#{r}.{ext}"))
    return reads


# -- the three readers ------------------------------------------------------------------------------
def ours(plan: Path, size: tuple[int, int]) -> Callable[[int], Iterator[int]]:
    from mixtera.runtime import PlanDataset

    def images(workers: int) -> Iterator[int]:
        ds = PlanDataset(plan, rank=0, world_size=1, output="documents", decode_images=True, image_size=size)
        for docs in ds.loader(num_workers=workers):
            yield sum(len(d.get("images", ())) for d in docs)

    return images


def ours_tokens(plan: Path, tokenizer: Path, counted: list[int]) -> Callable[[int], Iterator[int]]:
    """The tokens path with images; yields images per batch and appends the batch's tokens to ``counted``."""
    from tokenizers import Tokenizer

    from mixtera.runtime import PlanDataset

    placeholder = Tokenizer.from_file(str(tokenizer)).token_to_id(PLACEHOLDER)

    def images(workers: int) -> Iterator[int]:
        ds = PlanDataset(plan, rank=0, world_size=1, output="tokens", tokenizer=tokenizer,
                         image_token_id=placeholder, image_size=(VLM_SIZE, VLM_SIZE))
        for batch in ds.loader(num_workers=workers):
            counted.append(int(batch["input_ids"].numel()))
            yield int(batch["images"].shape[0])

    return images


class PreadDecode(IterableDataset):
    """(a): one positioned read per image member, then the runtime's decode; worker j takes every
    w-th batch of BATCH reads, as the plan's steps are dealt to loader workers."""

    def __init__(self, reads: list[tuple[Path, int, int, str]], size: tuple[int, int]) -> None:
        super().__init__()
        self.reads, self.size = reads, size

    def __iter__(self) -> Iterator[list[Any]]:
        from torch.utils.data import get_worker_info

        from mixtera.runtime.images import decode_image

        info = get_worker_info()
        j, w = (info.id, info.num_workers) if info else (0, 1)
        fds: dict[Path, int] = {}
        for lo in range(j * BATCH, len(self.reads), w * BATCH):
            batch = []
            for path, off, n, where in self.reads[lo : lo + BATCH]:
                fd = fds.get(path) or fds.setdefault(path, os.open(path, os.O_RDONLY))
                batch.append(decode_image(os.pread(fd, n, off), self.size, where=where))
            yield batch  # the decoded images travel to the training process, as ours do
        for fd in fds.values():
            os.close(fd)


def webdataset_images(shards: list[Path], size: tuple[int, int], epochs: int) -> Any:
    """(b): webdataset's sequential shard reading, the same decode of each sample's image member."""
    import webdataset as wds

    from mixtera.runtime.images import decode_image
    from mixtera.runtime.webdataset import kind_of

    def decode(sample: dict[str, Any]) -> Any:
        ext = next(k for k in sample if not k.startswith("__") and kind_of(k) == "image")
        return decode_image(sample[ext], size, where=f"{sample['__url__']} {sample['__key__']}")

    urls = [str(s) for s in shards] * epochs
    shards_in_order = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    return shards_in_order.map(decode).batched(BATCH, collation_fn=list)


# -- timing -------------------------------------------------------------------------------------------
def measured(make: Callable[[int], Any], workers: int) -> Run:
    """A run of one pass; with workers, their CPU time is read from /proc just before they exit."""
    from torch.utils.data import DataLoader

    def run() -> tuple[int, float, float]:
        source = make(workers)
        if isinstance(source, Iterator):  # ours: already a loader's batches
            loader: Any = source
        else:
            loader = iter(DataLoader(source, batch_size=None, num_workers=workers,
                                     persistent_workers=False))
        w0, c0 = time.perf_counter(), time.process_time()
        first = next(loader)
        pids = child_pids() if workers else []
        cpu0 = {p: 0.0 for p in pids}  # workers started after w0: all their time counts
        images, last = len(first) if isinstance(first, list) else first, {}
        for got in loader:
            images += len(got) if isinstance(got, list) else got
            last = {p: process_cpu(p) for p in pids if Path(f"/proc/{p}").exists()} or last
        wall = time.perf_counter() - w0
        cpu = sum(last.get(p, 0.0) - cpu0[p] for p in pids) if workers else time.process_time() - c0
        return images, wall, cpu

    return run


def best(runs: list[Run], repeats: int) -> list[tuple[float, float]]:
    """(best images per decoding CPU second, best images per wall second) per run, alternating."""
    out = [(0.0, 0.0)] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            images, wall, cpu = run()
            out[i] = (max(out[i][0], images / max(cpu, 1e-9)), max(out[i][1], images / wall))
    return out


def bench_decode(shards: Path, args: argparse.Namespace) -> None:
    size = (args.size, args.size)
    plan = build_plan(shards, args.epochs)
    reads = planned_reads(plan)
    tar_files = sorted(shards.glob("*.tar"))
    print(f"shards: {', '.join(p.name for p in tar_files)} ({len(reads) // args.epochs} samples) x "
          f"{args.epochs} passes, decoded to {args.size} x {args.size}")
    for workers in (0, 2):
        rates = best([measured(ours(plan, size), workers),
                      measured(lambda _w: PreadDecode(reads, size), workers),
                      measured(lambda _w: webdataset_images(tar_files, size, args.epochs), workers)],
                     args.repeats)
        (o, ow), (a, aw), (b, bw) = rates
        print(f"{workers} workers, images per CPU second of a worker [per wall second, all workers]:")
        print(f"    PlanDataset           {o:8.0f}  [{ow:6.0f}]")
        print(f"    (a) pread + decode    {a:8.0f}  [{aw:6.0f}]   ours / (a) {o / a:.2f} (target >= 0.80)")
        print(f"    (b) webdataset        {b:8.0f}  [{bw:6.0f}]   ours / (b) {o / b:.2f} (target > 1.00)")


def bench_tokens(shards: Path, args: argparse.Namespace) -> None:
    """Image-text samples and tokens per worker on the LLaVA-shaped tokens plan vs the documents path."""
    if not TOKENIZER.is_file():
        print(f"tokens part skipped: {TOKENIZER} is absent")
        return
    size = (VLM_SIZE, VLM_SIZE)
    token_plan = build_token_plan(shards, args.epochs, TOKENIZER)
    doc_plan = build_plan(shards, args.epochs)
    counted: list[int] = []
    tokens_run = ours_tokens(token_plan, TOKENIZER, counted)
    counted.clear()
    images = sum(tokens_run(0))
    tokens_per_image = sum(counted) / images  # of one pass over the plan: every batch's tokens
    print(f"tokens plan: image_tokens {VLM_IMAGE_TOKENS}, batch {VLM_BATCH} x {VLM_SEQ_LEN}, {len(counted)} "
          f"steps, {images} image-text samples ({sum(counted) / images:.0f} tokens each, with the text "
          f"and padding of the step); images decoded to {VLM_SIZE} x {VLM_SIZE}, tokenizer {TOKENIZER.name}")
    for workers in (0, 2):
        (t, tw), (d, dw) = best([measured(tokens_run, workers), measured(ours(doc_plan, size), workers)],
                                args.repeats)
        print(f"{workers} workers, per CPU second of a worker [per wall second, all workers]:")
        print(f"    tokens path           {t:8.0f} samples/s  {t * tokens_per_image:10,.0f} tokens/s  "
              f"[{tw:6.0f} samples/s, {tw * tokens_per_image:10,.0f} tokens/s]")
        print(f"    documents path        {d:8.0f} images/s   [{dw:6.0f}]   tokens / documents {t / d:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224, help="images are resized to SIZE x SIZE")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="passes over the shards per run")
    ap.add_argument("--parts", default="decode,tokens", help="decode (the readers), tokens (the VLM plan)")
    args = ap.parse_args()
    shards = shards_dir()
    parts = args.parts.split(",")
    if "decode" in parts:
        bench_decode(shards, args)
    if "tokens" in parts:
        bench_tokens(shards, args)


if __name__ == "__main__":
    main()

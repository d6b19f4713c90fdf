"""`make demo`: the whole chain on an embedded example corpus, as a user would run it.

1. build a corpus from Python's standard library (several sources, formats, metadata places)
2. train a small offline tokenizer on it (real jobs bring their own tokenizer.json)
3. `mixtera index` + `mixtera inspect INDEX`
4. `mixtera compile` an ADO mixture + `mixtera inspect PLAN`
5. `torchrun` two CPU ranks of the tiny GPT for half the steps, checkpoint, resume for the rest,
   while `mixtera feedback --follow` refits ADO and rewrites future plan segments
6. `mixtera inspect PLAN` again: the weight trajectory ADO chose
7. a tiny vision-language model: pictures the demo draws (WebDataset shards) and text-only notes in one
   plan, ADO over the two, and the caption loss on held-out pictures with and without them
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from demo_tokenizer import train_tokenizer  # noqa: E402
from make_demo_corpus import build_demo_corpus  # noqa: E402
from make_vlm_corpus import build_vlm_corpus, train_vlm_tokenizer  # noqa: E402

BIN = Path(sys.executable).parent


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run(*args: str | Path) -> None:
    cmd = [str(a) for a in args]
    shown = [Path(cmd[0]).name, *cmd[1:]]
    print("$ " + shlex.join(shown), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def mixtera(*args: str | Path) -> None:
    run(BIN / "mixtera", *args)


def corpus_texts(corpus: Path) -> list[str]:
    """The text of every corpus file as bytes decoded leniently: enough to train a demo BPE."""
    import gzip

    import zstandard

    texts = []
    for path in sorted(corpus.rglob("*")):
        if path.suffix == ".gz":
            texts.append(gzip.decompress(path.read_bytes()).decode(errors="replace"))
        elif path.suffix == ".zst":
            texts.append(zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()).decode(
                errors="replace"))
        elif path.suffix == ".jsonl":
            texts.append(path.read_text(errors="replace"))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "demo")
    ap.add_argument("--steps", type=int, default=200, help="steps of the demo mixture to train")
    ap.add_argument("--no-vlm", action="store_true", help="skip step 7, the tiny vision-language model")
    args = ap.parse_args()
    work = args.workdir.resolve()
    if work != (ROOT / "build" / "demo").resolve():
        sys.exit("the demo mixtures name build/demo/index; run with the default --workdir")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    banner("1. build the example corpus from the Python standard library")
    corpus = build_demo_corpus(work / "corpus")
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(work)}  ({path.stat().st_size:,} bytes)")

    banner("2. train a small offline tokenizer on it")
    tokenizer = train_tokenizer(corpus_texts(corpus), work / "tokenizer.json", vocab_size=4096)
    print(f"  {tokenizer.relative_to(work)}")

    banner("3. index the corpus")
    index = work / "index"
    mixtera("index", corpus, "--out", index, "--config", "examples/demo_index.toml", "--tokenizer", tokenizer)
    mixtera("inspect", index)

    banner("4. compile the mixture (ADO enabled)")
    plan = work / "plan"
    mixtera("compile", "examples/mixtures/demo_ado.toml", "--out", plan)
    mixtera("inspect", plan)
    mixtera("inspect", plan, "--rank", "0", "--steps", "0:1")

    banner("5. train a tiny GPT on 2 CPU ranks; ADO feedback runs beside the job")
    train = [BIN / "torchrun", "--standalone", "--nproc_per_node=2", "examples/train_tiny_gpt.py",
             "--plan", plan, "--tokenizer", tokenizer, "--checkpoint-dir", work / "ckpt", "--feedback"]
    half = args.steps // 2

    def resumed_job() -> None:
        run(*train, "--steps", str(half))
        print(f"  checkpoint at step {half}; resuming from it", flush=True)
        run(*train, "--steps", str(args.steps), "--resume")

    with_follower(plan, resumed_job)

    banner("6. what ADO decided")
    mixtera("inspect", plan)
    if not args.no_vlm:
        vision_language_job(work / "vlm")
    print(f"\nEverything is in {work}.")


def with_follower(plan: Path, job: Callable[[], None]) -> None:
    """Run ``job`` while `mixtera feedback --follow` refits ADO beside it (until the plan's last decision)."""
    follower = subprocess.Popen([str(BIN / "mixtera"), "feedback", str(plan), "--follow"], cwd=ROOT)
    try:
        job()
        follower.wait(timeout=120)
    finally:
        if follower.poll() is None:
            follower.terminate()


def vision_language_job(work: Path) -> None:
    banner("7. a tiny vision-language model on pictures the demo draws, mixed with text; ADO over both")
    corpus = build_vlm_corpus(work / "corpus")
    shards = len(list(corpus.glob("*/*.tar")))
    print(f"  {shards} WebDataset shards of 32 x 32 pictures with captions, and text notes")
    tokenizer = train_vlm_tokenizer(corpus, work / "tokenizer.json")
    mixtera("index", corpus, "--out", work / "index", "--config", "examples/vlm_index.toml",
            "--tokenizer", tokenizer)
    plan = work / "plan"
    mixtera("compile", "examples/mixtures/vlm_ado.toml", "--out", plan)
    mixtera("inspect", plan)
    steps = json.loads((plan / "manifest.json").read_text())["steps"]
    train = [BIN / "torchrun", "--standalone", "--nproc_per_node=2", "examples/train_tiny_vlm.py",
             "--plan", plan, "--tokenizer", tokenizer, "--checkpoint-dir", work / "ckpt",
             "--steps", str(steps), "--feedback", "--heldout", corpus / "heldout" / "heldout-0000.tar"]
    with_follower(plan, lambda: run(*train))
    mixtera("inspect", plan)


if __name__ == "__main__":
    main()

"""Runtime throughput per worker against baselines measured in the same process.

    .venv/bin/python bench/runtime.py [--mb 200] [--tokenizer PATH] [--gpt-steps 12]

Generates (once, under bench/data/runtime/) ~MB of JSON lines with ~1 KB documents in three sources,
indexes them with `mixtera index --store-tokens` and compiles a three-component token mixture with
`mixtera compile`, then measures in this one process (one loader worker's work, num_workers=0):

- documents path (`output="documents"`) vs (a) random pread + orjson parsing of the same samples;
- tokens path (tokenizer) vs (b) the tokenizer alone (`encode_batch_fast`) on the same texts;
- pre-tokenized path (token files), in tokens/s;
- (c) a plain sequential read of the corpus files;
- the share of step time the tiny GPT example waits for data (torchrun, 1 process).

The tokenizer runs single-threaded (TOKENIZERS_PARALLELISM=false) so that numbers are per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import orjson  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench" / "data" / "runtime"
BIN = Path(sys.executable).parent
SOURCES = {"web": 0.5, "code": 0.3, "books": 0.2}
BATCH, SEQ = 4, 512


def source_lines() -> list[str]:
    """Real text every machine has: the standard library's sources."""
    stdlib = Path(json.__file__).parent.parent
    lines: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        lines.extend(path.read_text(errors="replace").splitlines())
    return [ln for ln in lines if ln.strip()]


def generate(corpus: Path, mb: int) -> None:
    lines = source_lines()
    rng = np.random.default_rng(0)
    target = mb * 1_000_000
    per_file = 20_000_000
    written, part = 0, 0
    while written < target:
        name = list(SOURCES)[part % len(SOURCES)]
        path = corpus / name / f"part-{part:04d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        out, size = [], 0
        while size < min(per_file, target - written):
            start = int(rng.integers(0, len(lines) - 60))
            text, k = "", start
            goal = int(rng.integers(600, 1400))
            while len(text) < goal:
                text += lines[k] + "\n"
                k += 1
            line = orjson.dumps({"id": f"{part}-{len(out)}", "text": text})
            out.append(line)
            size += len(line) + 1
        path.write_bytes(b"\n".join(out) + b"\n")
        written += size
        part += 1


def tokenizer_path(given: str | None) -> Path:
    if given:
        return Path(given)
    shared = ROOT.parent / "shared" / "tokenizers" / "gpt-neox-olmo-dolma-v1_5.json"
    if shared.exists():
        return shared
    sys.path.insert(0, str(ROOT / "examples"))
    from demo_tokenizer import train_tokenizer

    out = DATA / "demo-tokenizer.json"
    return out if out.exists() else train_tokenizer(source_lines()[:50_000], out, vocab_size=4000)


def prepare(mb: int, tok: Path, steps: int) -> Path:
    corpus, index, plan = DATA / f"corpus-{mb}mb", DATA / f"index-{mb}mb", DATA / f"plan-{mb}mb"
    if not corpus.exists():
        print(f"generating {mb} MB of JSON lines ...", file=sys.stderr)
        generate(corpus, mb)
    if not (index / "manifest.json").exists():
        print("indexing (with tokenizer, --store-tokens) ...", file=sys.stderr)
        subprocess.run([BIN / "mixtera", "index", corpus, "--out", index, "--tokenizer", tok, "--store-tokens"],
                       check=True, stdout=subprocess.DEVNULL)
    comps = "\n".join(f'[components.{n}]\nwhere = "source == \'{n}\'"\nweight = {w}\n' for n, w in SOURCES.items())
    spec = DATA / f"mixture-{mb}mb.toml"
    spec.write_text(f'[mixture]\nindex = "{index.name}"\nseed = 1\nunit = "tokens"\nsteps = {steps}\n'
                    f"segment_steps = 100\n\n[topology]\nworld_size = 1\nbatch_size = {BATCH}\nseq_len = {SEQ}\n\n"
                    + comps)
    if not (plan / "manifest.json").exists():
        subprocess.run([BIN / "mixtera", "compile", spec, "--out", plan], check=True, stdout=subprocess.DEVNULL)
    return plan


def timed(fn):  # noqa: ANN001, ANN201 - tiny helper
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_documents(plan: Path, steps: int) -> dict:
    from runtime import PlanDataset
    from runtime.plan import Plan

    ds = PlanDataset(plan, rank=0, world_size=1, output="documents")
    it = iter(ds.loader(num_workers=0))
    next(it)  # open readers outside the timing

    def ours() -> int:
        return sum(len(next(it)) for _ in range(steps))

    docs, t_ours = timed(ours)
    with Plan.open(plan) as p:
        ents = [p.step_entries(0, s) for s in range(1, steps + 1)]
        paths = {int(f["file_id"]): str(p.corpus_root / f["path"]) for f in p.files}
    fds = {fid: os.open(path, os.O_RDONLY) for fid, path in paths.items()}
    reads = [(fds[f], o, n) for e in ents for f, o, n in zip(e.file.tolist(), e.offset.tolist(),
                                                              e.length.tolist(), strict=True)]

    def baseline() -> int:
        return len([orjson.loads(os.pread(fd, n, o))["text"] for fd, o, n in reads])

    base_docs, t_base = timed(baseline)
    for fd in fds.values():
        os.close(fd)
    assert base_docs == docs
    return {"docs": docs, "ours_docs_s": docs / t_ours, "baseline_docs_s": docs / t_base}


def bench_tokens(plan: Path, tok: Path, steps: int) -> dict:
    from tokenizers import Tokenizer

    from runtime import PlanDataset
    from runtime.plan import Plan

    ds = PlanDataset(plan, rank=0, world_size=1, tokenizer=tok, pretokenized=False)
    it = iter(ds.loader(num_workers=0))
    next(it)

    def ours() -> int:
        return sum(int(next(it)["input_ids"].numel()) for _ in range(steps))

    tokens, t_ours = timed(ours)
    # (b): the tokenizer alone on the texts of the same steps, each document once, batched per step
    docs = PlanDataset(plan, rank=0, world_size=1, output="documents")
    dit = iter(docs.loader(num_workers=0))
    next(dit)
    seen: set[str] = set()
    batches = []
    for _ in range(steps):
        step = [d for d in next(dit) if d["sample_id"] not in seen]
        seen.update(d["sample_id"] for d in step)
        batches.append([d["text"] for d in step])
    tk = Tokenizer.from_file(str(tok))

    def baseline() -> int:
        return sum(len(e.ids) for b in batches for e in tk.encode_batch_fast(b, add_special_tokens=False))

    base_tokens, t_base = timed(baseline)
    with Plan.open(plan) as p:
        pre = PlanDataset(plan, rank=0, world_size=1, pretokenized=True)
        pit = iter(pre.loader(num_workers=0))
        next(pit)
        n_pre = min(p.steps - 1, steps * 20)
        pre_tokens, t_pre = timed(lambda: sum(int(next(pit)["input_ids"].numel()) for _ in range(n_pre)))
    return {"ours_tokens_s": tokens / t_ours, "baseline_tokens_s": base_tokens / t_base,
            "pretokenized_tokens_s": pre_tokens / t_pre}


def bench_sequential(plan: Path) -> dict:
    files = sorted((Path(json.loads((plan / "manifest.json").read_text())["corpus_root"])).rglob("*.jsonl"))

    def read_all() -> tuple[int, int]:
        total = lines = 0
        for path in files:
            with open(path, "rb", buffering=0) as f:
                while chunk := f.read(8 << 20):
                    total += len(chunk)
                    lines += chunk.count(b"\n")
        return total, lines

    (size, lines), t = timed(read_all)
    return {"seq_mb_s": size / t / 1e6, "seq_docs_s": lines / t}


def bench_gpt(plan: Path, tok: Path, steps: int) -> float | None:
    ckpt = DATA / "ckpt"
    cmd = [BIN / "torchrun", "--standalone", "--nproc_per_node=1", ROOT / "examples" / "train_tiny_gpt.py",
           "--plan", plan, "--tokenizer", tok, "--steps", str(steps), "--checkpoint-dir", ckpt]
    run = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    match = re.search(r"data wait: ([\d.]+)%", run.stderr)
    if run.returncode or not match:
        print(run.stderr[-2000:], file=sys.stderr)
        return None
    return float(match.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=200, help="MB of JSON lines to generate (>= 200 for the report)")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: ../shared gpt-neox, else a demo BPE)")
    ap.add_argument("--doc-steps", type=int, default=1500)
    ap.add_argument("--token-steps", type=int, default=100)
    ap.add_argument("--gpt-steps", type=int, default=12)
    args = ap.parse_args()
    tok = tokenizer_path(args.tokenizer)
    plan = prepare(args.mb, tok, steps=max(args.doc_steps, args.token_steps * 20) + 2)
    seq = bench_sequential(plan)
    docs = bench_documents(plan, args.doc_steps)
    toks = bench_tokens(plan, tok, args.token_steps)
    wait = bench_gpt(plan, tok, args.gpt_steps) if args.gpt_steps else None
    print(f"corpus: {args.mb} MB of JSON lines, tokenizer {tok.name}, plan batch {BATCH} x seq_len {SEQ}")
    print(f"(c) sequential read             {seq['seq_mb_s']:10.1f} MB/s  {seq['seq_docs_s']:12,.0f} docs/s")
    print(f"(a) random pread + orjson       {docs['baseline_docs_s']:12,.0f} docs/s")
    print(f"    documents path              {docs['ours_docs_s']:12,.0f} docs/s   "
          f"ratio to (a) {docs['ours_docs_s'] / docs['baseline_docs_s']:.2f} (target >= 0.80)   "
          f"to (c) {docs['ours_docs_s'] / seq['seq_docs_s']:.3f}")
    print(f"(b) tokenizer alone             {toks['baseline_tokens_s']:12,.0f} tokens/s")
    print(f"    tokens path                 {toks['ours_tokens_s']:12,.0f} tokens/s "
          f"ratio to (b) {toks['ours_tokens_s'] / toks['baseline_tokens_s']:.2f} (target >= 0.90)")
    print(f"    pre-tokenized path          {toks['pretokenized_tokens_s']:12,.0f} tokens/s "
          f"(target >= 50,000,000)   ratio to (b) {toks['pretokenized_tokens_s'] / toks['baseline_tokens_s']:.1f}")
    if wait is not None:
        print(f"tiny GPT: data wait {wait:.2f}% of step time (target < 5%)")


if __name__ == "__main__":
    main()

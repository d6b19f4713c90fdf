"""Original Mixtera (github eth-easl/mixtera, local mode) against this runtime, on the same JSON lines.

    .venv/bin/python bench/original_mixtera.py VENV [--mb 20] [--chunk-size 1024] [--token-steps 20]

VENV: a separate virtual environment in which the original's `mixtera` imports (the import name clashes
with ours). Corpus: bench/runtime.py's, bench/data/runtime/corpus-{mb}mb (built if missing), parsed
with orjson on both sides, single-threaded. Ours: bench/runtime.py's plan, documents path and tokens
path. The original: MixteraClient.from_directory, a JSONLDataset per source folder with a `source`
property, a 50/30/20 StaticMixture, stream_results (chunk_reading_degree_of_parallelism=1; for
tokens its "token" mode, same tokenizer and seq_len, no separate thread). Its register_dataset and
execute_query (query + chunking) are timed apart: rates count streaming only, best of 3, per second
of process CPU time and of wall time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCES = {"web": 0.5, "code": 0.3, "books": 0.2}  # as bench/runtime.py; a file's source is part % 3


def rate(run) -> tuple[int, float, float]:  # noqa: ANN001 - (items, items/CPU s, items/wall s)
    c0, w0 = time.process_time(), time.perf_counter()
    n = run()
    return n, n / (time.process_time() - c0), n / (time.perf_counter() - w0)


def best(runs: list[tuple[int, float, float]], unit: str = "docs") -> dict:
    return {unit: runs[0][0], "cpu": max(r[1] for r in runs), "wall": max(r[2] for r in runs)}


if "--child" in sys.argv:  # in VENV; its indexing pool pickles the parser, so it lives at module level
    import orjson

    from mixtera.core.datacollection.index.parser import MetadataParser
    from mixtera.core.datacollection.index.parser.metadata_parser import MetadataProperty

    class SourceParser(MetadataParser):
        @classmethod
        def get_properties(cls) -> list[MetadataProperty]:
            return [MetadataProperty("source", "ENUM", False, False, set(SOURCES))]

        def parse(self, line_number: int, payload, **kwargs) -> None:  # noqa: ANN001, ANN003
            part = int(payload["id"].split("-")[0])
            self.add_metadata(sample_id=line_number, source=list(SOURCES)[part % 3])

    def text_of(line: str) -> str:
        return orjson.loads(line)["text"]


def child(corpus: str, chunk_size: int, tokenizer: str, seq_len: int, max_seqs: int) -> None:
    """Runs in VENV: the original Mixtera, local mode."""
    from loguru import logger

    from mixtera.core.client import MixteraClient
    from mixtera.core.client.mixtera_client import QueryExecutionArgs, ResultStreamingArgs
    from mixtera.core.datacollection.datasets import JSONLDataset
    from mixtera.core.query import Query
    from mixtera.core.query.mixture import MixtureKey, StaticMixture

    logger.remove()
    logger.add(sys.stderr, level="WARNING")  # its per-chunk DEBUG lines would be counted otherwise

    out: dict = {}
    with tempfile.TemporaryDirectory() as db:
        client = MixteraClient.from_directory(db)
        client.register_metadata_parser("SOURCE", SourceParser)
        t = time.perf_counter()
        for sub in sorted(Path(corpus).iterdir()):  # its JSONLDataset does not descend into folders
            assert client.register_dataset(sub.name, sub, JSONLDataset, text_of, "SOURCE")
        out["index_wall_s"] = time.perf_counter() - t
        query_s: list[float] = []

        def stream(i: int, **kwargs):  # noqa: ANN003, ANN202 - a new job: query, chunking, then a stream
            job = f"bench-{os.getpid()}-{i}"
            mix = StaticMixture(chunk_size, {MixtureKey({"source": [s]}): w for s, w in SOURCES.items()})
            t = time.perf_counter()
            client.execute_query(Query.for_job(job).select(None), QueryExecutionArgs(mixture=mix))
            assert client.wait_for_execution(job)
            query_s.append(time.perf_counter() - t)
            return client.stream_results(ResultStreamingArgs(job_id=job, **kwargs))

        out["docs"] = best([rate(lambda s=stream(i): sum(1 for _ in s)) for i in range(3)])
        if (
            tokenizer
        ):  # its "token" mode: AutoTokenizer from a folder; yields seq_len + 1 tokens, advances seq_len
            hf = Path(db) / "tokenizer"
            hf.mkdir()
            shutil.copy(tokenizer, hf / "tokenizer.json")
            (hf / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
            kw = dict(chunk_reading_mixture_type="token", chunk_reading_tokenizer=str(hf))
            kw["chunk_reading_token_separate_thread"] = False  # its thread would tokenize on past our stop
            runs = [
                rate(
                    lambda s=stream(3 + i, chunk_reading_sequence_len=seq_len, **kw): (
                        seq_len * sum(1 for _ in itertools.islice(s, max_seqs))
                    )
                )
                for i in range(3)
            ]
            out["tokens"] = best(runs, "tokens")
        out.update(query_wall_s=query_s[0], cached_query_wall_s=min(query_s[1:]))
    print(json.dumps(out))


def ours(mb: int, steps: int, token_steps: int) -> tuple[dict, dict, Path]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_runtime", Path(__file__).with_name("runtime.py"))
    rt = importlib.util.module_from_spec(spec)  # bench/runtime.py (its name clashes with the package)
    spec.loader.exec_module(rt)  # also sets TOKENIZERS_PARALLELISM=false, inherited by the original
    tok = rt.tokenizer_path(None)
    index = rt.prepare(mb, tok)
    # max(.., 400) + 2: the plan bench/runtime.py compiles with its defaults, reused
    plan = rt.compile_plan(index, f"plan-{mb}mb", max(steps, token_steps * 20, 400) + 2, rt.TOPOLOGY)
    docs = best([rate(rt.fresh_loader(plan, steps, output="documents")) for _ in range(3)])
    runs = [rate(rt.fresh_loader(plan, token_steps, tokenizer=tok, pretokenized=False)) for _ in range(3)]
    return docs, best(runs, "tokens"), tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("venv", help="virtual environment with the original mixtera importable")
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--chunk-size", type=int, default=1024, help="the original's chunk size (samples)")
    ap.add_argument("--doc-steps", type=int, default=300, help="steps of our plan to replay per run")
    ap.add_argument("--token-steps", type=int, default=20, help="0: no tokens/s comparison")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    batch, seq_len = 16, 2048  # bench/runtime.py's TOPOLOGY
    if args.child:
        max_seqs = args.token_steps * batch  # as many tokens as our tokens path replays
        return child(args.child, args.chunk_size, args.tokenizer, seq_len, max_seqs)
    docs, toks, tok = ours(args.mb, args.doc_steps, args.token_steps)  # generates the corpus if missing
    corpus = Path(__file__).resolve().parent / "data" / "runtime" / f"corpus-{args.mb}mb"
    cmd = [str(Path(args.venv) / "bin" / "python"), __file__, args.venv, "--child", str(corpus)]
    cmd += ["--chunk-size", str(args.chunk_size), "--token-steps", str(args.token_steps)]
    run = subprocess.run(
        [*cmd, "--tokenizer", str(tok) if args.token_steps else ""], capture_output=True, text=True
    )
    if run.returncode:
        sys.exit(f"original mixtera failed:\n{run.stderr[-3000:]}")
    orig = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"corpus: {args.mb} MB of JSON lines ({corpus}), best of 3, single-threaded, orjson both sides")
    print(
        f"original, untimed in its rates: register_dataset {orig['index_wall_s']:.1f} s, execute_query "
        f"{orig['query_wall_s']:.2f} s (from its query cache {orig['cached_query_wall_s']:.2f} s)"
    )
    for unit, mine in (("docs", docs), ("tokens", toks)):
        if unit not in orig:
            continue
        for name, r in (("ours", mine), (f"original (chunk {args.chunk_size})", orig[unit])):
            print(f"{unit:6s} {name:22s} {r[unit]:10,d} {r['cpu']:12,.0f} /CPU-s {r['wall']:12,.0f} /s")
        print(
            f"{unit:6s} ratio ours / original: {mine['cpu'] / orig[unit]['cpu']:.1f}x per CPU second, "
            f"{mine['wall'] / orig[unit]['wall']:.1f}x per wall second"
        )


if __name__ == "__main__":
    main()

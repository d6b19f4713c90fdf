"""Original Mixtera (github eth-easl/mixtera, local mode) against this runtime's documents path.

    .venv/bin/python bench/original_mixtera.py VENV [--mb 20] [--chunk-size 1024] [--doc-steps 300]

VENV is a separate virtual environment in which the original's `mixtera` package imports (its import
name clashes with ours, so it never goes into .venv). Both sides read the same JSON lines, the corpus
that bench/runtime.py generates under bench/data/runtime/corpus-{mb}mb (built here if missing), and
parse them with orjson, single-threaded. Ours: `output="documents"` replaying bench/runtime.py's plan.
The original: MixteraClient.from_directory, a JSONLDataset per source with a `source` property, a 50/30/20
StaticMixture over it, `stream_results` with chunk_reading_degree_of_parallelism=1. Its indexing
(register_dataset) and query + chunking (execute_query) are timed apart from its streaming; the
docs/s of both sides count streaming only, best of 3 runs, per second of process CPU time and of
wall time.
"""

from __future__ import annotations

import argparse
import json
import os
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


def best(runs: list[tuple[int, float, float]]) -> dict:
    return {"docs": runs[0][0], "cpu_docs_s": max(r[1] for r in runs), "wall_docs_s": max(r[2] for r in runs)}


if "--child" in sys.argv:  # in VENV; its indexing pool pickles the parser, so it lives at module level
    import orjson
    from mixtera.core.datacollection.index.parser import MetadataParser
    from mixtera.core.datacollection.index.parser.metadata_parser import MetadataProperty

    class SourceParser(MetadataParser):
        @classmethod
        def get_properties(cls) -> list[MetadataProperty]:
            return [MetadataProperty("source", "ENUM", False, False, set(SOURCES))]

        def parse(self, line_number: int, payload, **kwargs) -> None:  # noqa: ANN001, ANN003
            self.add_metadata(sample_id=line_number, source=list(SOURCES)[int(payload["id"].split("-")[0]) % 3])

    def text_of(line: str) -> str:
        return orjson.loads(line)["text"]


def child(corpus: str, chunk_size: int) -> None:
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
        runs, query_s = [], []
        for i in range(3):
            job = f"bench-{os.getpid()}-{i}"
            mix = StaticMixture(chunk_size, {MixtureKey({"source": [s]}): w for s, w in SOURCES.items()})
            t = time.perf_counter()
            client.execute_query(Query.for_job(job).select(None), QueryExecutionArgs(mixture=mix))
            assert client.wait_for_execution(job)
            query_s.append(time.perf_counter() - t)
            stream = client.stream_results(ResultStreamingArgs(job_id=job))
            runs.append(rate(lambda s=stream: sum(1 for _ in s)))
        out.update(best(runs), query_wall_s=min(query_s))
    print(json.dumps(out))


def ours(mb: int, steps: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import runtime as rt  # bench/runtime.py

    plan = rt.compile_plan(rt.prepare(mb, rt.tokenizer_path(None)), f"plan-{mb}mb", steps + 2, rt.TOPOLOGY)
    return best([rate(rt.fresh_loader(plan, steps, output="documents")) for _ in range(3)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("venv", help="virtual environment with the original mixtera importable")
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--chunk-size", type=int, default=1024, help="the original's chunk size (samples)")
    ap.add_argument("--doc-steps", type=int, default=300, help="steps of our plan to replay per run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.chunk_size)
    mine = ours(args.mb, args.doc_steps)  # also generates and indexes the corpus if missing
    corpus = Path(__file__).resolve().parent / "data" / "runtime" / f"corpus-{args.mb}mb"
    cmd = [str(Path(args.venv) / "bin" / "python"), __file__, args.venv, "--child", str(corpus)]
    run = subprocess.run([*cmd, "--chunk-size", str(args.chunk_size)], capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"original mixtera failed:\n{run.stderr[-3000:]}")
    orig = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"corpus: {args.mb} MB of JSON lines ({corpus}), best of 3, single-threaded, orjson both sides")
    print(f"original: register_dataset {orig['index_wall_s']:.1f} s, query+chunking {orig['query_wall_s']:.2f} s")
    for name, r in (("ours (documents path)", mine), (f"original (chunk {args.chunk_size})", orig)):
        print(f"{name:28s} {r['docs']:8,d} docs  {r['cpu_docs_s']:12,.0f} docs/CPU-s  {r['wall_docs_s']:12,.0f} docs/s")
    print(
        f"ratio ours / original: {mine['cpu_docs_s'] / orig['cpu_docs_s']:.1f}x per CPU second, "
        f"{mine['wall_docs_s'] / orig['wall_docs_s']:.1f}x per wall second"
    )


if __name__ == "__main__":
    main()

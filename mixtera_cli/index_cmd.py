"""`mixtera index CORPUS... --out INDEX`: scan corpora into Parquet metadata (man/mixtera-index.md)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from mixtera.cli.console import count, err, out, print_json, summary_table, user_errors


class Executor(str, Enum):
    local = "local"
    ray = "ray"


SHOWN = 20  # changed, removed and skipped entries listed at most (all of them in --json)


@user_errors
def index(
    corpus: Annotated[
        list[str],  # not Path: a URL such as s3://bucket/prefix/ must keep its "//"
        typer.Argument(
            metavar="CORPUS",
            help="Corpus folders or files (.jsonl, .jsonl.gz, .json.gz, .jsonl.zst, .json.zst, .parquet, "
                 "WebDataset .tar), or object-store URLs (s3://bucket/prefix/, gs://, az://; s3:// needs "
                 "mixtera[s3]).",
            show_default=False,
        ),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Index directory to write or update.", show_default=False)
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Index config TOML (text field, properties, tokenizer, on_error)."
        ),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            help="Hugging Face tokenizer.json: exact token counts per sample (overrides [index] tokenizer).",
        ),
    ] = None,
    store_tokens: Annotated[
        bool,
        typer.Option(
            "--store-tokens", help="Also write pre-tokenized ids (tokens/<file_id>.bin); needs a tokenizer."
        ),
    ] = False,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            "-p",
            min=1,
            help="Processes indexing files [default: number of CPUs; 1 with a tokenizer, which uses "
            "every CPU itself]. With --executor ray: tasks in flight [default: 2 x the cluster's CPUs].",
        ),
    ] = None,
    executor: Annotated[
        Executor,
        typer.Option(
            "--executor",
            help="Where tasks run: local processes, or a Ray cluster (needs the ray extra of mixtera).",
        ),
    ] = Executor.local,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Ray cluster to run on (host:port of its head node) [default: RAY_ADDRESS, a `ray start` "
            "cluster on this machine, else a new local Ray].",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")
    ] = False,
) -> None:
    """Index corpora: one row per sample with its location, size, token count and properties."""
    from mixtera.planner.index import build_index

    with _ProgressBar() as bar:
        report = build_index(
            corpus,
            out_dir,
            config,
            tokenizer=tokenizer,
            processes=processes,
            store_tokens=store_tokens,
            progress=bar.update,
            executor=executor.value,
            ray_address=ray_address,
        )
    if json_out:
        print_json(report.to_dict())
    else:
        render_report(report.to_dict())


class _ProgressBar:
    """Files, records and MB/s on stderr; nothing is left behind on the terminal."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("indexing"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[files]} files  {task.fields[records]:,} records  {task.fields[rate]}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self._task: Any = None

        self._live = err.is_terminal  # a pipe or a log file gets no bar (and no stray newlines)

    def __enter__(self) -> _ProgressBar:
        if self._live:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._progress.stop()

    def update(self, state: dict[str, Any]) -> None:
        if not self._live:
            return
        files = f"{state['files_done']}/{state['files_total']}"
        if self._task is None:
            self._task = self._progress.add_task(
                "index", total=max(state["bytes_total"], 1), files=files, records=0, rate=""
            )
        elapsed = self._progress.tasks[0].elapsed or 0.0
        rate = f"{state['bytes'] / 1e6 / elapsed:.1f} MB/s" if elapsed > 0 else ""
        self._progress.update(
            self._task, completed=state["bytes"], files=files, records=state["records"], rate=rate
        )


def render_report(rep: dict[str, Any]) -> None:
    counts = rep["counts"]
    rows = [("corpus root", escape(rep["corpus_root"]))]
    rows += [(key, count(counts[key])) for key in ("files", "samples", "bytes", "tokens")]
    rows += [(f"files {key}", str(len(rep[key]))) for key in ("added", "changed", "removed", "unchanged")]
    rows += [
        ("records skipped", str(len(rep["skipped"]))),
        ("paths skipped", str(len(rep["skipped_paths"]))),
        ("properties", escape(", ".join(f"{n}: {t}" for n, t in rep["properties"].items()))),
        ("read", f"{rep['bytes_read'] / 1e6:,.1f} MB in {rep['seconds']:.2f} s"),
    ]
    out.print(summary_table(f"index {rep['out']}", rows))
    for key in ("changed", "removed"):
        for path in rep[key][:SHOWN]:
            out.print(f"{key}: {escape(path)}", highlight=False)
    _render_skipped(rep["skipped"])
    for item in rep["skipped_paths"][:SHOWN]:
        err.print(f"skipped {escape(item['path'])}: {escape(item['reason'])}", highlight=False)
    if len(rep["skipped_paths"]) > SHOWN:
        more = len(rep["skipped_paths"]) - SHOWN
        err.print(f"... and {more} more skipped paths (see --json)", highlight=False)
    if rep["ignored"]:
        err.print(
            f"note: {len(rep['ignored'])} files without a reader were ignored "
            f"(e.g. {escape(rep['ignored'][0])})",
            highlight=False,
        )


def _render_skipped(skipped: list[dict[str, Any]]) -> None:
    for item in skipped[:SHOWN]:
        out.print(f"skipped {escape(item['file'])}:{item['line']}: {escape(item['error'])}", highlight=False)
    if len(skipped) > SHOWN:
        out.print(f"... and {len(skipped) - SHOWN} more skipped records (see --json)", highlight=False)

"""`mixtera inspect PATH`: show an index (here) or a plan (`mixtera.cli.inspect_plan`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mixtera.cli.console import count, out, print_json, summary_table, user_errors
from mixtera.runtime.errors import MixteraUserError


@user_errors
def inspect(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="An index directory or a plan directory.",
                                               show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
    rank: Annotated[
        int | None, typer.Option("--rank", min=0, help="Plan only: show this rank's entries.")
    ] = None,
    steps: Annotated[str | None, typer.Option("--steps", help="Plan only: step range A:B.")] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Plan only: write a mixture-over-steps plot to this image file."),
    ] = None,
) -> None:
    """Show what an index or a plan holds."""
    kind = _kind(path)
    if kind == "mixtera-plan":
        from mixtera.cli.inspect_plan import inspect_plan

        inspect_plan(path, rank=rank, steps=steps, as_json=json_out, plot=plot)
        return
    if kind != "mixtera-index":
        raise MixteraUserError(
            f"{path}/manifest.json has kind {kind!r}, neither an index nor a plan",
            "pass a folder written by `mixtera index` or `mixtera compile`",
        )
    given = [
        flag for flag, value in (("--rank", rank), ("--steps", steps), ("--plot", plot)) if value is not None
    ]
    if given:
        raise MixteraUserError(
            f"{', '.join(given)} only apply to plans; {path} is an index",
            f"run `mixtera inspect {path}` without {', '.join(given)}",
        )
    from mixtera.planner.index import index_stats, load_index

    stats = index_stats(load_index(path))
    if json_out:
        print_json(stats)
    else:
        render_index(stats)


def _kind(path: Path) -> Any:
    from mixtera.planner.index import manifest_json

    hint = "pass a folder written by `mixtera index` or `mixtera compile`"
    return manifest_json(path, what="is neither an index nor a plan", hint=hint).get("kind")


def render_index(stats: dict[str, Any]) -> None:
    counts, tok = stats["counts"], stats["tokenizer"]
    formats = ", ".join(f"{k}: {v}" for k, v in stats["formats"].items())
    rows = [
        ("corpus root", escape(stats["corpus_root"])),
        ("files", f"{count(counts['files'])}  ({formats})"),
        ("samples", f"{count(counts['samples'])}  ({count(stats['skipped'])} bad records skipped)"),
        ("bytes", count(counts["bytes"])),
        ("tokens", count(counts["tokens"])),
        ("tokenizer", "-" if tok is None else escape(_tokenizer_text(tok))),
        ("stored tokens", "yes" if stats["store_tokens"] else "no"),
    ]
    out.print(summary_table(f"index {stats['path']}", rows))
    for name, prop in stats["properties"].items():
        out.print(_property_table(name, prop))


def _tokenizer_text(tok: dict[str, Any]) -> str:
    bos = f", bos id {tok['bos_id']}" if tok.get("bos") else ""
    return f"{tok['name']} (vocab {tok['vocab_size']:,}, eos id {tok['eos_id']}, eos={tok['eos']}{bos})"


def _property_table(name: str, prop: dict[str, Any]) -> Table:
    caption = f"{prop['distinct']:,} distinct, {prop['nulls']:,} null"
    if "min" in prop and prop["min"] is not None:
        caption += f"; min {prop['min']:g}, mean {prop['mean']:g}, max {prop['max']:g}"
    table = Table(
        title=f"property {escape(name)}: {prop['type']} from {escape(', '.join(prop['sources']))}",
        caption=caption,
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("value")
    table.add_column("samples", justify="right")
    for value, samples in prop["top"]:
        table.add_row(escape(str(value)), count(samples))
    return table

"""Entry point of the `mixtera` command. Each sub-command lives in its own module."""

from __future__ import annotations

import sys
import traceback
from importlib import metadata
from typing import Annotated

import typer

from mixtera.cli import compile_cmd, feedback_cmd, index_cmd, inspect_cmd

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        # pyproject.toml's version is the one source: the installed metadata (editable installs too).
        print(f"mixtera {metadata.version('mixtera')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    """mixtera: declare a data mixture, compile it into per-rank plans, replay them in training."""


app.command("index")(index_cmd.index)
app.command("compile")(compile_cmd.compile_mixture)
app.command("inspect")(inspect_cmd.inspect)
app.command("feedback")(feedback_cmd.feedback)


def main() -> None:
    """Run the CLI; internal failures exit with code 2 (user errors exit with 1 in each command)."""
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001 - the last line of defence: report, exit 2
        traceback.print_exc()
        sys.stderr.write("error: internal failure in mixtera (this is a bug, please report it)\n")
        sys.exit(2)


if __name__ == "__main__":
    main()

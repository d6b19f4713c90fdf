"""Entry point of the `mixtera` command. Each sub-command lives in its own module."""

from __future__ import annotations

import sys
import traceback

import typer

from mixtera.cli import compile_cmd, feedback_cmd, index_cmd, inspect_cmd

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="mixtera: declare a data mixture, compile it into per-rank plans, replay them in training.",
    pretty_exceptions_enable=False,
)
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

"""Shared rendering helpers: stdout carries data, stderr carries logs, progress and errors."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mixtera.runtime.errors import MixteraUserError

_NO_COLOR = bool(os.environ.get("NO_COLOR"))
# Piped output (make demo, CI logs) would otherwise be cut at rich's 80-column default.
_PIPE_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160

out = Console(no_color=_NO_COLOR, soft_wrap=True, width=_PIPE_WIDTH)
err = Console(stderr=True, no_color=_NO_COLOR, soft_wrap=True, width=_PIPE_WIDTH)

F = TypeVar("F", bound=Callable[..., Any])


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    """A headerless what/value table titled ``title`` (values already escaped for rich markup)."""
    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for what, value in rows:
        table.add_row(what, value)
    return table


def count(n: int | None) -> str:
    """``n`` with thousands separators; "-" for an unknown count (no tokenizer)."""
    return "-" if n is None else f"{n:,}"


def user_errors(func: F) -> F:
    """Turn a MixteraUserError into `error: ...` / `hint: ...` on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MixteraUserError as exc:
            err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            if exc.hint:
                err.print(f"\n[bold cyan]hint:[/] {escape(exc.hint)}", highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]

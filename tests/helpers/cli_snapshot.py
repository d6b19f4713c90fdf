"""Snapshot tests of the `mixtera` command, in the style of uv's: exit code, stdout and stderr compared
together as one text, with the paths of the test folder and timings filtered to placeholders.

    assert_snapshot(cli.run("inspect", "nope"), '''
    exit code: 1
    ...
    ''')

The expected text stays inline in the test. After a deliberate change of the output, rerun the tests
with MIXTERA_UPDATE_SNAPSHOTS=1: each differing expected string is rewritten in its test file (review
the diff before committing it).

The command runs in a fresh process (the real entry point, `mixtera.cli.app:main`) with NO_COLOR=1 and
COLUMNS=160, so rich tables are laid out alike on every machine; the work folder has a path of fixed
length (`/tmp/mixtera-snap-XXXXXXXX`), so a table holding an absolute path keeps its layout too (its
cells keep the padding of the real path after it became `[TMP]`).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

WIDTH = "160"  # the CLI's own width for pipes
UPDATE = "MIXTERA_UPDATE_SNAPSHOTS"
MAIN = "import sys; sys.argv[0] = 'mixtera'; from mixtera.cli.app import main; main()"
# Environment that would change the layout or the colours of the output.
DROPPED_ENV = ("COLUMNS", "LINES", "TERMINAL_WIDTH", "FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE")
FILTERS = [
    (re.compile(r"\b\d+\.\d+ s\b"), "[TIME]"),  # "0.05 s" (a duration; the placeholder keeps the width)
    (re.compile(r"\b[0-9a-f]{32}\b"), "[HASH]"),  # plan fingerprints: they cover the index's absolute root
]


class Cli:
    """Runs `mixtera ARGS` in ``root`` and renders what it did as one filtered text."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, *args: str | Path, filters: tuple[tuple[str, str], ...] = (), timeout: float = 300) -> str:
        """``filters``: more (regex, placeholder) pairs, for what only this command prints (timings)."""
        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        env.update(NO_COLOR="1", COLUMNS=WIDTH)
        done = subprocess.run([sys.executable, "-c", MAIN, *map(str, args)], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=timeout)
        extra = [(re.compile(pattern, re.M), placeholder) for pattern, placeholder in filters]
        return render(done.returncode, done.stdout, done.stderr, self.root, FILTERS + extra)


def render(code: int, stdout: str, stderr: str, root: Path,
           filters: list[tuple[re.Pattern[str], str]] = FILTERS) -> str:
    def clean(text: str) -> str:
        text = text.replace(str(root), "[TMP]")
        for pattern, placeholder in filters:
            text = pattern.sub(placeholder, text)
        return "".join(line.rstrip() + "\n" for line in text.splitlines())  # rich pads table titles

    return f"\nexit code: {code}\n----- stdout -----\n{clean(stdout)}----- stderr -----\n{clean(stderr)}"


@contextmanager
def work_folder() -> Iterator[Path]:
    """A fresh folder whose absolute path has the same length on every machine."""
    root = Path(tempfile.mkdtemp(prefix="mixtera-snap-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def assert_snapshot(actual: str, expected: str) -> None:
    if actual == expected:
        return
    caller = inspect.stack()[1]
    if os.environ.get(UPDATE) == "1":
        _rewrite(Path(caller.filename), caller.function, caller.lineno, expected, actual)
        return
    diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), "expected",
                                        "actual"))
    pytest.fail(f"the output differs from the snapshot ({UPDATE}=1 rewrites it):\n{diff}", pytrace=False)


def _rewrite(path: Path, function: str, lineno: int, old: str, new: str) -> None:
    """Replace the literal ``old`` of ``function``'s assert_snapshot call nearest to ``lineno`` by ``new``
    (earlier rewrites in the same run may have moved the line)."""
    source = path.read_text()
    functions = [node for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.FunctionDef) and node.name == function]
    calls = [node for f in functions for node in ast.walk(f) if isinstance(node, ast.Call)
             and getattr(node.func, "id", None) == "assert_snapshot" and len(node.args) == 2
             and isinstance(node.args[1], ast.Constant) and node.args[1].value == old]
    if not calls:
        pytest.fail(f"{path}:{lineno}: no assert_snapshot(..., <string literal>) in {function} to rewrite",
                    pytrace=False)
    literal = min(calls, key=lambda node: abs(node.lineno - lineno)).args[1]
    lines = source.splitlines(keepends=True)
    offset = [0]
    for line in lines:
        offset.append(offset[-1] + len(line.encode()))
    data = source.encode()
    start = offset[literal.lineno - 1] + literal.col_offset
    end = offset[literal.end_lineno - 1] + literal.end_col_offset  # type: ignore[operator]
    escaped = new.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    path.write_bytes(data[:start] + f'"""{escaped}"""'.encode() + data[end:])

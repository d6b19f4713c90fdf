"""The man pages agree with the code: generated regions and roff pages are current (man/generate.py),
every option `--help` lists is in its page's table, and the markdown-to-roff converter's output."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from mixtera.cli.app import app
from tests.helpers import ROOT

COMMANDS = ["mixtera", "mixtera index", "mixtera compile", "mixtera inspect", "mixtera feedback"]


@pytest.fixture(scope="module")
def generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("man_generate", ROOT / "man" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_current(generate: ModuleType) -> None:
    stale = [str(p.relative_to(ROOT)) for p in generate.stale_files()]
    assert stale == [], f"{stale} disagree with the code: run `python man/generate.py` and commit the result"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_option_is_in_the_page(command: str) -> None:
    """Read `--help` as a user sees it (rich panels) and find each option in its page's options table."""
    env = {"COLUMNS": "200", "NO_COLOR": "1"}
    result = CliRunner().invoke(app, [*command.split()[1:], "--help"], env=env)
    assert result.exit_code == 0, result.output
    shown = set(re.findall(r"^│\s+(?:\*\s+)?(--[a-z-]+|[A-Z]+)(?:\.\.\.)?\s{2}", result.stdout, re.M))
    page = "mixtera" if command == "mixtera" else command.replace(" ", "-")
    text = (ROOT / "man" / f"{page}.md").read_text()
    table = re.search(rf"<!-- generated: options {command} -->\n(.*?)<!-- end generated -->", text, re.S)
    assert table is not None, f"man/{page}.md has no generated options table for `{command}`"
    documented = set(re.findall(r"^\| `(?:-[a-z], )?(--[a-z-]+|[A-Z]+)\b", table[1], re.M))
    assert shown and documented == shown


def test_markdown_to_roff(generate: ModuleType) -> None:
    page = "\n".join([
        "# mixtera-demo(5) — a `demo` page",
        "",
        "## What it does",
        "",
        "Reads **bold** and *italic* text, `--out` code, a [link](https://example.org)",
        "and α.",
        "",
        "### Lists",
        "",
        "- one item",
        "  continued",
        "- .starts with a dot",
        "",
        "```",
        "mixtera compile mix.toml --out plan\\",
        "```",
        "",
        "| key | meaning |",
        "|---|---|",
        "| `a\\|b` | either |",
        "",
        "<!-- a comment -->",
    ])
    assert generate.to_roff(page, "9.9") == "\n".join([
        "'\\\" t",
        '.TH "MIXTERA-DEMO" "5" "" "mixtera 9.9" "mixtera manual"',
        ".nh",
        ".ad l",
        ".SH NAME",
        "mixtera\\-demo \\- a \\fBdemo\\fR page",
        '.SH "WHAT IT DOES"',
        ".PP",
        "Reads \\fBbold\\fR and \\fIitalic\\fR text, \\fB\\-\\-out\\fR code, a link (https://example.org) "
        "and \\[u03B1].",
        '.SS "Lists"',
        ".IP \\(bu 2",
        "one item continued",
        ".IP \\(bu 2",
        "\\&.starts with a dot",
        ".PP",
        ".RS 4",
        ".nf",
        "mixtera compile mix.toml \\-\\-out plan\\e",
        ".fi",
        ".RE",
        ".PP",
        ".TS",
        "allbox;",
        "lb lb",
        "l lx.",
        "T{\nkey\nT}\tT{\nmeaning\nT}",
        "T{\n\\fBa|b\\fR\nT}\tT{\neither\nT}",
        ".TE",
        ".sp",
        "",
    ])


def test_check_mode_names_a_stale_page(generate: ModuleType, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "mixtera-x.md"
    page.write_text("# mixtera-x(1) — x\n\n<!-- generated: options mixtera inspect -->\nold\n"
                    "<!-- end generated -->\n")
    monkeypatch.setattr(generate, "MAN", tmp_path)
    assert {p.name for p in generate.stale_files()} == {"mixtera-x.md", "mixtera-x.1"}
    assert generate.main([]) == 0 and generate.stale_files() == []
    assert "| `--rank <int range>` | Plan only: show this rank's entries. [x>=0] |" in page.read_text()

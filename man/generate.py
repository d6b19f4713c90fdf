"""Man pages from the code: option tables and synopses from the CLI, roff pages from man/*.md.

    python man/generate.py          # rewrite the generated regions of man/*.md and every man/*.N page
    python man/generate.py --check  # change nothing; exit 1 naming each stale file (tests run this check)

A generated region of a markdown page lies between two marker lines, for example

    <!-- generated: options mixtera compile -->
    ...
    <!-- end generated -->

`synopsis CMD` renders the synopsis of `CMD` (of every command for plain `mixtera`), `options CMD` the
options table: names, value type and help text exactly as `CMD --help` prints them (`[required]`,
`[default: ...]` and ranges included), from the typer app (`typer.main.get_command`). Every page
`man/NAME.md` titled `# NAME(N) — what` becomes the roff page `man/NAME.N` (`man -l man/NAME.N`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAN = Path(__file__).resolve().parent
MARKER = re.compile(
    r"^<!-- generated: (synopsis|options) (mixtera(?: [a-z]+)?) -->\n(.*?)^<!-- end generated -->$",
    re.M | re.S,
)
TITLE = re.compile(r"^# (?P<name>[a-z-]+)\((?P<section>\d)\) — (?P<what>.+)$")


# ---------------------------------------------------------------- the CLI, as --help shows it


@dataclass(frozen=True)
class Param:
    names: str  # as --help prints them: "-o, --out <path>"
    help: str  # with --help's "[required]", "[default: ...]", ranges
    usage: str  # for the synopsis: "--out <path>", "[--json]", "CORPUS..."


def _commands() -> dict[str, tuple[Any, Any]]:
    """``"mixtera"`` and ``"mixtera NAME"`` -> (click command, its context)."""
    import typer

    from mixtera.cli.app import app

    group = typer.main.get_command(app)
    root = group.make_context("mixtera", [], resilient_parsing=True)
    found = {"mixtera": (group, root)}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        ctx = command.make_context(name, [], parent=root, resilient_parsing=True)
        found[f"mixtera {name}"] = (command, ctx)
    return found


def _params(command: Any, ctx: Any) -> list[Param]:
    params = []
    for p in command.get_params(ctx):
        names, help_text = p.get_help_record(ctx)
        if p.param_type_name == "argument":
            usage = (p.metavar or p.name.upper()) + ("..." if p.nargs != 1 else "")
        else:
            long = next(o for o in p.opts if o.startswith("--"))
            value = "" if p.is_flag else " " + p.display_type(ctx).replace(" range", "")
            usage = f"{long}{value}" if p.required else f"[{long}{value}]"
        params.append(Param(names=names, help=help_text, usage=usage))
    return params


def _synopsis_line(name: str, command: Any, ctx: Any, width: int = 100) -> str:
    """``name ARGUMENTS OPTIONS`` (the root: ``mixtera OPTIONS COMMAND``), wrapped under the first word."""
    usages = [p.usage for p in _params(command, ctx) if not p.usage.startswith("[--help")]
    words = ([*usages, "COMMAND [ARGS]..."] if name == "mixtera"
             else sorted(usages, key=lambda a: a.startswith(("-", "["))))  # arguments first
    lines, indent = [name], " " * len(name)
    for word in words:
        if len(lines[-1]) + 1 + len(word) > width:
            lines.append(indent)
        lines[-1] += " " + word
    return "\n".join(lines)


def synopsis(name: str) -> str:
    commands = _commands()
    names = list(commands) if name == "mixtera" else [name]
    return "```\n" + "\n".join(_synopsis_line(n, *commands[n]) for n in names) + "\n```\n"


def options(name: str) -> str:
    command, ctx = _commands()[name]
    rows = ["| option | meaning |", "|---|---|"]
    for p in _params(command, ctx):
        rows.append(f"| `{p.names}` | {_cell(p.help)} |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    """--help's text as a table cell: `|` escaped, the double space before "[required]" kept single."""
    return re.sub(r"\s+", " ", text).replace("|", "\\|")


def render_regions(text: str) -> str:
    """``text`` with every generated region rewritten from the code."""
    def replace(m: re.Match[str]) -> str:
        body = synopsis(m[2]) if m[1] == "synopsis" else options(m[2])
        return f"<!-- generated: {m[1]} {m[2]} -->\n{body}<!-- end generated -->"

    return MARKER.sub(replace, text)


# ---------------------------------------------------------------- markdown -> roff


def _escape(text: str) -> str:
    """Backslash and minus for roff; other than ASCII as `\\[uXXXX]`, so that no preconv is needed."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)


INLINE = re.compile(
    r"`([^`]+)`|\*\*(.+?)\*\*|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])|\[([^\]]+)\]\(([^)]+)\)"
)


def inline(text: str) -> str:
    """Code spans and bold in bold, italics in italics, links as `text (target)`, the rest escaped."""
    out, pos = [], 0
    for m in INLINE.finditer(text):
        out.append(_escape(text[pos:m.start()]))
        code, bold, italic, link, target = m.groups()
        if code is not None:
            out.append(rf"\fB{_escape(code)}\fR")
        elif bold is not None:
            out.append(rf"\fB{inline(bold)}\fR")
        elif italic is not None:
            out.append(rf"\fI{inline(italic)}\fR")
        else:
            out.append(f"{inline(link)} ({_escape(target)})")
        pos = m.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


def _text_line(line: str) -> str:
    """A roff text line: a leading `.` or `'` would be read as a request."""
    return "\\&" + line if line.startswith((".", "'")) else line


def _table(rows: list[str]) -> list[str]:
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r.strip())[1:-1]] for r in rows]
    head, body = cells[0], cells[2:]  # cells[1] is the |---| line
    n = len(head)
    formats = " ".join(["lb"] * n), " ".join(["l"] * (n - 1) + ["lx"]) + "."  # bold head; last one fills
    lines = [".TS", "allbox;", *formats]
    for row in [head, *body]:
        lines.append("\t".join("T{\n" + _text_line(inline(c)) + "\nT}" for c in row))
    return [*lines, ".TE", ".sp"]  # man's .PP adds no space after a table


def _blocks(lines: list[str]) -> Iterator[tuple[str, list[str]]]:
    """(kind, lines) for headings, code blocks, tables, list items and paragraphs."""
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("<!--"):
            i += 1
        elif line.startswith("```"):
            end = lines.index("```", i + 1)
            yield "code", lines[i + 1:end]
            i = end + 1
        elif line.startswith("#"):
            yield "h" + str(len(line) - len(line.lstrip("#"))), [line.lstrip("#").strip()]
            i += 1
        else:
            kind = "table" if line.startswith("|") else "item" if line.startswith("- ") else "para"
            block = [line]
            i += 1
            while i < len(lines) and lines[i].strip() and not _starts_block(lines[i], kind):
                block.append(lines[i])
                i += 1
            yield kind, block


def _starts_block(line: str, kind: str) -> bool:
    if kind == "table":
        return not line.startswith("|")
    return line.startswith(("```", "#", "|", "- ", "<!--"))


def to_roff(markdown: str, version: str) -> str:
    lines = markdown.splitlines()
    title = TITLE.match(lines[0])
    if title is None:
        raise ValueError(f"the first line must read '# name(N) — what', not {lines[0]!r}")
    name, section = title["name"], title["section"]
    out = ["'\\\" t", f'.TH "{name.upper()}" "{section}" "" "mixtera {version}" "mixtera manual"',
           ".nh", ".ad l",  # no hyphenation, ragged right: option names and paths stay whole
           ".SH NAME", f"{_escape(name)} \\- {inline(title['what'])}"]
    for kind, block in _blocks(lines[1:]):
        if kind == "h2":
            out.append(f'.SH "{inline(block[0]).upper()}"')
        elif kind in ("h3", "h4"):
            out.append(f'.SS "{inline(block[0])}"')
        elif kind == "code":
            out += [".PP", ".RS 4", ".nf", *(_text_line(_escape(c)) for c in block), ".fi", ".RE"]
        elif kind == "table":
            out += [".PP", *_table(block)]
        elif kind == "item":
            out += [".IP \\(bu 2", _text_line(inline(" ".join(s.strip() for s in block)[2:]))]
        else:
            out += [".PP", _text_line(inline(" ".join(s.strip() for s in block)))]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the files


def expected_files() -> dict[Path, str]:
    """Every generated file with the text it must have: the markdown pages and their roff pages."""
    from importlib import metadata

    version = metadata.version("mixtera")
    files: dict[Path, str] = {}
    for page in sorted(MAN.glob("*.md")):
        text = render_regions(page.read_text())
        files[page] = text
        title = TITLE.match(text.splitlines()[0])
        if title is None:
            raise ValueError(f"{page}: the first line must read '# name(N) — what'")
        files[MAN / f"{title['name']}.{title['section']}"] = to_roff(text, version)
    return files


def stale_files() -> list[Path]:
    return [p for p, text in expected_files().items() if not p.is_file() or p.read_text() != text]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = stale_files()
        for path in stale:
            print(f"{path.relative_to(MAN.parent)} is stale: run `python man/generate.py`", file=sys.stderr)
        return 1 if stale else 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    for path, text in expected_files().items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(MAN.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

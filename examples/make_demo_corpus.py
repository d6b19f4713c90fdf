"""Build the demo corpus from text every fresh machine has: the Python standard library.

Deterministic for a given Python installation (same files -> same bytes). Layout::

    code/stdlib_functions.parquet   top-level functions and classes     lang, license, quality (top level)
    docs/docstrings.jsonl.zst       docstrings                          meta.language, meta.quality (nested)
    docs/module_docs.jsonl.gz       module docstrings                   meta.language (nested)
    notes/notes.jsonl               sentences this script writes        lang (top level), a U+2028 inside
    licenses/licenses.jsonl         paragraphs of Python's LICENSE.txt  nothing: only the folder name

Run: ``python examples/make_demo_corpus.py OUT_DIR``; ``build_demo_corpus(out_dir)`` from Python.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

CODE_BUDGET = 1_600_000  # bytes of stdlib code taken, about 2,000 definitions
MAX_DEF_BYTES = 6_000


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def quality(text: str) -> float:
    """A cheap, deterministic text-quality score in [0, 1]: share of letters and spaces."""
    if not text:
        return 0.0
    good = sum(1 for c in text if c.isalpha() or c == " ")
    return round(good / len(text), 4)


def _modules() -> list[tuple[str, str]]:
    """(module name, source) of the top-level stdlib modules, sorted by name."""
    out = []
    for path in sorted(stdlib_dir().glob("*.py")):
        try:
            out.append((path.stem, path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def _definitions(modules: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[dict], list[dict]]:
    """Code rows, docstring rows and module-docstring rows, in module then source order."""
    code, docs, module_docs = [], [], []
    used = 0
    for name, source in modules:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines(keepends=True)
        doc = ast.get_docstring(tree)
        if doc:
            module_docs.append(
                {
                    "id": f"module/{name}",
                    "text": doc,
                    "meta": {"language": "en", "module": name, "kind": "module"},
                }
            )
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                continue
            segment = "".join(lines[node.lineno - 1 : node.end_lineno])  # get_source_segment is O(file)
            if used < CODE_BUDGET and 0 < len(segment) <= MAX_DEF_BYTES:
                used += len(segment)
                code.append(
                    {
                        "id": f"{name}.{node.name}",
                        "text": segment,
                        "lang": "python",
                        "license": "PSF-2.0",
                        "module": name,
                        "quality": quality(segment),
                    }
                )
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:
                docs.append(
                    {
                        "id": f"doc/{name}.{node.name}",
                        "text": doc,
                        "meta": {"language": "en", "module": name, "quality": quality(doc)},
                    }
                )
    return code, docs, module_docs


NOTES = {
    "en": [
        "The {n}th note says that data mixtures decide what a model learns.",
        "Note {n}: a plan is compiled once and replayed by every rank.",
    ],
    "de": [
        "Die {n}. Notiz sagt, dass Datenmischungen bestimmen, was ein Modell lernt.",
        "Notiz {n}: ein Plan wird einmal kompiliert und von jedem Rang abgespielt.",
    ],
    "fr": [
        "La note {n} dit que les mélanges de données décident de ce qu'un modèle apprend.",
        "Note {n} : un plan est compilé une fois et rejoué par chaque rang.",
    ],
    "es": [
        "La nota {n} dice que las mezclas de datos deciden lo que aprende un modelo.",
        "Nota {n}: un plan se compila una vez y cada rango lo reproduce.",
    ],
}


def _notes() -> list[dict[str, Any]]:
    rows = []
    for n in range(400):
        lang = sorted(NOTES)[n % len(NOTES)]
        first, second = (t.format(n=n + 1) for t in NOTES[lang])
        sep = "\u2028" if n % 7 == 0 else " "  # a raw line separator inside a JSON string: not a record break
        rows.append({"id": f"note/{n}", "text": first + sep + second, "lang": lang})
    return rows


def _licenses() -> list[dict[str, Any]]:
    path = (
        Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "LICENSE.txt"
    )
    candidates = [path, stdlib_dir() / "LICENSE.txt"]
    text = next((p.read_text(encoding="utf-8", errors="replace") for p in candidates if p.is_file()), "")
    paragraphs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 80]
    if not paragraphs:  # an install without LICENSE.txt: the license of this project's own text
        paragraphs = [
            f"Paragraph {i}: the demo corpus is built from the Python standard library and "
            "from text mixtera writes itself, so it can be rebuilt on any machine."
            for i in range(20)
        ]
    return [{"text": p} for p in paragraphs]


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False, sort_keys=True).encode() + b"\n" for r in rows)


def _write_gzip(path: Path, data: bytes) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as g:  # no name, no time: stable bytes
        g.write(data)
    path.write_bytes(buf.getvalue())


def build_demo_corpus(out_dir: Path | str) -> Path:
    """Write the demo corpus under ``out_dir`` (created; existing demo files are overwritten)."""
    root = Path(out_dir)
    for sub in ("code", "docs", "notes", "licenses"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    code, docs, module_docs = _definitions(_modules())
    pq.write_table(
        pa.Table.from_pylist(code),
        root / "code" / "stdlib_functions.parquet",
        row_group_size=512,
        compression="zstd",
    )
    (root / "docs" / "docstrings.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor(level=10).compress(_jsonl(docs))
    )
    _write_gzip(root / "docs" / "module_docs.jsonl.gz", _jsonl(module_docs))
    (root / "notes" / "notes.jsonl").write_bytes(_jsonl(_notes()))
    (root / "licenses" / "licenses.jsonl").write_bytes(_jsonl(_licenses()))
    return root


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("build/demo/corpus")
    root = build_demo_corpus(out)
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"demo corpus in {root}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

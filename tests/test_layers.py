"""The layering rule: runtime/ is the lowest layer and imports neither planner/ nor mixtera.cli/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(_layer(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(_layer(node.module))
    return names


def _layer(module: str) -> str:
    """``mixtera.runtime.plan`` -> ``runtime``; a bare old top-level name -> ``stale:NAME``."""
    parts = module.split(".")
    if parts[0] == "mixtera" and len(parts) > 1:
        return parts[1]
    if parts[0] in ("runtime", "planner", "mixtera_cli"):
        return f"stale:{parts[0]}"
    return parts[0]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("runtime", {"planner", "mixtera.cli"}), ("planner", {"mixtera.cli"})],
    ids=["runtime-is-lowest", "planner-below-cli"],
)
def test_lower_layers_do_not_import_upper_ones(package: str, forbidden: set[str]) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & forbidden)
        for path in sorted((ROOT / package).rglob("*.py"))
        if _imported_packages(path) & forbidden
    }
    assert offenders == {}


STALE = {"stale:runtime", "stale:planner", "stale:mixtera_cli"}


def test_no_module_imports_the_old_top_level_names() -> None:
    """Installed, only ``mixtera.*`` exists: an import of bare ``runtime`` would find another distribution."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & STALE)
        for folder in ("runtime", "planner", "mixtera_cli", "tests", "examples", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if _imported_packages(path) & STALE
    }
    assert offenders == {}

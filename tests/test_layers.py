"""The layering rule: runtime/ is the lowest layer and imports neither planner/ nor mixtera_cli/."""

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
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("runtime", {"planner", "mixtera_cli"}), ("planner", {"mixtera_cli"})],
    ids=["runtime-is-lowest", "planner-below-cli"],
)
def test_lower_layers_do_not_import_upper_ones(package: str, forbidden: set[str]) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & forbidden)
        for path in sorted((ROOT / package).rglob("*.py"))
        if _imported_packages(path) & forbidden
    }
    assert offenders == {}

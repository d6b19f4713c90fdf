"""Builders shared by the tests and bench/: corpora, indexes, plans and the checks on them."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"

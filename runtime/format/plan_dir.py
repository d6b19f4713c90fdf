"""Every name inside a plan directory (and the index directory a plan points into): the one list.

A plan directory (man/mixtera-formats.md, "Plan directory")::

    manifest.json               written last; the plan's identity and layout (runtime/plan.py reads it)
    samples.npy                 the sample table
    samples.blocks.npy          xxh3_64 of every 4 KiB block of samples.npy (runtime/format/sample_blocks.py)
    quotas.npy, weights.npy     per-step quotas and target weights of the compiled plan
    rank-NNNNN.bin              one rank file per rank (runtime/format/rank_file.py)
    versions/vNNNNNN/           a feedback decision: decision.json (written last) and, for a rewrite,
                                quotas.npy, weights.npy and one rank-NNNNN.bin per rank
    feedback/log.bin            the job's per-step, per-domain losses (runtime/format/feedback_log.py)
    feedback/lock               held by the one process deciding (mixtera feedback)
    validation/                 the [validation] split: a plan directory of its own

An index directory: manifest.json, samples.parquet, files.parquet and, with ``--store-tokens``,
tokens/<file_id>.bin (runtime/format/token_file.py).
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
SAMPLES = "samples.npy"
SAMPLE_BLOCKS = "samples.blocks.npy"
QUOTAS = "quotas.npy"
WEIGHTS = "weights.npy"
RANK_FILE_GLOB = "rank-*.bin"
VERSIONS_DIR = "versions"
DECISION = "decision.json"
FEEDBACK_DIR = "feedback"
LOG_NAME = "log.bin"
LOCK_NAME = "lock"
VALIDATION = "validation"  # PLAN/validation/: the [validation] split, a plan directory of its own

INDEX_MANIFEST = "manifest.json"
INDEX_SAMPLES = "samples.parquet"
INDEX_FILES = "files.parquet"
TOKENS_DIR = "tokens"


def rank_file_name(rank: int) -> str:
    return f"rank-{rank:05d}.bin"


def version_name(version: int) -> str:
    return f"v{version:06d}"


def version_path(plan_dir: Path | str, version: int) -> Path:
    """The folder of decision ``version`` (it exists once the decision is published)."""
    return Path(plan_dir) / VERSIONS_DIR / version_name(version)


def data_folder(plan_dir: Path | str, version: int) -> Path:
    """The folder holding the rank files, quotas and weights of ``version`` (0: the compiled plan)."""
    return Path(plan_dir) if version == 0 else version_path(plan_dir, version)


def rank_file_path(plan_dir: Path | str, version: int, rank: int) -> Path:
    return data_folder(plan_dir, version) / rank_file_name(rank)


def log_path(plan_dir: Path | str) -> Path:
    return Path(plan_dir) / FEEDBACK_DIR / LOG_NAME


def lock_path(plan_dir: Path | str) -> Path:
    return Path(plan_dir) / FEEDBACK_DIR / LOCK_NAME

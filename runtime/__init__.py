"""The runtime: the lowest layer of mixtera, what runs inside a training job.

Nothing here imports ``mixtera.planner`` or ``mixtera.cli``.

How data flows through one rank (each stage names its module):

1. Formats (`mixtera.runtime.format`): `rank_file` (the per-rank plan file: header, seek table) and
   `rank_frames` (its segment frames: the one encoder, used by compile and rewrites, and the decoder),
   `token_file` (pre-tokenized ids), `frame_cache` (seekable cache of .gz/.zst corpus files),
   `feedback_log` (per-step, per-domain losses), `sample_blocks` (block checksums of the sample
   table, and the reader of its checked blocks); one encoder and one reader each, and `header`, the
   one header check (magic, version, flags, size) they all run; `plan_dir` names every file of a plan
   directory (and of the index directory a plan points into).
2. Plan (`plan`): opens a plan directory, checks its manifest, reads the sample-table rows it resolves
   (checked block by block) and reads one rank's segments; `versions` decides which version of a
   segment (after feedback rewrites) a rank replays.
3. Streams (`shuffle`, `stream_rows`): a plan entry names a component's stream position; the keyed
   permutation turns positions into sample rows without stored sample ids.
4. Sources (`readers`, `sources`, `tokenizer`): read each planned sample from its corpus file (with the
   fingerprint check), tokenize it, or take its ids from token files. `storage` is the one place that
   lists, stats and opens a corpus file, local or in an object store (s3://, any fsspec URL);
   `object_reads` reads objects by coalesced ranged GETs into a block cache, with read-ahead.
5. Packing (`packing`): the step's token pieces into `batch_size` sequences of exactly `seq_len` tokens.
6. Dataset (`replay`, `dataset`, `state`): `PlanDataset` replays the rank's steps, splits them over
   loader workers in plan order, and saves and restores its state for exact resume.
7. Feedback (`feedback`): `FeedbackReporter` appends per-domain losses to the plan's feedback log, which
   `mixtera feedback` turns into new plan versions.
"""

from typing import Any

_LAZY = {
    "PlanDataset": "mixtera.runtime.dataset",
    "PlanLoader": "mixtera.runtime.dataset",
    "FeedbackReporter": "mixtera.runtime.feedback",
}


def __getattr__(name: str) -> Any:
    """Import torch-dependent names on first use, so that `import mixtera.runtime` stays light."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mixtera.runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

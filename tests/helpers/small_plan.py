"""A small hand-built plan over every corpus format: 3 components, 2 ranks, 7 steps, tokens stored."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.runtime_plans import HandPlan, build_plan, make_docs

WORLD, BATCH, SEQ, STEPS = 2, 3, 48, 7


def small_plan(root: Path, tokenizer: Path, seed: int = 7) -> HandPlan:
    sources = {
        "web": [("a.jsonl", make_docs(1, 30)), ("b.jsonl.gz", make_docs(2, 25))],
        "code": [("c.parquet", make_docs(3, 20)), ("d.jsonl.zst", make_docs(4, 15))],
        "wiki": [("e.jsonl", make_docs(5, 12))],
    }
    return build_plan(
        root,
        tokenizer,
        sources=sources,
        weights={"web": 0.5, "code": 0.3, "wiki": 0.2},
        steps=STEPS,
        world_size=WORLD,
        batch_size=BATCH,
        seq_len=SEQ,
        seed=seed,
        store_tokens=True,
    )

"""`[index] bos = true`: a begin-of-document token before every document, counted like eos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from mixtera.runtime import PlanDataset
from mixtera.runtime.errors import ConfigError
from tests.helpers.runtime_plans import make_docs, write_corpus_file

MIXTURE = """[mixture]
index = "index"
seed = 4
unit = "tokens"
steps = 6
segment_steps = 4

[topology]
world_size = 2
batch_size = 2
seq_len = 64

[components.web]
where = "source == 'web'"
weight = 0.5
[components.code]
where = "source == 'code'"
weight = 0.5
"""
BOS = "<|endoftext|>"  # the tiny tokenizer's one special token; real ones have <s> or <|begin_of_text|>


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    from mixtera.planner.compile.pipeline import compile_file
    from mixtera.planner.index.build import build_index

    root = tmp_path_factory.mktemp("bos")
    write_corpus_file(root / "corpus" / "web" / "a.jsonl", make_docs(1, 30), "jsonl", nested=False)
    write_corpus_file(root / "corpus" / "code" / "b.jsonl.zst", make_docs(2, 30), "jsonl.zst", nested=False)
    (root / "index.toml").write_text(f'[index]\nbos = true\nbos_token = "{BOS}"\n')
    build_index([root / "corpus"], root / "index", root / "index.toml", tokenizer=tiny_tokenizer,
                store_tokens=True, processes=1)
    (root / "mix.toml").write_text(MIXTURE)
    compile_file(root / "mix.toml", root / "plan")
    return root / "plan"


def _batches(plan: Path, tok: Path, rank: int, pretokenized: bool) -> list[dict]:
    ds = PlanDataset(plan, rank=rank, world_size=2, tokenizer=tok, pretokenized=pretokenized,
                     with_provenance=True)
    return list(ds.loader(num_workers=0))


@pytest.mark.parametrize("rank", [0, 1])
def test_every_document_starts_with_bos_on_both_token_paths(plan: Path, tiny_tokenizer: Path,
                                                            rank: int) -> None:
    tok = Tokenizer.from_file(str(tiny_tokenizer))
    bos = tok.token_to_id(BOS)
    stored = _batches(plan, tiny_tokenizer, rank, pretokenized=True)
    tokenized = _batches(plan, tiny_tokenizer, rank, pretokenized=False)
    starts = 0
    for a, b in zip(stored, tokenized, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
        for seq, slices in enumerate(a["provenance"]):
            at = 0
            for _, start, end in slices:
                if start == 0:  # a document begins here: its first id is bos, then its text
                    assert int(a["input_ids"][seq, at]) == bos
                    starts += 1
                at += end - start
    assert starts


def test_the_plan_counts_bos_and_eos_in_every_span(plan: Path, tiny_tokenizer: Path) -> None:
    from mixtera.runtime.plan import Plan

    with Plan.open(plan) as p:
        assert p.framing == 2
        assert p.manifest["tokenizer"]["bos"] is True


def test_a_tokenizer_without_the_bos_token_is_refused(tmp_path: Path, tiny_tokenizer: Path) -> None:
    from mixtera.planner.index.build import build_index

    write_corpus_file(tmp_path / "corpus" / "web" / "a.jsonl", make_docs(1, 3), "jsonl", nested=False)
    (tmp_path / "index.toml").write_text("[index]\nbos = true\n")
    with pytest.raises(ConfigError, match="none of the begin-of-document tokens") as err:
        build_index([tmp_path / "corpus"], tmp_path / "index", tmp_path / "index.toml",
                    tokenizer=tiny_tokenizer, processes=1)
    assert "bos_token" in err.value.hint

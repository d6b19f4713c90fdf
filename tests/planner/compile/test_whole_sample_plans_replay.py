"""Compiled token plans of whole image-text samples, replayed by PlanDataset(output="tokens").

The compiler packs image-text samples whole (planner/compile/packing.py); the runtime lays out each
sample's placeholders before its caption. An independent oracle (tarfile, JSON lines and the
tokenizer, from the plan's own entries) gives every step's ids, labels and image offsets; resume
from a saved state continues exactly.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from mixtera.planner.compile.pipeline import compile_file
from mixtera.planner.index import build_index, parse_config
from mixtera.runtime import PlanDataset
from mixtera.runtime.packing import IGNORE_INDEX
from mixtera.runtime.plan import Plan
from tests.helpers import ROOT
from tests.helpers.image_plans import assert_resumes_exactly
from tests.helpers.shards import mixed_corpus, mixture_toml

pytest.importorskip("PIL", reason="needs the vision extra (pip install 'mixtera[vision]')")

PLACEHOLDER = "<image>"
IMAGE_TOKENS = 4
SIZE = (8, 8)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "examples"))
    from demo_tokenizer import train_tokenizer

    tmp = tmp_path_factory.mktemp("replay")
    corpus = mixed_corpus(tmp / "corpus", shards=2, per_shard=20, texts=40)
    texts = [f"a {c} square number {i}" for c in ("red", "green", "blue", "yellow") for i in range(40)]
    texts += [json.loads(line)["text"] for line in (corpus / "text" / "t.jsonl").read_text().splitlines()]
    tok = train_tokenizer(texts, tmp / "tokenizer.json", vocab_size=300, extra_special=(PLACEHOLDER,))
    cfg = parse_config(f'[index]\ntext = ["text", "txt"]\ntokenizer = "{tok}"\n')
    build_index(corpus, tmp / "idx", cfg)
    (tmp / "mix.toml").write_text(mixture_toml(
        tmp / "idx", {"img": 0.4, "text": 0.6}, unit="tokens", seq_len=48, batch_size=2, world_size=2,
        steps=8, extra=f"image_tokens = {IMAGE_TOKENS}\n"))
    compile_file(tmp / "mix.toml", tmp / "plan")
    return tmp / "plan", tok


def _documents(plan: Path, tok: Path) -> tuple[dict[tuple[int, int], list[int]], dict[tuple[int, int], int]]:
    """Per (file id, record): the document's ids as the runtime lays them out, and its images."""
    manifest = json.loads((plan / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(tok))
    eos, ph = tokenizer.token_to_id("<|endoftext|>"), tokenizer.token_to_id(PLACEHOLDER)
    root = Path(manifest["corpus_root"])
    ids, images = {}, {}
    for f in manifest["files"]:
        path = root / f["path"]
        if f["format"] == "tar":
            with tarfile.open(path) as tf:
                keys: list[str] = []
                caption: dict[str, str] = {}
                count: dict[str, int] = {}
                for m in tf:
                    key, _, ext = m.name.partition(".")
                    keys += [key] if key not in keys else []
                    if ext == "txt":
                        caption[key] = tf.extractfile(m).read().decode()
                    count[key] = count.get(key, 0) + (ext == "png")
            for n, key in enumerate(keys):
                text = tokenizer.encode(caption[key], add_special_tokens=False).ids
                ids[(f["file_id"], n)] = [ph] * (count[key] * IMAGE_TOKENS) + text + [eos]
                images[(f["file_id"], n)] = count[key]
        else:
            for n, line in enumerate(path.read_text().splitlines()):
                text = tokenizer.encode(json.loads(line)["text"], add_special_tokens=False).ids
                ids[(f["file_id"], n)], images[(f["file_id"], n)] = text + [eos], 0
    return ids, images


def _expected(plan: Path, tok: Path, rank: int) -> list[dict[str, np.ndarray]]:
    ids, images = _documents(plan, tok)
    out = []
    with Plan.open(plan) as p:
        ph = Tokenizer.from_file(str(tok)).token_to_id(PLACEHOLDER)
        for step in range(p.steps):
            e = p.step_entries(rank, step)
            flat, starts, at = [], [], 0
            for f, r, s, t in zip(e.file.tolist(), e.record.tolist(), e.token_start.tolist(),
                                  e.token_end.tolist(), strict=True):
                doc = ids[(f, r)]
                starts += [at + j * IMAGE_TOKENS for j in range(images[(f, r)])]
                flat += doc[s:t]
                at += t - s
            x = np.array(flat).reshape(p.batch_size, p.seq_len)
            labels = np.full_like(x, IGNORE_INDEX)
            labels[:, :-1] = np.where(x[:, 1:] == ph, IGNORE_INDEX, x[:, 1:])
            st = np.array(starts, np.int64)
            out.append({"input_ids": x, "labels": labels,
                        "image_positions": np.stack([st // p.seq_len, st % p.seq_len], 1).reshape(-1, 2)})
    return out


def _dataset(plan: Path, tok: Path, rank: int) -> PlanDataset:
    ph = Tokenizer.from_file(str(tok)).token_to_id(PLACEHOLDER)
    return PlanDataset(plan, rank=rank, world_size=2, tokenizer=tok, image_token_id=ph, image_size=SIZE)


@pytest.mark.parametrize("rank", [0, 1])
def test_every_step_equals_an_independent_read(compiled: tuple[Path, Path], rank: int) -> None:
    plan, tok = compiled
    want = _expected(plan, tok, rank)
    got = list(_dataset(plan, tok, rank).loader(num_workers=0))
    assert len(got) == len(want) == 8
    for batch, exp in zip(got, want, strict=True):
        assert np.array_equal(batch["input_ids"].numpy(), exp["input_ids"])
        assert np.array_equal(batch["labels"].numpy(), exp["labels"])
        assert batch["image_positions"].tolist() == exp["image_positions"].tolist()
        assert batch["images"].shape == (len(exp["image_positions"]), 3, *SIZE)
        assert len(exp["image_positions"]) > 0  # every rank gets image samples in every step


def test_resume_continues_exactly(compiled: tuple[Path, Path]) -> None:
    plan, tok = compiled
    assert_resumes_exactly(lambda: _dataset(plan, tok, 1), stop=3)

"""End to end through the real pipeline: index (with stored tokens) -> compile -> PlanDataset -> torchrun."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
import torch
import zstandard
from tokenizers import Tokenizer

from mixtera.runtime import PlanDataset
from mixtera.runtime.plan import Plan
from tests.helpers.plan_checks import edit_manifest
from tests.helpers.runtime_plans import make_docs, write_corpus_file
from tests.helpers.tiny_gpt import run_tiny_gpt

WEIGHTS = {"web": 0.5, "code": 0.3, "books": 0.2}
MIXTURE = """[mixture]
index = "index"
seed = 3
unit = "tokens"
steps = 6
segment_steps = 2

[topology]
world_size = 2
batch_size = 2
seq_len = 64
"""


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    from mixtera.planner.compile.pipeline import compile_file
    from mixtera.planner.index.build import build_index

    root = tmp_path_factory.mktemp("e2e")
    corpus = root / "corpus"
    for name, fmt, seed, n in [
        ("web", "jsonl", 1, 40),
        ("web", "jsonl.gz", 2, 30),
        ("code", "parquet", 3, 25),
        ("books", "jsonl.zst", 4, 25),
    ]:
        write_corpus_file(corpus / name / f"part{seed}.{fmt}", make_docs(seed, n), fmt, nested=False)
    build_index([corpus], root / "index", tokenizer=tiny_tokenizer, store_tokens=True, processes=1)
    comps = "".join(
        f"\n[components.{n}]\nwhere = \"source == '{n}'\"\nweight = {w}\n" for n, w in WEIGHTS.items()
    )
    (root / "mix.toml").write_text(MIXTURE + comps)
    compile_file(root / "mix.toml", root / "plan")
    return root


def _read_record(corpus: Path, sample_id: str) -> str:
    """The text of ``path#record``, read independently of mixtera.runtime.readers."""
    rel, _, rec = sample_id.rpartition("#")
    path = corpus / rel
    if rel.endswith(".parquet"):
        return pq.read_table(path).column("text")[int(rec)].as_py()
    raw = path.read_bytes()
    if rel.endswith(".gz"):
        raw = gzip.decompress(raw)
    elif rel.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    return orjson.loads(raw.split(b"\n")[int(rec)])["text"]


def test_tokens_equal_stored_tokens_and_provenance(pipeline: Path, tiny_tokenizer: Path) -> None:
    tok = Tokenizer.from_file(str(tiny_tokenizer))
    eos = tok.token_to_id("<|endoftext|>")
    for rank in range(2):
        ours = list(
            PlanDataset(
                pipeline / "plan",
                rank=rank,
                world_size=2,
                tokenizer=tiny_tokenizer,
                pretokenized=False,
                with_provenance=True,
            ).loader(num_workers=2)
        )
        stored = list(PlanDataset(pipeline / "plan", rank=rank, world_size=2).loader(num_workers=0))
        assert len(ours) == len(stored) == 6
        for a, b in zip(ours, stored, strict=True):
            assert torch.equal(a["input_ids"], b["input_ids"])
            assert torch.equal(a["domain_ids"], b["domain_ids"])
            for seq, slices in zip(a["input_ids"], a["provenance"], strict=True):
                ids = []
                for sid, s, e in slices:
                    text = _read_record(pipeline / "corpus", sid)
                    ids += (tok.encode(text, add_special_tokens=False).ids + [eos])[s:e]
                assert ids == seq.tolist()


def test_rebuilt_index_is_refused_for_stored_tokens(pipeline: Path, tmp_path: Path) -> None:
    import shutil

    from mixtera.runtime.errors import PlanError

    plan = tmp_path / "plan"
    shutil.copytree(pipeline / "plan", plan)
    index = tmp_path / "index"
    shutil.copytree(pipeline / "index", index)
    edit_manifest(plan, lambda m: m["token_files"].__setitem__("dir", str(index / "tokens")))
    assert len(list(PlanDataset(plan, rank=0, world_size=2).loader())) == 6  # same index: fine
    index_manifest = json.loads((index / "manifest.json").read_text())
    index_manifest["counts"]["samples"] += 1  # what a re-index of a changed corpus does
    (index / "manifest.json").write_text(json.dumps(index_manifest))
    with pytest.raises(PlanError, match="the index changed since the plan was compiled"):
        list(PlanDataset(plan, rank=0, world_size=2).loader())


def test_domain_shares_per_step_equal_the_plan(pipeline: Path) -> None:
    batches = [list(PlanDataset(pipeline / "plan", rank=r, world_size=2).loader()) for r in range(2)]
    with Plan.open(pipeline / "plan") as plan:
        names = [c.name for c in plan.components]
        for step in range(plan.steps):
            ids = torch.cat([batches[r][step]["domain_ids"].reshape(-1) for r in range(2)])
            counts = torch.bincount(ids, minlength=len(names)).tolist()
            planned = [0] * len(names)
            for r in range(2):
                ent = plan.step_entries(r, step)
                for c, s, e in zip(
                    ent.component.tolist(), ent.token_start.tolist(), ent.token_end.tolist(), strict=True
                ):
                    planned[c] += e - s
            assert counts == planned
            total = sum(counts)
            assert total == 2 * 2 * 64
            for name, count in zip(names, counts, strict=True):
                assert abs(count - WEIGHTS[name] * total) < 1  # exact up to rounding


def test_documents_are_the_corpus_records(pipeline: Path) -> None:
    steps = list(
        PlanDataset(pipeline / "plan", rank=1, world_size=2, output="documents").loader(num_workers=2)
    )
    assert [d[0]["step"] for d in steps] == list(range(6))
    for docs in steps:
        for d in docs:
            assert d["text"] == _read_record(pipeline / "corpus", d["sample_id"])


def _torchrun(
    pipeline: Path, tok: Path, ckpt: Path, steps: int, *extra: str, nproc: int = 2, plan: str = "plan"
) -> list[dict]:
    return run_tiny_gpt(pipeline / plan, tok, ckpt, steps, *extra, nproc=nproc, timeout=120)


@pytest.fixture(scope="module")
def uninterrupted(
    pipeline: Path, tiny_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[dict]:
    """The example's log of 5 steps on 2 processes without a break."""
    return _torchrun(pipeline, tiny_tokenizer, tmp_path_factory.mktemp("full") / "ckpt", 5, "--workers", "0")


@pytest.mark.slow
def test_torchrun_example_resumes_exactly(
    pipeline: Path, tiny_tokenizer: Path, tmp_path: Path, uninterrupted: list[dict]
) -> None:
    full = uninterrupted
    first = _torchrun(pipeline, tiny_tokenizer, tmp_path / "b", 3, "--workers", "1")
    rest = _torchrun(pipeline, tiny_tokenizer, tmp_path / "b", 5, "--workers", "2", "--resume")
    assert [r["step"] for r in full] == [0, 1, 2, 3, 4]
    assert [r["step"] for r in first + rest] == [0, 1, 2, 3, 4]
    assert first + rest == full  # same losses, per domain too: same batches, same model state
    assert set(full[0]["domain_loss"]) == set(WEIGHTS)


@pytest.mark.slow
def test_torchrun_example_resumes_on_another_world_size(
    pipeline: Path, tiny_tokenizer: Path, tmp_path: Path, uninterrupted: list[dict]
) -> None:
    """2 processes for 3 steps, re-partition at step 3 for 1 process, resume: the same training."""
    from mixtera.planner.compile.elastic import repartition
    from mixtera.planner.mixture.spec import load_spec

    full = uninterrupted
    first = _torchrun(pipeline, tiny_tokenizer, tmp_path / "b", 3, "--workers", "0")
    spec = load_spec(pipeline / "mix.toml")
    repartition(pipeline / "plan", spec, tmp_path / "new", world_size=1, from_step=3)
    rest = _torchrun(pipeline, tiny_tokenizer, tmp_path / "b", 5, "--workers", "1", "--resume", nproc=1,
                     plan=str(tmp_path / "new"))
    assert [r["step"] for r in first + rest] == [0, 1, 2, 3, 4]
    # the same global batches: DDP's mean over 2 ranks of equal-sized batches is the 1-rank mean,
    # up to the order of float additions
    for got, want in zip(first + rest, full, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert got["domain_loss"] == pytest.approx(want["domain_loss"], rel=1e-4)


def test_samples_plan_replays_whole_documents(pipeline: Path, tiny_tokenizer: Path, tmp_path: Path) -> None:
    from mixtera.planner.compile.pipeline import compile_file
    from mixtera.runtime.errors import PlanError

    spec = (pipeline / "mix.toml").read_text().replace('unit = "tokens"', 'unit = "samples"')
    (pipeline / "mix_samples.toml").write_text(spec.replace("seq_len = 64\n", ""))
    compile_file(pipeline / "mix_samples.toml", tmp_path / "plan")
    with pytest.raises(PlanError, match="needs a plan with unit"):
        PlanDataset(tmp_path / "plan", rank=0, world_size=2, tokenizer=tiny_tokenizer)
    for rank in range(2):
        steps = list(PlanDataset(tmp_path / "plan", rank=rank, world_size=2, output="documents").loader())
        assert [len(docs) for docs in steps] == [2] * 6  # batch_size whole documents per rank and step
        for docs in steps:
            for d in docs:
                assert d["token_start"] == 0
                assert d["text"] == _read_record(pipeline / "corpus", d["sample_id"])

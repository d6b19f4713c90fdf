"""PlanDataset(output="documents") over WebDataset shards mixed with text: media, decoded images,
per-step shares, workers and resume."""

from __future__ import annotations

import copy
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mixtera.planner.compile.pipeline import compile_file
from mixtera.planner.index import build_index, parse_config
from mixtera.runtime import PlanDataset
from mixtera.runtime.errors import MixteraUserError, PlanError
from mixtera.runtime.images import decode_image
from tests.helpers.shards import mixed_corpus, mixture_toml, png_bytes

CONFIG = '[index]\ntext = ["text", "txt"]\n'


def _plan(tmp: Path, weights: dict[str, float], corpus: Path | None = None, **kw) -> Path:  # noqa: ANN003
    corpus = corpus or mixed_corpus(tmp / "corpus")
    build_index(corpus, tmp / "idx", parse_config(CONFIG))
    (tmp / "mix.toml").write_text(mixture_toml(tmp / "idx", weights, **kw))
    compile_file(tmp / "mix.toml", tmp / "plan")
    return tmp / "plan"


def _tar_media(corpus: Path) -> dict[str, dict[str, bytes]]:
    """Sample id -> {ext: bytes} of the non-text members, read independently with tarfile."""
    out: dict[str, dict[str, bytes]] = {}
    for shard in sorted(corpus.rglob("*.tar")):
        keys: list[str] = []
        with tarfile.open(shard) as tf:
            for m in tf:
                key, _, ext = m.name.partition(".")
                if key not in keys:
                    keys.append(key)
                if ext not in ("txt", "json"):
                    sid = f"{shard.relative_to(corpus).as_posix()}#{keys.index(key)}"
                    out.setdefault(sid, {})[ext] = tf.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _plan(tmp_path_factory.mktemp("wds"), {"img": 0.4, "text": 0.6})


def _docs(plan: Path, rank: int = 0, workers: int = 0, **kw) -> list:  # noqa: ANN003
    ds = PlanDataset(plan, rank=rank, world_size=2, output="documents", **kw)
    return list(ds.loader(num_workers=workers))


def test_shard_items_carry_media_and_text_items_do_not(plan: Path) -> None:
    media = _tar_media(plan.parent / "corpus")
    steps = _docs(plan)
    assert len(steps) == 6
    for step, docs in enumerate(steps):
        assert len(docs) == 5
        for d in docs:
            assert d["step"] == step and d["domain"] in ("img", "text")
            if d["domain"] == "img":
                assert d["media"] == media[d["sample_id"]]
                assert d["text"].startswith("a ") and "square number" in d["text"]
                assert "images" not in d
            else:
                assert "media" not in d and d["text"].startswith("document ")


def test_per_step_shares_are_exact_in_samples_mode(plan: Path) -> None:
    both = [_docs(plan, rank) for rank in (0, 1)]
    for step in range(6):
        domains = [d["domain"] for rank in both for d in rank[step]]
        assert domains.count("img") == 4 and domains.count("text") == 6  # 40% of 10 per step


def test_decoded_images_equal_pillow_and_resize_crops(plan: Path) -> None:
    plain = _docs(plan, decode_images=True, keep_image_bytes=True)
    sized = _docs(plan, decode_images=True, image_size=(8, 10), workers=2)
    for a, b in zip(plain, sized, strict=True):
        for da, db in zip(a, b, strict=True):
            assert da["sample_id"] == db["sample_id"]
            if da["domain"] != "img":
                assert "images" not in da
                continue
            (png,) = da["media"].values()
            assert db["media"] == {}  # the decoded image stands for its bytes
            import io

            from PIL import Image

            want = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).transpose(2, 0, 1)
            (img,) = da["images"]
            assert img.dtype == torch.uint8 and torch.equal(img, torch.from_numpy(want.copy()))
            (small,) = db["images"]
            assert small.shape == (3, 8, 10)


def test_cover_crop_keeps_the_centre() -> None:
    img = decode_image(png_bytes(40, 20, "blue"), (10, 10))  # 40x20 -> 20x10, centre 10x10
    assert img.shape == (3, 10, 10)
    assert img[:, 5, 5].tolist() == [0, 0, 255]  # the drawn square covers the centre


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_images_equals_uninterrupted(plan: Path, workers: int) -> None:
    def make() -> PlanDataset:
        return PlanDataset(plan, rank=1, world_size=2, output="documents", decode_images=True)

    full = list(make().loader(num_workers=workers))
    first = make()
    seen = []
    for batch in first.loader(num_workers=workers):
        seen.append(batch)
        if len(seen) == 3:
            break
    state = copy.deepcopy(first.state_dict())
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed.loader(num_workers=2 - workers))
    got = seen + rest
    assert [[d["sample_id"] for d in s] for s in got] == [[d["sample_id"] for d in s] for s in full]
    for a, b in zip(got, full, strict=True):
        for da, db in zip(a, b, strict=True):
            assert da.get("media") == db.get("media")
            assert all(torch.equal(x, y) for x, y in zip(da.get("images", []), db.get("images", []),
                                                          strict=True))


def test_a_changed_shard_is_refused(tmp_path: Path) -> None:
    plan = _plan(tmp_path, {"img": 0.5, "text": 0.5})
    shard = tmp_path / "corpus" / "img" / "shard-0.tar"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # same size, new content (and mtime)
    shard.write_bytes(bytes(data))
    with pytest.raises(PlanError, match="shard-0.tar: corpus file changed since indexing"):
        _docs(plan)


def test_image_size_is_checked(plan: Path) -> None:
    with pytest.raises(PlanError, match="image_size needs decode_images=True"):
        PlanDataset(plan, rank=0, world_size=2, output="documents", image_size=(4, 4))
    with pytest.raises(PlanError, match="keep_image_bytes needs decode_images=True"):
        PlanDataset(plan, rank=0, world_size=2, output="documents", keep_image_bytes=True)
    with pytest.raises(MixteraUserError, match=r"image_size=\(0, 4\) must be \(height, width\)"):
        PlanDataset(plan, rank=0, world_size=2, output="documents", decode_images=True, image_size=(0, 4))


@pytest.mark.shared
def test_real_shards_mixed_with_text(shared_corpora: Path, tmp_path: Path) -> None:
    """cc12m and tuxpaint shards beside tldr text: captions and image bytes equal a tarfile read, and
    every step holds exactly its share of each component."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "img").symlink_to(shared_corpora / "image_text")
    (corpus / "text").symlink_to(shared_corpora / "text" / "redpajama")
    cfg = '[index]\ntext = ["text", "txt"]\n[properties.source]\npath = "{source}/**"\n' \
          '[properties.shard]\npath = "img/{shard}"\n'
    build_index(corpus, tmp_path / "idx", parse_config(cfg))
    (tmp_path / "mix.toml").write_text(mixture_toml(
        tmp_path / "idx", {"img": 0.5, "text": 0.5}, batch_size=4, steps=8, extra=""))
    compile_file(tmp_path / "mix.toml", tmp_path / "plan")
    want = _tar_media(shared_corpora / "image_text")
    captions = {}
    for shard in sorted((shared_corpora / "image_text").glob("*.tar")):
        with tarfile.open(shard) as tf:
            keys: list[str] = []
            for m in tf:
                key, _, ext = m.name.partition(".")
                if key not in keys:
                    keys.append(key)
                if ext == "txt":
                    captions[f"img/{shard.name}#{keys.index(key)}"] = tf.extractfile(m).read().decode()
    for rank in (0, 1):
        for docs in _docs(tmp_path / "plan", rank):
            assert [d["domain"] for d in docs].count("img") == 2
            for d in docs:
                if d["domain"] == "img":
                    assert d["text"] == captions[d["sample_id"]]
                    assert d["media"] == want[d["sample_id"].removeprefix("img/")]


def test_text_work_needs_no_pillow_and_images_name_the_extra(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    monkeypatch.delitem(sys.modules, "PIL.Image", raising=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jsonl").write_text('{"text": "no images here"}\n')
    assert build_index(tmp_path / "c", tmp_path / "idx").samples == 1
    with pytest.raises(MixteraUserError, match=r"(?s)needs Pillow.*mixtera\[vision\]"):
        decode_image(b"\x89PNG")


def test_elastic_repartition_keeps_the_global_order_of_shard_samples(plan: Path, tmp_path: Path) -> None:
    from mixtera.planner.compile.elastic import repartition
    from mixtera.planner.mixture.spec import load_spec

    repartition(plan, load_spec(plan.parent / "mix.toml"), tmp_path / "one", world_size=1, from_step=2)
    old = [_docs(plan, rank) for rank in (0, 1)]
    new = list(PlanDataset(tmp_path / "one", rank=0, world_size=1, output="documents",
                           decode_images=True, keep_image_bytes=True).loader(num_workers=2))
    for step in range(2, 6):
        want = [d for rank in old for d in rank[step]]
        got = new[step]
        assert [d["sample_id"] for d in got] == [d["sample_id"] for d in want]
        assert [d.get("media") for d in got] == [d.get("media") for d in want]
        assert all(len(d["images"]) == 1 for d in got if d["domain"] == "img")

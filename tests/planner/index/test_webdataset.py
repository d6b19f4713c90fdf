"""`mixtera index` on WebDataset `.tar` shards: samples by key, member locations, image columns, bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mixtera.planner.index import build_index, load_index, parse_config
from mixtera.runtime.errors import ConfigError, CorpusError
from mixtera.runtime.format.plan_dir import INDEX_SAMPLES
from mixtera.runtime.readers import FileEntry, TarReader
from tests.helpers.index_helpers import jsonl, write
from tests.helpers.shards import image_samples, png_bytes, write_members, write_shard


def _cfg(extra: str = "", text: str = '"txt"', on_error: str = "fail"):  # noqa: ANN202
    return parse_config(f'[index]\ntext = {text}\non_error = "{on_error}"\n{extra}')


def _rows(out: Path) -> list[dict]:
    return load_index(out).samples.to_pylist()


def _reader(out: Path, file_id: int, text: str | list[str] = "txt") -> TarReader:
    t = load_index(out)
    f = t.manifest["files"][file_id]
    entry = FileEntry.from_manifest(f, t.corpus_root)
    return TarReader(entry, text, out)


def _tar_members(path: Path) -> dict[str, dict[str, bytes]]:
    """An independent read: every member's bytes by key and extension, with the tarfile module."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf:
            if m.isfile():
                folder, _, base = m.name.rpartition("/")
                stem, _, ext = base.partition(".")
                out.setdefault(f"{folder}/{stem}" if folder else stem, {})[ext] = tf.extractfile(m).read()
    return out


def test_a_shard_is_indexed_by_key_with_image_columns(tmp_path: Path) -> None:
    samples = image_samples(7)
    shard = write_shard(tmp_path / "c" / "img" / "shard-0.tar", samples)
    report = build_index(tmp_path / "c", tmp_path / "idx", _cfg())
    assert report.samples == 7
    rows = _rows(tmp_path / "idx")
    assert [r["sample_id"] for r in rows] == [f"img/shard-0.tar#{i}" for i in range(7)]
    assert [r["key"] for r in rows] == [s["__key__"] for s in samples]
    assert [r["images"] for r in rows] == [1] * 7
    assert [(r["image_width"], r["image_height"]) for r in rows] == [
        (16 + 8 * (i % 5), 12 + 4 * (i % 3)) for i in range(7)]
    assert [r["text_bytes"] for r in rows] == [len(s["txt"].encode()) for s in samples]
    assert {r["source"] for r in rows} == {"img"}
    assert load_index(tmp_path / "idx").manifest["counts"]["images"] == 7
    # the stored span reads each sample back with one positioned read
    reader, want = _reader(tmp_path / "idx", 0), _tar_members(shard)
    for r, s in zip(rows, samples, strict=True):
        got = reader.sample(r["offset"], r["length"])
        assert got.key == s["__key__"] and got.text == s["txt"]
        assert got.record["json"]["captions"]["de"] == s["json"]["captions"]["de"]
        assert got.media == {"png": want[s["__key__"]]["png"]}
    reader.close()


def test_dotted_paths_text_lists_and_jsonl_beside_shards(tmp_path: Path) -> None:
    write_shard(tmp_path / "c" / "img" / "a.tar", image_samples(3))
    write(tmp_path / "c" / "web" / "w.jsonl", jsonl([{"text": "plain text", "lang": "en"}]))
    extra = '[properties.de]\nfrom = ["json.captions.de"]\n[properties.colour]\nfrom = "json.colour"\n'
    build_index(tmp_path / "c", tmp_path / "idx", _cfg(extra, text='["text", "json.caption"]'))
    rows = _rows(tmp_path / "idx")
    assert [r["de"] for r in rows] == ["ein red Quadrat 0", "ein green Quadrat 1", "ein blue Quadrat 2", None]
    assert [r["colour"] for r in rows][:3] == ["red", "green", "blue"]
    assert [r["images"] for r in rows] == [1, 1, 1, 0]
    assert rows[3]["key"] is None and rows[3]["image_width"] is None
    assert load_index(tmp_path / "idx").manifest["text_field"] == ["text", "json.caption"]
    reader = _reader(tmp_path / "idx", 0, ["text", "json.caption"])
    assert reader.sample(rows[1]["offset"], rows[1]["length"]).text == "a green square number 1"
    reader.close()


def test_index_of_shards_is_deterministic(tmp_path: Path) -> None:
    write_shard(tmp_path / "c" / "a.tar", image_samples(5))
    write_shard(tmp_path / "c" / "b.tar", image_samples(4, start=5, fmt="jpg"))
    build_index(tmp_path / "c", tmp_path / "i1", _cfg())
    build_index(tmp_path / "c", tmp_path / "i2", _cfg(), processes=2)
    assert (tmp_path / "i1" / INDEX_SAMPLES).read_bytes() == (tmp_path / "i2" / INDEX_SAMPLES).read_bytes()
    rows = _rows(tmp_path / "i1")
    assert [r["image_width"] for r in rows[5:]] == [16 + 8 * (i % 5) for i in range(5, 9)]


def test_image_width_is_usable_in_where(tmp_path: Path) -> None:
    from mixtera.planner.compile.selection import schema_of

    write_shard(tmp_path / "c" / "a.tar", image_samples(2))
    schema = schema_of(load_index(build_index(tmp_path / "c", tmp_path / "idx", _cfg()).out))
    assert {schema[c] for c in ("image_width", "image_height", "images", "key")} <= {"int", "string"}


def test_non_adjacent_members_belong_to_the_first_appearance(tmp_path: Path) -> None:
    png = png_bytes(10, 6)
    shard = write_members(tmp_path / "c" / "a.tar", [
        ("x.png", png), ("y.png", png_bytes(20, 8)), ("y.txt", "caption y"), ("x.txt", "caption x")])
    build_index(tmp_path / "c", tmp_path / "idx", _cfg())
    rows = _rows(tmp_path / "idx")
    assert [(r["key"], r["image_width"]) for r in rows] == [("x", 10), ("y", 20)]
    reader = _reader(tmp_path / "idx", 0)
    x = reader.sample(rows[0]["offset"], rows[0]["length"])
    assert (x.text, x.media) == ("caption x", {"png": png})  # y's members inside the span are left out
    assert reader.sample(rows[1]["offset"], rows[1]["length"]).text == "caption y"
    assert _tar_members(shard)["x"]["png"] == png
    reader.close()


def _truncate(path: Path, size: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:size])


def test_a_truncated_shard_is_named_with_its_last_good_sample(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "c" / "a.tar", image_samples(4))
    with tarfile.open(shard) as tf:
        third_txt = next(m for m in tf if m.name == "s00002.txt")
    _truncate(shard, third_txt.offset_data + 3)  # inside the third sample's caption
    with pytest.raises(CorpusError, match=r"a.tar: truncated or damaged tar archive: it ends inside a member"
                       r".*last complete sample is #1 \(key 's00001'\)"):
        build_index(tmp_path / "c", tmp_path / "idx", _cfg(on_error="skip"))


def test_a_shard_cut_at_a_member_boundary_is_truncated(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "c" / "a.tar", image_samples(3))
    with tarfile.open(shard) as tf:
        last = tf.getmembers()[-1]
    _truncate(shard, last.offset)  # the last member's header and the end blocks are gone
    with pytest.raises(CorpusError, match="without the end-of-archive blocks.*last complete sample is #1"):
        build_index(tmp_path / "c", tmp_path / "idx", _cfg())


def test_a_file_named_tar_that_is_no_tar(tmp_path: Path) -> None:
    write(tmp_path / "c" / "a.tar", b'{"text": "I am JSON"}\n' * 40)
    with pytest.raises(CorpusError, match=r"a.tar: not a tar archive"):
        build_index(tmp_path / "c", tmp_path / "idx", _cfg())
    write(tmp_path / "c" / "a.tar", b"")
    with pytest.raises(CorpusError, match=r"a.tar: not a tar archive \(empty file\)"):
        build_index(tmp_path / "c", tmp_path / "idx", _cfg())


def test_a_damaged_header_inside_a_shard(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "c" / "a.tar", image_samples(3))
    with tarfile.open(shard) as tf:
        second = tf.getmembers()[3]
    data = bytearray(shard.read_bytes())
    data[second.offset : second.offset + 512] = b"\x07" * 512
    shard.write_bytes(bytes(data))
    with pytest.raises(CorpusError, match=f"the header at byte {second.offset} is not a tar header"):
        build_index(tmp_path / "c", tmp_path / "idx", _cfg())


@pytest.mark.parametrize(("members", "message"), [
    ([("a.png", png_bytes(4, 4)), ("a.json", {"caption": "no txt"})], "missing text field 'txt'"),
    ([("a.png", b"\x89PNG\r\n\x1a\n garbage"), ("a.txt", "x")], "image header cannot be read"),
    ([("a.txt", "x"), ("a.json", b"{not json")], "member .json is not valid JSON"),
    ([("a.txt", b"\xff\xfe bad")], "member .txt is not UTF-8 text"),
    ([("a.txt", "x"), ("a", b"??")], "member 'a' has no extension"),
    ([("a.txt", "x"), ("a.txt", "y")], "member .txt occurs twice"),
])
def test_bad_samples_fail_or_are_skipped(tmp_path: Path, members: list, message: str) -> None:
    good = [("z.png", png_bytes(5, 5)), ("z.txt", "good one")]
    write_members(tmp_path / "c" / "a.tar", members + good)
    with pytest.raises(CorpusError, match=rf"(?s)a.tar sample 0 \(key 'a'\): {message}.*on_error = \"skip\""):
        build_index(tmp_path / "c", tmp_path / "idx", _cfg())
    report = build_index(tmp_path / "c", tmp_path / "idx", _cfg(on_error="skip"))
    assert [s["line"] for s in report.skipped] == [0] and message in report.skipped[0]["error"]
    rows = _rows(tmp_path / "idx")
    assert [(r["sample_id"], r["key"]) for r in rows] == [("a.tar#1", "z")]


def test_text_must_be_a_path_or_a_list_of_paths() -> None:
    with pytest.raises(ConfigError, match="text must be a field path or a list of field paths"):
        parse_config("[index]\ntext = 3\n")
    with pytest.raises(ConfigError, match="text must name the field"):
        parse_config('[index]\ntext = ["txt", ""]\n')
    assert parse_config('[index]\ntext = ["txt"]\n').text == "txt"


def test_pax_long_names_and_folders_in_a_shard(tmp_path: Path) -> None:
    folder = "d/" + "long" * 40 + "/"
    shard = tmp_path / "c" / "a.tar"
    shard.parent.mkdir(parents=True)
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tf:
        for ext, data in (("seg.png", png_bytes(9, 7)), ("en.txt", b"long name caption")):
            info = tarfile.TarInfo(f"{folder}k1.{ext}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    build_index(tmp_path / "c", tmp_path / "idx", _cfg(text='"en.txt"'))
    (row,) = _rows(tmp_path / "idx")
    assert (row["key"], row["images"], row["image_width"]) == (f"{folder}k1", 1, 9)
    reader = _reader(tmp_path / "idx", 0, "en.txt")
    got = reader.sample(row["offset"], row["length"])
    assert got.text == "long name caption" and list(got.media) == ["seg.png"]
    reader.close()


@pytest.mark.shared
def test_real_shards_equal_an_independent_tarfile_read(shared_corpora: Path, tmp_path: Path) -> None:
    corpus = shared_corpora / "image_text"
    build_index(corpus, tmp_path / "idx", _cfg('[properties.url]\nfrom = "json.url"\n'))
    t = load_index(tmp_path / "idx")
    rows = t.samples.to_pylist()
    for file_id, f in enumerate(t.manifest["files"]):
        want = _tar_members(corpus / f["path"])
        mine = [r for r in rows if r["file_id"] == file_id]
        assert len(mine) == len(want) == f["records"]
        assert [r["key"] for r in mine] == list(want)
        reader = _reader(tmp_path / "idx", file_id)
        for r in mine:
            members = want[r["key"]]
            got = reader.sample(r["offset"], r["length"])
            assert got.text == members["txt"].decode()
            assert got.record["json"] == json.loads(members["json"])
            assert got.media == {e: b for e, b in members.items() if e not in ("txt", "json")}
            assert r["images"] == 1 and r["image_width"] > 0
        reader.close()
    assert {f["path"]: f["records"] for f in t.manifest["files"]} == {
        "cc12m-train-0000.tar": 32, "tuxpaint-000001.tar": 385}
    widths = pq.read_table(tmp_path / "idx" / INDEX_SAMPLES, columns=["image_width"]).column(0)
    assert widths.null_count == 0


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "JPEG", "JPEG-progressive", "WEBP", "WEBP-lossless",
                                 "WEBP-alpha", "BMP", "TIFF"])
@pytest.mark.parametrize("size", [(1, 1), (17, 9), (300, 200), (5000, 3)])
def test_image_header_sizes_equal_pillow(fmt: str, size: tuple[int, int]) -> None:
    from PIL import Image

    from mixtera.runtime.webdataset import image_header_size

    name, _, variant = fmt.partition("-")
    kwargs = {"progressive": True} if variant == "progressive" else \
        {"lossless": True} if variant == "lossless" else {}
    im = Image.new("RGBA" if variant == "alpha" else "RGB", size, "red")
    if name == "JPEG":  # metadata before the frame header
        exif = im.getexif()
        exif[0x010E] = "x" * 3000
        kwargs["exif"] = exif
    buf = io.BytesIO()
    im.save(buf, format=name, **kwargs)
    buf.seek(0)
    assert image_header_size(buf) == Image.open(io.BytesIO(buf.getvalue())).size == size


def test_the_default_text_path_on_a_shard_hints_at_its_members(tmp_path: Path) -> None:
    write_shard(tmp_path / "c" / "a.tar", image_samples(2))
    with pytest.raises(CorpusError, match=r"(?s)missing text field 'text'.*text and JSON members: json, "
                       r"txt\); name its text under \[index\], e.g. text = \"txt\""):
        build_index(tmp_path / "c", tmp_path / "idx")


def test_unchanged_shards_are_reused_and_changed_ones_reindexed(tmp_path: Path) -> None:
    write_shard(tmp_path / "c" / "a.tar", image_samples(3))
    write_shard(tmp_path / "c" / "b.tar", image_samples(2, start=3))
    build_index(tmp_path / "c", tmp_path / "idx", _cfg())
    first = (tmp_path / "idx" / INDEX_SAMPLES).read_bytes()
    again = build_index(tmp_path / "c", tmp_path / "idx", _cfg())
    assert again.unchanged == ["a.tar", "b.tar"] and (tmp_path / "idx" / INDEX_SAMPLES).read_bytes() == first
    write_shard(tmp_path / "c" / "b.tar", image_samples(4, start=3))
    changed = build_index(tmp_path / "c", tmp_path / "idx", _cfg())
    assert changed.changed == ["b.tar"] and changed.samples == 7
    assert [r["key"] for r in _rows(tmp_path / "idx")][3:] == ["s00003", "s00004", "s00005", "s00006"]

"""WebDataset `.tar` shards: the one home of how tar members become samples.

A shard is a plain tar archive. Members are grouped into samples by key: the member's path up to the
first dot of its file name (``a/b/0001.seg.png`` -> key ``a/b/0001``, extension ``seg.png``). A sample
is the record ``{extension: value}``: ``json`` members parsed, text members decoded as UTF-8 (an
extension with dots nests: ``en.txt`` is ``record["en"]["txt"]``, so dotted paths reach it), binary
members (images and anything else) kept as bytes only where the caller asks for them (``media``).

The index (`mixtera.planner.index.corpus_files`) records each sample's *span*: from the first header
block of its first member to the end of its last member's data. The runtime reads that span with one
positioned read and splits it with `split_span`, keeping the members of the sample's key, so no shard
is ever scanned at run time. Members of one key that are not adjacent in the archive belong to the
sample of the key's first appearance; its span then covers the members in between, which the split
leaves out (correct, but it reads more bytes).
"""

from __future__ import annotations

import io
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from mixtera.runtime.errors import CorpusError, MixteraUserError

# Members decoded as UTF-8 text (the last dotted part of the extension decides: "en.txt" is text).
TEXT_EXTENSIONS = frozenset({"txt", "text", "cls", "cls2", "caption", "md", "html", "htm", "xml", "csv",
                             "tsv", "yaml", "yml", "id", "key", "url", "index"})
JSON_EXTENSIONS = frozenset({"json"})
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "ppm", "pgm",
                              "pbm", "pnm"})
PILLOW_HINT = 'install Pillow, the image library mixtera uses: pip install "mixtera[vision]"'


def split_name(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member path; the extension is "" for a file name without a dot."""
    folder, slash, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return folder + slash + stem, ext


def kind_of(ext: str) -> str:
    """How a member with extension ``ext`` is read: "json", "text", "image" or "binary"."""
    last = ext.rsplit(".", 1)[-1].lower()
    if last in JSON_EXTENSIONS:
        return "json"
    if last in TEXT_EXTENSIONS:
        return "text"
    return "image" if last in IMAGE_EXTENSIONS else "binary"


def is_read_at_index(ext: str) -> bool:
    """JSON and text members become record values; binary members are only located."""
    return kind_of(ext) in ("json", "text")


class MemberError(ValueError):
    """A member's value cannot be decoded (the caller names the file and sample)."""


def put_value(record: dict[str, Any], ext: str, value: Any) -> None:
    """Store a member's value under its extension, nested at the dots (``en.txt`` -> ``record["en"]["txt"]``)
    so that the index's dotted paths reach every member: ``text = "en.txt"``, ``from = "json.caption"``."""
    *outer, last = ext.split(".")
    for part in outer:
        inner = record.setdefault(part, {})
        if type(inner) is not dict:
            raise MemberError(f"member .{ext} collides with member .{part}")
        record = inner
    if last in record:
        raise MemberError(f"member .{ext} collides with another member of this key")
    record[last] = value


def decode_value(ext: str, data: bytes) -> Any:
    """The record value of a JSON or text member."""
    if kind_of(ext) == "json":
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MemberError(f"member .{ext} is not valid JSON ({exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MemberError(f"member .{ext} is not UTF-8 text ({exc})") from None


def pillow() -> Any:
    """The `PIL.Image` module, imported on first use so that text-only work never needs Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise MixteraUserError("reading images needs Pillow, which is not installed", PILLOW_HINT) from None
    return Image


HEADER_BYTES = 1 << 16  # read to find an image's size; a JPEG with more metadata goes to Pillow


def image_header_size(fileobj: Any) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, without decoding.

    PNG, GIF, WebP and JPEG headers are parsed here from the first bytes (about 10x faster than
    opening the image with Pillow, which dominated indexing); any other format, or a JPEG whose
    frame header lies beyond `HEADER_BYTES`, is opened lazily with Pillow (it reads the header only).
    """
    head = fileobj.read(HEADER_BYTES)
    size = _fast_size(head)
    if size is not None:
        return size
    fileobj.seek(0)
    image_mod = pillow()
    try:
        with image_mod.open(fileobj) as im:
            return int(im.width), int(im.height)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a header it cannot read
        raise MemberError(f"image header cannot be read ({type(exc).__name__}: {exc})") from None


def _fast_size(head: bytes) -> tuple[int, int] | None:
    """The size in a PNG, GIF, WebP or JPEG header; None when ``head`` is none of them (or odd)."""
    size: tuple[int, int] | None = None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        size = struct.unpack(">II", head[16:24])
    elif head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        size = struct.unpack("<HH", head[6:10])
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        size = _webp_size(head)
    elif head[:2] == b"\xff\xd8":
        size = _jpeg_size(head)
    return size if size is not None and size[0] > 0 and size[1] > 0 else None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


# JPEG start-of-frame markers (SOF0-SOF15 without DHT, JPG and DAC), which hold the frame size.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _SOF:
            h, w = struct.unpack(">HH", head[at + 5 : at + 9])
            return w, h
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header: let Pillow judge
            return None
        at += 2 + int.from_bytes(head[at + 2 : at + 4], "big")
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class TarSample:
    """One sample read back from its shard."""

    key: str
    text: str
    record: dict[str, Any]  # JSON and text members, decoded as at index time
    media: dict[str, bytes]  # the other members (images first among them in archive order)


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a span: extension and where its data lies, relative to the span's start."""

    ext: str
    start: int
    size: int


def split_span(span: bytes, where: str) -> tuple[str, list[Member]]:
    """The key and the members of the sample whose span is ``span`` (from its first header block).

    Members of other keys inside the span (non-adjacent members of one key) are left out.
    """
    found = _plain_members(span)
    key, members = found if found is not None else _tarfile_members(span, where)
    if key is None or any(m.start + m.size > len(span) for m in members):
        raise CorpusError(f"{where}: no complete tar sample at the planned bytes", REINDEX)
    return key, members


_BLOCK = 512
_REGULAR = (b"0", b"\x00")  # typeflags of regular files
_PAX = b"x"  # a pax extended header for the next member
_PAX_IGNORED = frozenset({b"mtime", b"atime", b"ctime", b"uid", b"gid", b"uname", b"gname"})


def _plain_members(span: bytes) -> tuple[str | None, list[Member]] | None:
    """`split_span` without tarfile for spans of plain headers of regular files (what `tar`, Python's
    tarfile and webdataset's TarWriter produce for short names, pax headers of times and owners
    included), parsed as tarfile parses them (about 6x faster per sample); None for anything else
    (long names, links, directories, base-256 sizes, a bad checksum), which tarfile then reads."""
    members: list[Member] = []
    key: str | None = None
    at = 0
    while at + _BLOCK <= len(span):
        head = span[at : at + _BLOCK]
        size, kind = _checked_size(head), head[156:157]
        if size is None:
            return None
        if kind == _PAX and not _ignorable_pax(span[at + _BLOCK : at + _BLOCK + size]):
            return None
        if kind != _PAX:
            name, prefix = _nts(head[:100]), _nts(head[345:500])
            if kind not in _REGULAR or not name or name.endswith("/"):
                return None
            k, ext = split_name(f"{prefix}/{name}" if prefix else name)
            key = k if key is None else key
            if k == key:
                members.append(Member(ext, at + _BLOCK, size))
        at += _BLOCK + -(-size // _BLOCK) * _BLOCK
    return key, members


def _checked_size(head: bytes) -> int | None:
    """The data size of a header block with a valid checksum, else None."""
    try:
        size, checksum = _octal(head[124:136]), _octal(head[148:156])
    except ValueError:  # base-256 or damaged numbers: tarfile decides
        return None
    return size if checksum == 256 + sum(head) - sum(head[148:156]) else None  # its field counts as spaces


def _ignorable_pax(records: bytes) -> bool:
    """Whether the records (``"%d %s=%s\\n"``) of a pax header set only what `split_span` ignores."""
    at = 0
    while at < len(records):
        space = records.find(b" ", at)
        equals = records.find(b"=", space + 1)
        try:
            length = int(records[at:space])
        except ValueError:
            return False
        end = at + length
        if not at < space < equals < end <= len(records) or records[end - 1 : end] != b"\n":
            return False
        if records[space + 1 : equals] not in _PAX_IGNORED:
            return False
        at = end
    return True


def _octal(field: bytes) -> int:
    return int(field.split(b"\x00", 1)[0].decode("ascii").strip() or "0", 8)


def _nts(field: bytes) -> str:
    """A NUL-terminated name field, decoded as tarfile decodes names by default."""
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _tarfile_members(span: bytes, where: str) -> tuple[str | None, list[Member]]:
    members: list[Member] = []
    key: str | None = None
    try:
        with tarfile.open(fileobj=io.BytesIO(span), mode="r:") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                k, ext = split_name(info.name)
                key = k if key is None else key
                if k == key:
                    members.append(Member(ext, info.offset_data, info.size))
    except tarfile.TarError as exc:
        raise CorpusError(f"{where}: no tar sample at the planned bytes ({exc})", REINDEX) from None
    return key, members


REINDEX = "re-run `mixtera index` on the corpus and `mixtera compile` the mixture again"


def members_record(span: bytes, members: list[Member], where: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The sample's record (JSON and text members decoded, as the index read them) and its other
    members as bytes (``media``)."""
    record: dict[str, Any] = {}
    media: dict[str, bytes] = {}
    view = memoryview(span)
    for m in members:
        data = bytes(view[m.start : m.start + m.size])
        if is_read_at_index(m.ext):
            try:
                put_value(record, m.ext, decode_value(m.ext, data))
            except MemberError as exc:
                raise CorpusError(f"{where}: {exc}", REINDEX) from None
        else:
            media[m.ext] = data
    return record, media


def image_extensions(exts: Iterator[str] | list[str]) -> list[str]:
    """The image members among ``exts``, in order."""
    return [e for e in exts if kind_of(e) == "image"]

"""`split_span`'s own header parser agrees with tarfile on every layout, and leaves the rest to it."""

from __future__ import annotations

import io
import tarfile

import pytest

from mixtera.runtime.errors import CorpusError
from mixtera.runtime.webdataset import _plain_members, _tarfile_members, split_span

MEMBERS = [("s0001.jpg", b"\xff\xd8" + b"x" * 700), ("s0001.txt", b"a caption"), ("s0001.json", b"{}"),
           ("s0002.txt", b"the next sample")]


def _span(members: list[tuple[str, bytes]], fmt: int, mtime: float = 0,
          kind: bytes = tarfile.REGTYPE) -> bytes:
    """The archive without its end-of-archive blocks, as the index records a span."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.type = len(data), mtime, kind
            tf.addfile(info, io.BytesIO(data))
    data = out.getvalue()
    return data[: len(data.rstrip(b"\0")) + 511 & ~511]  # the last member's data, padded


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
@pytest.mark.parametrize("mtime", [0, 1747969211.5140378], ids=["int-mtime", "float-mtime"])
def test_plain_headers_are_parsed_as_tarfile_parses_them(fmt: int, mtime: float) -> None:
    span = _span(MEMBERS, fmt, mtime)
    found = _plain_members(span)
    assert found is not None  # a pax header of a float mtime only is parsed too
    assert found == _tarfile_members(span, "x") == split_span(span, "x")
    key, members = found
    assert key == "s0001" and [m.ext for m in members] == ["jpg", "txt", "json"]
    assert [span[m.start : m.start + m.size] for m in members] == [d for _, d in MEMBERS[:3]]


def test_a_ustar_prefix_joins_the_name() -> None:
    folder = "d" * 120 + "/"  # longer than the 100-byte name field: ustar splits it into the prefix
    members = [(folder + n, d) for n, d in MEMBERS]
    span = _span(members, tarfile.USTAR_FORMAT)
    assert _plain_members(span) == _tarfile_members(span, "x")
    assert _plain_members(span)[0] == folder + "s0001"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_long_names_and_other_kinds_go_to_tarfile(fmt: int) -> None:
    long = [("n" * 150 + n, d) for n, d in MEMBERS]  # a GNU long-name member or a pax path record
    span = _span(long, fmt)
    assert _plain_members(span) is None
    assert split_span(span, "x") == _tarfile_members(span, "x")
    assert split_span(span, "x")[0] == "n" * 150 + "s0001"
    links = _span(MEMBERS, tarfile.GNU_FORMAT, kind=tarfile.SYMTYPE)
    assert _plain_members(links) is None


def test_a_damaged_header_goes_to_tarfile_and_is_refused() -> None:
    span = bytearray(_span(MEMBERS, tarfile.GNU_FORMAT))
    span[3] ^= 1  # the name changes, the checksum no longer matches
    assert _plain_members(bytes(span)) is None
    with pytest.raises(CorpusError, match="no tar sample at the planned bytes"):
        split_span(bytes(span), "shard.tar byte 0")


def test_a_truncated_span_is_refused() -> None:
    span = _span(MEMBERS, tarfile.GNU_FORMAT)
    with pytest.raises(CorpusError, match="no complete tar sample"):
        split_span(span[:600], "shard.tar byte 0")  # the jpg's data is cut

"""The one header check of every binary format (rank file, token file, frame cache, feedback log).

Each format keeps its own byte layout (see its module); what they share is checked here, in the
same order and with the same messages, as llm.c's data loader does: the file is long enough for
its header, starts with the format's magic, has a major version this code reads (a newer minor
version only adds what older readers may ignore, so it is accepted; a format with one version
number accepts only that one), sets no flag bit this version does not define, and is exactly as
long as its header or seek table declares. Every failure is a :class:`FileFormatError` subclass
naming the file, with a hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mixtera.runtime.errors import FileSizeError, FormatVersionError, NotThisFormatError, ReservedFlagsError


@dataclass(frozen=True, slots=True, kw_only=True)
class BinaryFormat:
    """What the header check needs to know about one format."""

    name: str  # "rank file": used in messages
    magic: bytes
    major: int
    minor: int | None = None  # None: the format has a single version number
    header_size: int
    known_flags: int = 0  # flag bits this version defines; any other set bit is refused
    hint: str  # how to get a good file when this one is damaged or foreign
    version_hint: str  # how to get a file of a version this code reads

    @property
    def version(self) -> str:
        return f"{self.major}.x" if self.minor is not None else f"version {self.major}"


def check_header(path: Path | str, fmt: BinaryFormat, *, size: int, magic: bytes, major: int,
                 minor: int | None = None, flags: int = 0) -> None:
    """Refuse a file of ``size`` bytes whose header holds ``magic``, ``major``/``minor`` and ``flags``.

    Call :func:`check_length` first when the header fields could not be read at all.
    """
    check_length(path, fmt, size)
    if magic != fmt.magic:
        raise NotThisFormatError(f"{path}: bad magic {magic!r}, not a mixtera {fmt.name} "
                                 f"(those start with {fmt.magic!r})", fmt.hint)
    if major != fmt.major:
        found = f"{major}.{minor}" if fmt.minor is not None else f"version {major}"
        raise FormatVersionError(f"{path}: {fmt.name} format {found}, this mixtera reads {fmt.version}",
                                 fmt.version_hint)
    unknown = flags & ~fmt.known_flags
    if unknown:
        raise ReservedFlagsError(f"{path}: reserved flag bits {unknown:#x} are set, which this mixtera's "
                                 f"{fmt.name} format {fmt.major}.{fmt.minor or 0} does not define",
                                 fmt.version_hint)


def check_length(path: Path | str, fmt: BinaryFormat, size: int) -> None:
    """Refuse a file too short to hold the format's header."""
    if size < fmt.header_size:
        raise NotThisFormatError(f"{path}: {size} bytes, too short for a {fmt.name} "
                                 f"(its header alone has {fmt.header_size})", fmt.hint)


def check_size(path: Path | str, fmt: BinaryFormat, *, size: int, declared: int, by: str) -> None:
    """Refuse a file whose ``size`` differs from the ``declared`` one (``by``: what declares it)."""
    if size != declared:
        cut = "truncated" if size < declared else f"{size - declared} trailing bytes"
        raise FileSizeError(f"{path}: size {size} does not match {by}, which makes it {declared} bytes "
                            f"({cut})", fmt.hint)

"""The feedback log ``PLAN/feedback/log.bin``: per-step, per-domain tokens and loss sums.

Layout (little-endian)::

    header   32 bytes  magic b"MXFBLOG\\0", major u16, minor u16, domains u32, plan fingerprint (16 bytes)
    record   u32 payload length, u32 crc32 of the payload, payload
    payload  step u64, plan version u32, reserved u32, tokens int64[domains], loss_sum float64[domains]

Only rank 0 appends, one ``write`` per record. A crash can leave a torn last record: fewer bytes
than a record after the last intact one, or exactly one record that fails its length or checksum.
Readers ignore it and the writer truncates it before appending, so a half record is never read.
Damage anywhere before the last record (more than one record's bytes after the first bad one) is
an error naming that record: it is never truncated, since the records after it would be lost.
A step may appear more than once (a job resumed from a checkpoint reports its steps again): the
last record of a step wins.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixtera.runtime.atomic import fsync_path, write_atomic
from mixtera.runtime.errors import PlanError
from mixtera.runtime.format.header import BinaryFormat, check_header, check_length

MAGIC = b"MXFBLOG\0"
MAJOR, MINOR = 1, 0
_HEADER = struct.Struct("<8sHHI16s")
HEADER_SIZE = 32
_PREFIX = struct.Struct("<II")
_FIXED = struct.Struct("<QII")
UNKNOWN_VERSION = 2**32 - 1  # the step's segment was not decided yet when it was reported
FORMAT = BinaryFormat(name="feedback log", magic=MAGIC, major=MAJOR, minor=MINOR, header_size=HEADER_SIZE,
                      hint="delete or move the file to start a new log (its records are unreadable)",
                      version_hint="use the mixtera that wrote it, or delete the log")


@dataclass(frozen=True, slots=True)
class LogRecords:
    """All valid records in file order; ``valid_bytes`` is where the readable part of the file ends."""

    step: np.ndarray  # (R,) int64
    version: np.ndarray  # (R,) int64
    tokens: np.ndarray  # (R, K) int64
    loss_sum: np.ndarray  # (R, K) float64
    valid_bytes: int
    torn_bytes: int  # bytes after the last valid record (a torn tail)

    def before(self, step: int) -> LogRecords:
        """The records of the steps before ``step`` (what a job resuming at ``step`` has reported)."""
        keep = self.step < step
        return LogRecords(self.step[keep], self.version[keep], self.tokens[keep], self.loss_sum[keep],
                          self.valid_bytes, self.torn_bytes)


def encode_record(step: int, version: int, tokens: np.ndarray, loss_sum: np.ndarray) -> bytes:
    payload = (_FIXED.pack(step, version, 0) + np.ascontiguousarray(tokens, dtype="<i8").tobytes()
               + np.ascontiguousarray(loss_sum, dtype="<f8").tobytes())
    return _PREFIX.pack(len(payload), zlib.crc32(payload)) + payload


def _header(domains: int, fingerprint: str) -> bytes:
    head = _HEADER.pack(MAGIC, MAJOR, MINOR, domains, bytes.fromhex(fingerprint))
    return head.ljust(HEADER_SIZE, b"\0")


def log_file_bytes(records: LogRecords, domains: int, fingerprint: str) -> bytes:
    """A complete log holding ``records`` (in their order) for the plan ``fingerprint``."""
    return _header(domains, fingerprint) + b"".join(
        encode_record(int(s), int(v), t, x)
        for s, v, t, x in zip(records.step, records.version, records.tokens, records.loss_sum, strict=True))


def _check_header(raw: bytes, path: Path, domains: int, fingerprint: str) -> None:
    check_length(path, FORMAT, len(raw))
    magic, major, minor, k, fp = _HEADER.unpack(raw[: _HEADER.size])
    check_header(path, FORMAT, size=len(raw), magic=magic, major=major, minor=minor)
    if k != domains or fp.hex() != fingerprint:
        raise PlanError(f"{path}: written for a plan with {k} domains and fingerprint {fp.hex()}, this "
                        f"plan has {domains} domains and fingerprint {fingerprint}",
                        "the log belongs to another plan; move it away")


def read_log(path: Path | str, domains: int, fingerprint: str) -> LogRecords:
    """Every intact record of the log; an absent log reads as empty."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _records([], domains, 0, 0)
    _check_header(raw, path, domains, fingerprint)
    size = _FIXED.size + 16 * domains
    at, rows = HEADER_SIZE, []
    while at + _PREFIX.size <= len(raw):
        length, crc = _PREFIX.unpack_from(raw, at)
        body = raw[at + _PREFIX.size: at + _PREFIX.size + length]
        if length != size or len(body) != length or zlib.crc32(body) != crc:
            break
        rows.append(body)
        at += _PREFIX.size + length
    if len(raw) - at > _PREFIX.size + size:  # more than one record follows the bad one: not a torn tail
        raise PlanError(f"{path}: record {len(rows)} (at byte {at}) fails its length or crc32 check, and "
                        f"{len(raw) - at} bytes follow it: the log is damaged before its end",
                        "restore the log from a backup; moving it away starts a new log (its records "
                        "are then lost). mixtera does not truncate it: the records after the damage "
                        "would be lost")
    return _records(rows, domains, at, len(raw) - at)


def _records(rows: list[bytes], domains: int, valid: int, torn: int) -> LogRecords:
    n = len(rows)
    step, version = np.zeros(n, np.int64), np.zeros(n, np.int64)
    tokens, loss = np.zeros((n, domains), np.int64), np.zeros((n, domains), np.float64)
    for i, body in enumerate(rows):
        step[i], version[i], _ = _FIXED.unpack_from(body)
        tokens[i] = np.frombuffer(body, "<i8", domains, _FIXED.size)
        loss[i] = np.frombuffer(body, "<f8", domains, _FIXED.size + 8 * domains)
    return LogRecords(step, version, tokens, loss, valid, torn)


class LogWriter:
    """Appends records; creates the log (header written atomically) or repairs a torn tail first."""

    def __init__(self, path: Path | str, domains: int, fingerprint: str, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.domains = domains
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            write_atomic(self.path, _header(domains, fingerprint))
        else:
            recs = read_log(self.path, domains, fingerprint)
            if recs.torn_bytes:
                os.truncate(self.path, recs.valid_bytes)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        fsync_path(self.path.parent)

    def append(self, step: int, version: int, tokens: np.ndarray, loss_sum: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        loss_sum = np.asarray(loss_sum)
        if tokens.shape != (self.domains,) or loss_sum.shape != (self.domains,):
            raise ValueError(f"feedback record needs {self.domains} domains, got tokens {tokens.shape} "
                             f"and loss_sum {loss_sum.shape}")
        data = encode_record(step, version, tokens, loss_sum)
        written = os.write(self._fd, data)
        if written != len(data):  # a short write on a full disk: readers treat it as a torn tail
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")
        if self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

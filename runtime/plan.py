"""Read a compiled plan directory: manifest, sample table, rank files (see man/mixtera-formats.md).

``Plan.open(path)`` checks the manifest (kind, major version), memory-maps ``samples.npy`` and opens
rank files lazily. ``plan.segment(rank, k, version)`` reads segment ``k`` of a rank from the files of
a plan version; it never waits or writes: which version a replaying rank reads is chosen by
``mixtera.runtime.versions.VersionResolver`` (``plan.versions``, the one resolver).
``plan.resolve(segment)`` turns stream positions into sample rows, corpus locations and absolute
token ranges.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixtera.runtime.confine import recorded_root
from mixtera.runtime.errors import PlanError
from mixtera.runtime.fingerprint import ContentHasher, bytes_content_hash, canonical_json, file_content_hash
from mixtera.runtime.format.plan_dir import (
    MANIFEST,
    QUOTAS,
    SAMPLE_BLOCKS,
    SAMPLES,
    WEIGHTS,
    data_folder,
    rank_file_path,
)
from mixtera.runtime.format.rank_file import RankFileReader
from mixtera.runtime.format.rank_frames import Segment
from mixtera.runtime.format.sample_blocks import BlockReader
from mixtera.runtime.shuffle import stream_samples
from mixtera.runtime.stream_rows import stream_rows
from mixtera.runtime.tokenizer import framing_tokens
from mixtera.runtime.versions import VersionResolver

PLAN_KIND = "mixtera-plan"
# 1.1: the manifest's "checksums" (manifest, samples.npy); 1.2: also quotas.npy and weights.npy, and
# a rewrite's decision.json records those of its own version folder; 1.3: samples.blocks.npy (the
# sample table's block checksums) and its checksum
PLAN_FORMAT_VERSION = "1.3"
CHECKSUMS = "checksums"  # {"manifest": <content hash>, "samples.npy": <content hash>, "quotas.npy": ...}
STEP_ARRAYS = (QUOTAS, WEIGHTS)  # per-step (steps, components) arrays of each data version
SPLITS = ("train", "validation")  # PLAN/validation/ (plan_dir.VALIDATION) holds the validation split
_EDITED = "the manifest was edited or is damaged: recompile the plan"
NO_TOKEN_OFFSET = np.uint64(2**64 - 1)
SAMPLE_DTYPE = np.dtype([("file", "<u4"), ("record", "<u8"), ("offset", "<u8"), ("length", "<u8"),
                         ("tokens", "<u4"), ("token_offset", "<u8")])


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanComponent:
    id: int
    name: str
    stream: str
    first_row: int
    rows: int


@dataclass(slots=True, kw_only=True)
class ResolvedEntries:
    """Entries of a segment (or one step of it) with everything needed to read their tokens.

    ``token_start``/``token_end`` are absolute document coordinates (``token_end`` never 0); the
    document spans ``[0, doc_tokens)`` where ``doc_tokens`` counts the end-of-document token when the
    plan's tokenizer adds one.
    """

    step: np.ndarray  # int64, absolute step of each entry
    component: np.ndarray  # uint16
    position: np.ndarray  # int64, position in the component's stream
    row: np.ndarray  # int64, row of samples.npy
    file: np.ndarray  # uint32, file id (row of the manifest's files)
    record: np.ndarray  # uint64
    offset: np.ndarray  # uint64
    length: np.ndarray  # uint64
    token_offset: np.ndarray  # uint64, first id of the document in its token file (NO_TOKEN_OFFSET: none)
    doc_tokens: np.ndarray  # int64
    token_start: np.ndarray  # int64
    token_end: np.ndarray  # int64

    def __len__(self) -> int:
        return int(self.row.size)

    def take(self, sel: slice | np.ndarray) -> ResolvedEntries:
        return ResolvedEntries(**{name: getattr(self, name)[sel] for name in self.__slots__})


class Plan:
    """A plan directory opened for reading; cheap to open, rank files are opened on first use."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        topo = manifest["topology"]
        self.world_size: int = int(topo["world_size"])
        self.batch_size: int = int(topo["batch_size"])
        self.seq_len: int = int(topo.get("seq_len") or 0)
        self.steps: int = int(manifest["steps"])
        self.segment_steps: int = int(manifest["segment_steps"])
        self.seed: int = int(manifest["seed"])
        self.unit: str = manifest["unit"]
        tokenizer = manifest.get("tokenizer") or {}
        self.eos: bool = bool(tokenizer.get("eos", False))
        self.bos: bool = bool(tokenizer.get("bos", False))
        self.framing = framing_tokens(tokenizer)  # eos and bos tokens around every document
        self._samples: np.ndarray | None = None
        self._blocks: BlockReader | None = None  # set with _samples when the plan has block checksums
        self.components = [PlanComponent(id=c.get("id"), name=c.get("name"), stream=c.get("stream"),
                                         first_row=c.get("first_row"), rows=c.get("rows"))
                           for c in (x if isinstance(x, dict) else {} for x in manifest["components"])]
        self._check_components()
        self._comp_rows = np.array([c.rows for c in self.components], dtype=np.int64)
        self._comp_first = np.array([c.first_row for c in self.components], dtype=np.int64)
        self._comp_streams = [c.stream for c in self.components]
        self.files: list[dict[str, Any]] = manifest["files"]
        self.corpus_root = recorded_root(manifest.get("corpus_root"), where=str(path / MANIFEST),
                                         hint=_EDITED)
        self._readers: dict[tuple[int, int], RankFileReader] = {}
        self.versions = VersionResolver(path, manifest)  # for reads: never waits, never publishes

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str) -> Plan:
        """Open a plan; its components must tile ``samples.npy`` (checked from the npy header)."""
        path = Path(path)
        return cls(path, read_manifest(path))

    def _check_components(self) -> None:
        """Component ``k`` owns rows ``[first_row, first_row + rows)`` of samples.npy; the compiler lays
        them out in id order, back to back, covering the table: anything else would read other rows."""
        where, hint = self.path / MANIFEST, _EDITED
        at = 0
        for k, c in enumerate(self.components):
            fields = (c.id, c.first_row, c.rows)
            if any(isinstance(v, bool) or not isinstance(v, int) for v in fields) or c.id != k \
                    or c.first_row != at or c.rows < 0:
                raise PlanError(f"{where}: component {k} ({c.name!r}) has id {c.id!r}, first_row "
                                f"{c.first_row!r}, rows {c.rows!r}; expected id {k}, first_row {at} and "
                                "rows >= 0 (components own consecutive rows of the sample table)", hint)
            at += c.rows
        table = len(sample_table(self.path))  # from the npy header
        if at != table:
            raise PlanError(f"{where}: the components own {at} rows, {self.path / SAMPLES} holds {table}",
                            hint)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def segment_count(self) -> int:
        return len(self.manifest["segments"])

    def sample_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of the sample table (see SAMPLE_DTYPE), their bytes checked.

        A plan of format 1.3 on reads and checks only the 4 KiB blocks the rows lie in
        (runtime/format/sample_blocks.py), so a rank reads what it replays, not the whole table;
        an older plan's table is memory-mapped and hashed whole on first use (~10 GB/s, xxh3_128).
        """
        table = self._checked_table()
        if self._blocks is not None:
            return self._blocks.gather(rows)
        return np.take(table, rows)  # a plain gather; memmap fancy indexing is ~3x slower

    @property
    def sample_bytes_read(self) -> int:
        """Bytes of the sample table read and hashed so far (a block read twice counts twice; the
        whole file for a plan before format 1.3)."""
        if self._samples is None:
            return 0
        if self._blocks is not None:
            return self._blocks.bytes_read
        return (self.path / SAMPLES).stat().st_size

    def _checked_table(self) -> np.ndarray:
        if self._samples is None:
            if SAMPLE_BLOCKS not in (self.manifest.get(CHECKSUMS) or {}):
                self._samples = checked_sample_table(self.path, self.manifest)
            else:
                arr = sample_table(self.path)
                self._blocks = BlockReader(self.path / SAMPLES, int(arr.offset), arr.dtype,
                                           self._block_sums(), "recompile the plan")
                self._samples = arr
        return self._samples

    def _block_sums(self) -> np.ndarray:
        bpath = self.path / SAMPLE_BLOCKS
        sums = read_checked_npy(bpath, self.manifest.get(CHECKSUMS), where=self.path / MANIFEST)
        if sums.dtype != np.dtype("<u8") or sums.ndim != 1:
            raise PlanError(f"{bpath}: dtype {sums.dtype}, shape {sums.shape}; expected a uint64 vector",
                            "recompile the plan")
        return sums

    # -- segments ------------------------------------------------------------------------------
    def segment_of_step(self, step: int) -> int:
        if not 0 <= step < self.steps:
            raise PlanError(f"step {step} is outside the plan's {self.steps} steps (0..{self.steps - 1})")
        return step // self.segment_steps

    def segment(self, rank: int, k: int, version: int | None = None) -> Segment:
        """Segment ``k`` of rank ``rank`` from the files of ``version`` (default: the version that
        holds it now, ``versions.current_version``). A pure read: a replaying rank passes the
        version its resolver chose (``VersionResolver.data_version``)."""
        self._check_rank(rank)
        if not 0 <= k < self.segment_count:
            raise PlanError(f"{self.path / MANIFEST}: segment {k} (from step {k * self.segment_steps}) is "
                            f"not among the manifest's {self.segment_count} segments ({self.steps} steps)",
                            "the manifest was edited or is damaged: recompile the plan")
        return self._reader(rank, self.versions.current_version(k) if version is None else version).segment(k)

    def _reader(self, rank: int, version: int) -> RankFileReader:
        key = (rank, version)
        if key not in self._readers:
            reader = RankFileReader(rank_file_path(self.path, version, rank))
            head = reader.header
            if head.world_size != self.world_size or head.rank != rank:
                reader.close()
                raise PlanError(f"{reader.path}: written for rank {head.rank} of {head.world_size}, "
                                f"expected rank {rank} of {self.world_size}", "recompile the plan")
            if head.fingerprint.hex() != self.fingerprint:
                reader.close()
                raise PlanError(f"{reader.path}: fingerprint {head.fingerprint.hex()} does not match the "
                                f"manifest's {self.fingerprint}", "the plan directory mixes two plans; "
                                "recompile it")
            self._readers[key] = reader
        return self._readers[key]

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise PlanError(f"rank {rank} does not exist in a plan for world size {self.world_size}",
                            "use a rank in 0..world_size-1, or re-partition with "
                            "`mixtera compile --from-plan`")

    # -- resolving -----------------------------------------------------------------------------
    def rows_of(self, component: int, positions: np.ndarray) -> np.ndarray:
        """Rows of samples.npy that stream ``positions`` of ``component`` refer to."""
        comp = self.components[component]
        return comp.first_row + stream_samples(positions, comp.rows, self.seed, comp.stream)

    def resolve(self, segment: Segment) -> ResolvedEntries:
        """Sample rows, corpus locations and absolute token ranges of every entry of ``segment``."""
        rows = stream_rows(segment.component, segment.position, self._comp_rows, self._comp_first,
                           self.seed, self._comp_streams)  # every component at once: one walk
        meta = self.sample_rows(rows)
        doc = meta["tokens"].astype(np.int64) + self.framing
        start = segment.token_start.astype(np.int64)
        end = segment.token_end.astype(np.int64)
        end = np.where(end == 0, doc, end)
        steps = segment.first_step + np.repeat(np.arange(segment.steps, dtype=np.int64),
                                               segment.step_counts.astype(np.int64))
        return ResolvedEntries(step=steps, component=segment.component, position=segment.position,
                               row=rows, file=meta["file"], record=meta["record"],
                               offset=meta["offset"], length=meta["length"],
                               token_offset=meta["token_offset"], doc_tokens=doc,
                               token_start=start, token_end=end)

    def step_entries(self, rank: int, step: int) -> ResolvedEntries:
        """The resolved entries rank ``rank`` replays in ``step``, in replay order."""
        k = self.segment_of_step(step)
        seg = self.segment(rank, k)
        bounds = seg.step_slices()
        i = step - seg.first_step
        return self.resolve(seg).take(slice(int(bounds[i]), int(bounds[i + 1])))

    def step_array(self, name: str, version: int = 0) -> np.ndarray:
        """``quotas.npy`` or ``weights.npy`` of data version ``version`` (0: the compiled plan; else
        a rewrite's folder, whose rows start at its first step), checked against its recorded hash."""
        if version == 0:
            sums, where = self.manifest.get(CHECKSUMS), self.path / MANIFEST
        else:
            decision = self.versions.decision(version, wait=False)
            if decision is None:
                raise PlanError(f"{data_folder(self.path, version)}: version {version} is not published",
                                "the plan folder lost a decision: restore it or recompile the plan")
            sums, where = decision.get(CHECKSUMS), data_folder(self.path, version)
        return read_checked_npy(data_folder(self.path, version) / name, sums, where=where)

    def sample_id(self, row: int) -> str:
        """``<path relative to corpus root>#<record>`` of samples.npy row ``row``."""
        rec = self.sample_rows(np.array([int(row)], np.int64))[0]
        return f"{self.files[int(rec['file'])]['path']}#{int(rec['record'])}"

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        if self._blocks is not None:
            self._blocks.close()
            self._blocks, self._samples = None, None

    def __enter__(self) -> Plan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest(plan_dir: Path) -> dict[str, Any]:
    """The checked manifest of the plan directory ``plan_dir``."""
    mpath = plan_dir / MANIFEST
    if not mpath.is_file():
        raise PlanError(f"{plan_dir} is not a mixtera plan: it has no {MANIFEST}",
                        "compile one with `mixtera compile MIXTURE.toml --out PLAN`")
    try:
        manifest = json.loads(mpath.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanError(f"{mpath} is not valid JSON ({exc})", "recompile the plan") from None
    check_manifest(manifest, mpath)
    check_manifest_checksum(manifest, mpath)
    return manifest


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """Content hash of the manifest's canonical JSON, its own ``checksums.manifest`` left out."""
    sums = {k: v for k, v in (manifest.get(CHECKSUMS) or {}).items() if k != "manifest"}
    h = ContentHasher()
    h.update(canonical_json({**manifest, CHECKSUMS: sums}))
    return h.hexdigest()


def seal_manifest(manifest: dict[str, Any], file_hashes: dict[str, str]) -> dict[str, Any]:
    """``manifest`` with its checksums: those of samples.npy and the step arrays
    (``file_hashes``, by file name) and its own."""
    out = {**manifest, CHECKSUMS: dict(file_hashes)}
    out[CHECKSUMS]["manifest"] = manifest_checksum(out)
    return out


def sample_table(plan_dir: Path) -> np.ndarray:
    """samples.npy memory-mapped, its dtype checked (its content is not read)."""
    spath = plan_dir / SAMPLES
    try:
        arr = np.load(spath, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise PlanError(f"{spath}: cannot be read ({exc})", "recompile the plan") from None
    if arr.dtype != SAMPLE_DTYPE:
        raise PlanError(f"{spath}: dtype {arr.dtype} is not the plan sample dtype",
                        "recompile the plan with this version of mixtera")
    return arr


def checked_sample_table(plan_dir: Path, manifest: dict[str, Any]) -> np.ndarray:
    """:func:`sample_table`, its content hash checked against the manifest's (~10 GB/s, xxh3_128)."""
    spath, arr = plan_dir / SAMPLES, sample_table(plan_dir)
    expected = (manifest.get(CHECKSUMS) or {}).get(SAMPLES)
    if expected is not None and file_content_hash(spath) != expected:
        raise PlanError(f"{spath}: its content hash differs from the one the manifest records "
                        f"({expected}): the sample table is damaged", "recompile the plan")
    return arr


def read_checked_npy(path: Path, checksums: dict[str, Any] | None, *, where: Path) -> np.ndarray:
    """A small plan array (quotas, weights, the sample table's block checksums), read whole, its content
    hash checked when ``checksums`` (recorded in ``where``: a manifest or decision) holds one for it;
    plans before format 1.2 record none for the step arrays."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"{path}: cannot be read ({exc.strerror})", "recompile the plan") from None
    expected = (checksums or {}).get(path.name)
    if expected is not None and bytes_content_hash(data) != expected:
        raise PlanError(f"{path}: its content hash differs from the one {where} records ({expected}): "
                        "the file is damaged", "recompile the plan, or restore the file")
    try:
        return np.load(io.BytesIO(data))
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path}: not a numpy array ({exc})", "recompile the plan") from None


def check_manifest_checksum(manifest: dict[str, Any], where: Path) -> None:
    """Format 1.1 on records checksums: an edited field (seed, a component's rows) or a flipped bit
    would otherwise be replayed as other data. 1.0 manifests have none."""
    sums = manifest.get(CHECKSUMS)
    minor = str(manifest.get("format_version", "")).partition(".")[2]
    if sums is None and minor in ("", "0"):
        return
    needed = ("manifest", SAMPLES) if minor == "1" else ("manifest", SAMPLES, *STEP_ARRAYS)
    if minor.isdigit() and int(minor) >= 3:
        needed += (SAMPLE_BLOCKS,)
    if not isinstance(sums, dict) or not all(isinstance(sums.get(k), str) for k in needed):
        raise PlanError(f"{where}: format {manifest.get('format_version')} records no valid checksums",
                        "the manifest was edited or is damaged: recompile the plan")
    found = manifest_checksum(manifest)
    if found != sums["manifest"]:
        raise PlanError(f"{where}: its content hash {found} differs from the one it records "
                        f"({sums['manifest']}): the manifest was edited or is damaged", "recompile the plan")


def check_manifest(manifest: Any, where: Path) -> None:
    """Refuse anything that is not a plan manifest of a major version this code reads."""
    if not isinstance(manifest, dict) or manifest.get("kind") != PLAN_KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        raise PlanError(f"{where}: not a mixtera plan (kind {kind!r})",
                        "compile one with `mixtera compile MIXTURE.toml --out PLAN`")
    version = str(manifest.get("format_version", ""))
    if version.split(".")[0] != PLAN_FORMAT_VERSION.split(".")[0]:
        raise PlanError(f"{where}: plan format {version!r}, this mixtera reads "
                        f"{PLAN_FORMAT_VERSION.split('.')[0]}.x",
                        "recompile the plan with this version of mixtera, or use the mixtera that wrote it")

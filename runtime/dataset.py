"""``PlanDataset``: replays one rank's plan as a PyTorch IterableDataset (see man/mixtera-runtime.md).

Ordering with loader workers: worker ``j`` of ``w`` replays the rank's steps ``j, j + w, j + 2w, ...``
and yields each step as one batch (``batch_size`` sequences for ``output="tokens"``, one list of
documents for ``output="documents"``). A DataLoader fetches batches from its workers round-robin,
so with ``batch_size=plan batch size`` (tokens) or ``batch_size=None`` (documents) it yields the
plan's steps in order, each exactly once. ``PlanDataset.loader()`` builds that loader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mixtera.runtime.batches import StepBatch, StepDocuments, collate_sequences, collate_step
from mixtera.runtime.data_parallel import data_parallel_rank
from mixtera.runtime.errors import PlanError, StateError
from mixtera.runtime.fingerprint import json_digest
from mixtera.runtime.format.plan_dir import INDEX_MANIFEST, MANIFEST, VALIDATION, version_path
from mixtera.runtime.images import check_image_size
from mixtera.runtime.packing import PackedStep
from mixtera.runtime.plan import SPLITS, Plan
from mixtera.runtime.replay import Replay, ReplayConfig
from mixtera.runtime.state import ElasticOrigin, RuntimeState
from mixtera.runtime.tokenizer import check_tokenizer
from mixtera.runtime.versions import DecisionSchedule, read_decision

OUTPUTS = ("tokens", "documents")


def plan_text_field(plan: Plan) -> str | list[str]:
    """The JSON path of the document text: the plan's copy of the index setting, else the index's."""
    m = plan.manifest
    field = m.get("text_field") or (m.get("index") or {}).get("text_field")
    if field:
        return field
    index_path = (m.get("index") or {}).get("path")
    if index_path and (Path(index_path) / INDEX_MANIFEST).is_file():
        index = json.loads((Path(index_path) / INDEX_MANIFEST).read_bytes())
        return index.get("text_field") or (index.get("config") or {}).get("text") or "text"
    return "text"


def plan_image_tokens(plan: Plan) -> int:
    """Tokens one image costs in the plan (``[mixture] image_tokens``); 0 for a plan without images."""
    return int(plan.manifest.get("image_tokens") or 0)


def split_path(plan: Path, split: str) -> Path:
    """The plan directory of ``split``: the plan itself, or its ``validation/`` plan."""
    if split not in SPLITS:
        raise PlanError(f"split={split!r} is not one of {', '.join(SPLITS)}",
                        "split='train' replays the plan, split='validation' its [validation] split")
    if split == "train":
        return plan
    if not (plan / VALIDATION / MANIFEST).is_file():
        raise PlanError(f"{plan}: the plan has no validation split ({plan / VALIDATION} is missing)",
                        "add a [validation] table to the mixture and compile it again")
    return plan / VALIDATION


class PlanDataset(IterableDataset):
    """One rank's share of a compiled plan, step by step, resumable at any step."""

    def __init__(
        self,
        plan: Path | str,
        rank: int | None = None,
        world_size: int | None = None,
        tokenizer: Path | str | None = None,
        output: str = "tokens",
        with_provenance: bool = False,
        pretokenized: bool | None = None,
        cache_dir: Path | str | None = None,
        device_mesh: Any | None = None,
        process_group: Any | None = None,
        split: str = "train",
        document_masks: bool = False,
        continue_positions: bool = False,
        decode_images: bool = False,
        image_token_id: int | None = None,
        image_size: tuple[int, int] | None = None,
        keep_image_bytes: bool = False,
    ) -> None:
        """See man/mixtera-runtime.md. Documents of WebDataset samples carry ``media`` (the bytes of
        their non-text members); ``decode_images=True`` adds ``images`` (uint8 tensors (3, H, W)) and
        leaves the image members' bytes out of ``media`` unless ``keep_image_bytes=True``."""
        super().__init__()
        if output not in OUTPUTS:
            raise PlanError(f"output={output!r} is not one of {', '.join(OUTPUTS)}")
        if (document_masks or continue_positions) and output != "tokens":
            raise PlanError("document_masks / continue_positions need output='tokens'",
                            "documents carry their boundaries already: each item is one document")
        if image_size is not None and not decode_images and image_token_id is None:
            raise PlanError("image_size needs decode_images=True (documents) or image_token_id (tokens)",
                            "pass decode_images=True or image_token_id as well")
        if keep_image_bytes and not decode_images:
            raise PlanError("keep_image_bytes needs decode_images=True",
                            "without decoding, `media` holds the image bytes already")
        self.split = split
        self.plan_path = split_path(Path(plan), split)
        self.output = output
        self.with_provenance = with_provenance
        dp = data_parallel_rank(device_mesh, process_group)
        self.rank = dp.rank if rank is None else rank
        self.world_size = dp.world_size if world_size is None else world_size
        self._rank_source = dp.source if world_size is None else "the world_size argument"
        meta = Plan.open(self.plan_path)
        self._check_topology(meta)
        self.steps, self.batch_size, self.seq_len = meta.steps, meta.batch_size, meta.seq_len
        self.unit = meta.unit
        self.fingerprint = meta.fingerprint
        self.tokenizer_path = Path(tokenizer) if tokenizer is not None else None
        self.tokenizer_info = meta.manifest.get("tokenizer")
        self.tokenizer_blake2b = self._check_tokenizer()
        self.pretokenized = self._choose_pretokenized(meta, pretokenized)
        self.text_field = plan_text_field(meta)
        self.cache_dir = Path(cache_dir or os.environ.get("MIXTERA_CACHE") or self.plan_path / ".cache")
        self.image_tokens = plan_image_tokens(meta)
        self.image_size = check_image_size(image_size)
        self.image_token_id = self._check_image_token_id(image_token_id)
        self.domains = [c.name for c in meta.components]
        self.elastic = ElasticOrigin.of_manifest(meta.manifest)  # compiled with --from-plan
        self._schedule = DecisionSchedule.from_manifest(meta.manifest)  # None: no feedback decisions
        self.segment_steps = meta.segment_steps
        self._decision_digests: dict[int, str] = {}  # published decisions never change
        meta.close()
        self._config = ReplayConfig(
            plan_path=self.plan_path, fingerprint=self.fingerprint, rank=self.rank, output=self.output,
            batch_size=self.batch_size, seq_len=self.seq_len, with_provenance=self.with_provenance,
            domains=tuple(self.domains), text_field=self.text_field, cache_dir=self.cache_dir,
            pretokenized=self.pretokenized, tokenizer_path=self.tokenizer_path,
            tokenizer_info=self.tokenizer_info, tokenizer_blake2b=self.tokenizer_blake2b,
            document_masks=document_masks, continue_positions=continue_positions,
            decode_images=decode_images, image_size=self.image_size, keep_image_bytes=keep_image_bytes,
            image_token_id=self.image_token_id, image_tokens=self.image_tokens,
        )
        self._next_step = 0  # position of this copy: first step not yet consumed / yielded
        self._stride = 1  # 1: a rank position; w: the position of one of w loader workers
        self._runtime: Replay | None = None

    # -- checks at construction -----------------------------------------------------------------
    def _check_topology(self, plan: Plan) -> None:
        for name in ("rank", "world_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise PlanError(f"{name}={value!r} ({type(value).__name__}) must be an integer",
                                "pass rank and world_size as ints (e.g. int(os.environ['RANK']))")
        if self.world_size != plan.world_size:
            raise PlanError(
                f"{self.plan_path}: the plan is compiled for world size {plan.world_size}, "
                f"this job has world size {self.world_size} (data-parallel ranks, from {self._rank_source})",
                "re-partition it with `mixtera compile MIXTURE.toml --out NEW --from-plan "
                f"{self.plan_path} --from-step S --world-size {self.world_size}`",
            )
        if not 0 <= self.rank < plan.world_size:
            raise PlanError(
                f"rank {self.rank} does not exist in a plan for world size {plan.world_size}",
                "check RANK / the rank argument",
            )
        if self.output == "tokens" and plan.unit != "tokens":
            raise PlanError(
                f"{self.plan_path}: output='tokens' needs a plan with unit = \"tokens\", "
                f"this one has unit = {plan.unit!r}",
                "use output='documents' (and tokenize yourself), or compile with unit = \"tokens\"",
            )

    def _check_image_token_id(self, token_id: object) -> int | None:
        """The placeholder id: needed (and only allowed) for output='tokens' on a plan with images."""
        if token_id is None:
            if self.output == "tokens" and self.image_tokens:
                raise PlanError(
                    f"{self.plan_path}: the plan holds image samples ({self.image_tokens} tokens per image); "
                    "output='tokens' needs image_token_id, the id its placeholders get",
                    "pass image_token_id=tokenizer.token_to_id('<image>') (a special token of your "
                    "tokenizer), or use output='documents'")
            return None
        if self.output != "tokens":
            raise PlanError("image_token_id needs output='tokens'",
                            "documents carry their images as media (decode_images=True decodes them)")
        if not self.image_tokens:
            raise PlanError(f"{self.plan_path}: image_token_id is given but the plan has no image_tokens",
                            "set [mixture] image_tokens and compile a mixture with image samples")
        vocab = int((self.tokenizer_info or {}).get("vocab_size") or 0)
        if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < max(vocab, 1):
            raise PlanError(f"image_token_id={token_id!r} must be an int id of the plan's tokenizer "
                            f"(0 <= id < vocab size {vocab})", "use a special token such as <image>")
        return token_id

    def _check_tokenizer(self) -> str | None:
        if self.tokenizer_path is not None:  # checked here, parsed only where Replay runs
            return check_tokenizer(self.tokenizer_path, self.tokenizer_info)
        return (self.tokenizer_info or {}).get("blake2b")

    def _choose_pretokenized(self, plan: Plan, wanted: bool | None) -> bool:
        have = bool(plan.manifest.get("token_files")) and self.output == "tokens"
        if wanted and not have:
            raise PlanError(
                f"{self.plan_path}: the plan has no pre-tokenized token files",
                "index with `mixtera index --store-tokens` and recompile, or pass pretokenized=False",
            )
        use = have if wanted is None else wanted
        if self.output == "tokens" and not use and self.tokenizer_path is None:
            raise PlanError(
                "output='tokens' needs a tokenizer, or a plan whose index stored tokens",
                "pass tokenizer='tokenizer.json' (the one the index used)",
            )
        return use

    # -- state -----------------------------------------------------------------------------------
    def _state(self, next_step: int, stride: int, worker: int) -> RuntimeState:
        return RuntimeState(
            plan_fingerprint=self.fingerprint,
            world_size=self.world_size,
            rank=self.rank,
            tokenizer_blake2b=self.tokenizer_blake2b,
            output=self.output,
            next_step=next_step,
            stride=stride,
            worker=worker,
        )

    def state_dict(self) -> dict[str, Any]:
        """The position: every step before ``next_step`` was consumed (or, in a worker, yielded),
        and the published decisions those steps were replayed under."""
        info = get_worker_info()
        state = self._state(self._next_step, self._stride, info.id if info else 0)
        decisions = self._replayed_decisions(self._next_step + self._stride - 1)
        return replace(state, decisions=decisions).to_dict()

    def _replayed_decisions(self, until: int) -> dict[str, str]:
        """Digest of every published decision that governs a step before ``until``."""
        if self._schedule is None or until <= 0:
            return {}
        last = self._schedule.decision_of_segment((min(until, self.steps) - 1) // self.segment_steps)
        found = {v: self._decision_digest(v) for v in range(1, last + 1)}
        return {str(v): d for v, d in found.items() if d is not None}

    def _decision_digest(self, version: int) -> str | None:
        if version not in self._decision_digests:
            decision = read_decision(self.plan_path, version)
            if decision is None:
                return None
            self._decision_digests[version] = json_digest(decision)
        return self._decision_digests[version]

    def _check_decisions(self, loaded: RuntimeState) -> None:
        """Refuse a state whose decisions this plan folder no longer holds (or holds other ones)."""
        self._decision_digests.clear()
        for key, digest in sorted(loaded.decisions.items(), key=lambda kv: int(kv[0])):
            version = int(key)
            now = self._decision_digest(version) if self._schedule is not None else None
            if now == digest:
                continue
            where = version_path(self.plan_path, version)
            what = "is gone" if now is None else "differs from the one the job replayed"
            raise StateError(
                f"{where}: decision {version}, under which the saved steps were replayed, {what}: the plan "
                "folder was recompiled or its feedback state removed, so resuming would replay other data",
                f"resume with the plan folder the job trained on (restore {self.plan_path} from a backup), "
                "or start the job afresh on this plan without loading the data state",
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuses a state of another plan, world size, rank or tokenizer.

        A plan compiled with ``--from-plan OLD --from-step S`` also takes a state of OLD at step S,
        saved by any of OLD's ranks, and continues at S with this plan's topology (elastic resume).
        """
        loaded = RuntimeState.from_dict(state)
        current = self._state(0, 1, 0)
        if self.elastic is not None and loaded.plan_fingerprint == self.elastic.from_plan:
            self.elastic.check(loaded, current)
        else:
            loaded.check_matches(current)
            self._check_decisions(loaded)
        if not 0 <= loaded.next_step <= self.steps:
            raise PlanError(f"state step {loaded.next_step} is outside the plan's {self.steps} steps")
        self._next_step, self._stride = loaded.next_step, loaded.stride

    def mark_consumed(self, step: int) -> None:
        """Record that the training loop consumed ``step``; PlanLoader calls this for every batch."""
        self._next_step, self._stride = int(step) + 1, 1

    # -- iteration -------------------------------------------------------------------------------
    def _first_step(self, worker: int, workers: int) -> int:
        if self._stride == 1:
            return self._next_step + worker
        if self._stride != workers:
            raise PlanError(
                f"a worker state saved with {self._stride} loader workers cannot resume with {workers}",
                "resume with the same num_workers, or from a rank state",
            )
        return self._next_step

    def _my_steps(self) -> tuple[range, int, Replay]:
        """This process's steps, the number of loader workers, and its Replay."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is None:
            self.rewind_finished_validation()
        first = self._first_step(worker, workers)
        runtime = self._open_runtime()
        runtime.workers = workers
        return range(first, self.steps, workers), workers, runtime

    def __iter__(self) -> Iterator[Any]:
        steps, workers, runtime = self._my_steps()
        for step in steps:
            if self.output == "documents":
                docs = runtime.documents(step)
                self._advance(step, workers)
                yield docs
            else:
                *head, last = StepBatch.of(runtime.packed(step)).sequences()
                yield from head
                self._advance(step, workers)  # before the last yield: the batch is complete
                yield last

    def compact_steps(self) -> Iterator[PackedStep | StepDocuments]:
        """Each step as one object in the form that crosses processes cheaply (runtime/batches.py):
        a PackedStep (tokens; ``StepBatch.of`` builds the tensors) or StepDocuments."""
        steps, workers, runtime = self._my_steps()
        make = runtime.documents if self.output == "documents" else runtime.packed
        for step in steps:
            out = make(step)
            self._advance(step, workers)
            yield out

    def rewind_finished_validation(self) -> None:
        """A validation split replays from its first step again after a complete pass: every
        evaluation sees the same batches in the same order."""
        if self.split == "validation" and self._next_step >= self.steps:
            self._next_step, self._stride = 0, 1

    def _advance(self, step: int, workers: int) -> None:
        self._next_step, self._stride = step + workers, workers

    def _open_runtime(self) -> Replay:
        if self._runtime is None:
            self._runtime = Replay(self._config)
        return self._runtime

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_runtime"] = None  # open files and maps are rebuilt in each worker
        return state

    # -- loading ---------------------------------------------------------------------------------
    collate = staticmethod(collate_sequences)  # what default_collate does with our sequences too

    def loader(self, num_workers: int = 0, **kwargs: Any) -> PlanLoader:
        """A DataLoader that yields this rank's steps in plan order and keeps ``state_dict`` current.

        Each step crosses from a worker as one compact object and becomes its batch in this process
        (runtime/batches.py). A ``collate_fn`` of yours gets the step's sequences instead.
        """
        if self.output == "tokens" and "collate_fn" in kwargs:
            return PlanLoader(self, batch_size=self.batch_size, num_workers=num_workers, **kwargs)
        source = _CompactSteps(self) if self.output == "tokens" else self
        kwargs.setdefault("collate_fn", collate_step)  # the default would walk every document dict
        return PlanLoader(source, batch_size=None, num_workers=num_workers, **kwargs)


class _CompactSteps(IterableDataset):
    """A PlanDataset's steps as compact objects (what PlanLoader's workers ship)."""

    def __init__(self, dataset: PlanDataset) -> None:
        super().__init__()
        self.dataset = dataset

    def __iter__(self) -> Iterator[PackedStep | StepDocuments]:
        return self.dataset.compact_steps()


def _step_of(batch: Any) -> int | None:
    if isinstance(batch, StepDocuments):
        return batch.step
    if isinstance(batch, dict):
        return int(batch["step"][0])
    return int(batch[0]["step"]) if batch else None


class PlanLoader(DataLoader):
    """DataLoader that tells its PlanDataset which step each yielded batch was."""

    def __init__(self, dataset: PlanDataset | _CompactSteps, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.plan_dataset = dataset.dataset if isinstance(dataset, _CompactSteps) else dataset

    def __iter__(self) -> Iterator[Any]:
        self.plan_dataset.rewind_finished_validation()  # before the workers get their copies
        for batch in super().__iter__():
            step = _step_of(batch)
            if step is not None:
                self.plan_dataset.mark_consumed(step)
            yield batch

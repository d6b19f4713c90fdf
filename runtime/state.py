"""The runtime's resumable state: where a rank (or one loader worker) stands in its plan.

A state names the plan fingerprint, world size, rank, tokenizer and output it belongs to, so a
checkpoint can never resume a different plan or topology silently. ``stride`` tells whose position
it is: 1 for a rank's position as the training loop consumed it (every step before ``next_step``
was consumed), ``w`` for the position of one of ``w`` loader workers (as torchdata's
StatefulDataLoader saves per worker; that worker continues with steps ``next_step, next_step + w``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from mixtera.runtime.errors import StateError

STATE_KIND = "mixtera-runtime-state"
STATE_VERSION = 1
_ELASTIC = (
    "to resume with another world size, re-partition the plan with `mixtera compile MIXTURE.toml "
    "--out NEW --from-plan OLD --from-step S --world-size M` and resume at step S from NEW"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeState:
    plan_fingerprint: str
    world_size: int
    rank: int
    tokenizer_blake2b: str | None
    output: str
    next_step: int
    stride: int = 1
    worker: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": STATE_KIND, "version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, state: Any) -> RuntimeState:
        if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
            raise StateError(
                "the given state is not a mixtera runtime state",
                "pass what PlanDataset.state_dict() returned",
            )
        if state.get("version") != STATE_VERSION:
            raise StateError(
                f"runtime state version {state.get('version')!r}, this mixtera reads {STATE_VERSION}",
                "resume with the mixtera version that saved it",
            )
        fields = {k: state[k] for k in cls.__slots__ if k in state}
        try:
            return cls(**fields)
        except TypeError as exc:
            raise StateError(f"runtime state is incomplete ({exc})", "pass a complete state_dict()") from None

    def check_matches(self, current: RuntimeState) -> None:
        """Refuse a state saved for another plan, topology, tokenizer or output."""
        if self.plan_fingerprint != current.plan_fingerprint:
            raise StateError(
                f"the state belongs to plan {self.plan_fingerprint}, this dataset replays plan "
                f"{current.plan_fingerprint}",
                "resume with the plan the checkpoint was trained on; " + _ELASTIC,
            )
        if self.world_size != current.world_size:
            raise StateError(
                f"the state was saved with world size {self.world_size}, this job has {current.world_size}",
                _ELASTIC,
            )
        if self.rank != current.rank:
            raise StateError(
                f"the state is rank {self.rank}'s, this dataset is rank {current.rank}",
                "load each rank's own data state (save one per rank)",
            )
        if self.tokenizer_blake2b != current.tokenizer_blake2b:
            raise StateError(
                f"the state was saved with tokenizer {self.tokenizer_blake2b}, this dataset "
                f"uses {current.tokenizer_blake2b}",
                "resume with the same tokenizer",
            )
        if self.output != current.output:
            raise StateError(
                f"the state is for output={self.output!r}, this dataset has output={current.output!r}",
                "use the same output kind",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class ElasticOrigin:
    """Where a plan compiled with ``--from-plan OLD --from-step S --world-size M`` came from: such a
    plan accepts a state of OLD (any of OLD's ranks) whose position is step S, so a job resumes with
    another world size exactly where the old one stopped."""

    from_plan: str  # OLD's fingerprint
    from_step: int  # S
    old_world_size: int

    @classmethod
    def of_manifest(cls, manifest: dict[str, Any]) -> ElasticOrigin | None:
        elastic = manifest.get("elastic")
        if not elastic:
            return None
        return cls(from_plan=elastic["from_plan"], from_step=int(elastic["from_step"]),
                   old_world_size=int(elastic["old_world_size"]))

    def check(self, state: RuntimeState, current: RuntimeState) -> None:
        """Refuse ``state`` unless it is a state of OLD (topology, tokenizer, output) at step S."""
        if not 0 <= state.rank < self.old_world_size:
            raise StateError(
                f"the state is rank {state.rank}'s, plan {self.from_plan} has {self.old_world_size} ranks",
                "pass a data state the old job saved",
            )
        old = replace(current, plan_fingerprint=self.from_plan, world_size=self.old_world_size,
                      rank=state.rank)
        state.check_matches(old)
        # A rank state (stride 1) is at S exactly; a loader worker's state (stride w) holds the first
        # step >= S of that worker, which is one of S .. S + w - 1.
        if not self.from_step <= state.next_step < self.from_step + state.stride:
            at = "at step" if state.stride == 1 else f"of a worker ({state.stride} workers) at step"
            raise StateError(
                f"the state of plan {self.from_plan} is {at} {state.next_step}, this plan re-partitions "
                f"it from step {self.from_step} (--from-step {self.from_step})",
                f"load the data state saved at step {self.from_step}, or recompile with "
                f"`mixtera compile MIXTURE.toml --out NEW --from-plan OLD --from-step {state.next_step} "
                f"--world-size {current.world_size}`",
            )

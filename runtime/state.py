"""The runtime's resumable state: where a rank (or one loader worker) stands in its plan.

A state names the plan fingerprint, world size, rank, tokenizer and output it belongs to, so a
checkpoint can never resume a different plan or topology silently. ``stride`` tells whose position
it is: 1 for a rank's position as the training loop consumed it (every step before ``next_step``
was consumed), ``w`` for the position of one of ``w`` loader workers (as torchdata's
StatefulDataLoader saves per worker; that worker continues with steps ``next_step, next_step + w``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
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
    # Published decisions the steps before ``next_step`` were replayed under: version -> digest of
    # its decision.json. A plan whose decisions are gone or differ (recompiled onto the same folder)
    # is refused on resume instead of replaying other data under the same fingerprint.
    decisions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": STATE_KIND, "version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, state: Any) -> RuntimeState:
        if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
            raise StateError(
                "the given state is not a mixtera runtime state",
                "pass what PlanDataset.state_dict() returned",
            )
        if type(state.get("version")) is not int or state.get("version") != STATE_VERSION:
            raise StateError(
                f"runtime state version {state.get('version')!r}, this mixtera reads {STATE_VERSION}",
                "resume with the mixtera version that saved it",
            )
        missing = [f.name for f in fields(cls) if f.name not in state and f.name not in _OPTIONAL]
        if missing:
            raise StateError(f"runtime state is incomplete: {', '.join(missing)} missing",
                             "pass a complete state_dict()")
        values = {f.name: state[f.name] for f in fields(cls) if f.name in state}
        for name, value in values.items():
            _check_field(name, value)
        return cls(**values)

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


_OPTIONAL = ("stride", "worker", "decisions")
_COUNTS = {"world_size": 1, "stride": 1, "rank": 0, "next_step": 0, "worker": 0}  # name -> minimum


def _check_field(name: str, value: Any) -> None:
    """Refuse a field of the wrong type or range (a checkpoint edited or written by other code)."""
    if name in _COUNTS:
        ok = type(value) is int and value >= _COUNTS[name]
        want = f"an integer >= {_COUNTS[name]}"
    elif name == "tokenizer_blake2b":
        ok, want = value is None or isinstance(value, str), "a string or None"
    elif name == "decisions":
        ok = isinstance(value, dict) and all(isinstance(k, str) and k.isdigit() and isinstance(v, str)
                                              for k, v in value.items())
        want = "a mapping of version numbers (strings) to digests (strings)"
    else:
        ok, want = isinstance(value, str), "a string"
    if not ok:
        raise StateError(f"runtime state field {name!r} is {value!r} ({type(value).__name__}), not {want}",
                         "pass what PlanDataset.state_dict() returned, unchanged")


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

"""Mixture specs: the dataclasses, their validation, and the TOML reader (see man/mixtera-compile.md).

Every error names the file and the TOML key path, states the constraint and gives a hint.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtera.planner.mixture.toml_reader import parse_toml, read_config_text
from mixtera.planner.mixture.where import parse
from mixtera.runtime.errors import ConfigError

UNITS = ("tokens", "samples")
ON_EXHAUSTED = ("repeat", "error", "redistribute")
OVERLAP = ("error", "first")
ALGORITHMS = ("ado", "loss_proportional", "static")
NATURAL = "natural"
Weight = float | str  # a positive number or "natural"
WEIGHT_TOLERANCE = 1e-9


def fail(file: str, key: str, message: str, hint: str | None = None) -> ConfigError:
    return ConfigError(f"{file}: {key}: {message}" if key else f"{file}: {message}", hint)


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    world_size: int
    batch_size: int
    seq_len: int = 0  # tokens per sequence; 0 with unit = "samples"

    def validate(self, *, unit: str, file: str = "<spec>") -> None:
        for name in ("world_size", "batch_size"):
            if getattr(self, name) < 1:
                raise fail(file, f"topology.{name}", f"must be >= 1, got {getattr(self, name)}")
        if unit == "tokens" and self.seq_len < 1:
            raise fail(file, "topology.seq_len", f"must be >= 1 with unit = 'tokens', got {self.seq_len}",
                       "set seq_len to the model's context length, e.g. 2048")
        for name in ("world_size", "batch_size", "seq_len"):
            check_u32(getattr(self, name), file, f"topology.{name}")

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    def step_units(self, unit: str) -> int:
        """Units (tokens or samples) in one global step."""
        return self.global_batch * (self.seq_len if unit == "tokens" else 1)

    def to_dict(self) -> dict[str, int]:
        return {"world_size": self.world_size, "batch_size": self.batch_size, "seq_len": self.seq_len}


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentSpec:
    """One node of the component tree; leaves are the mixture's domains."""

    name: str  # dotted path from the root, e.g. "other.de"
    where: str | None = None
    weight: Weight = 1.0
    on_exhausted: str = "repeat"
    normalize: bool = False  # scale the children's explicit weights to sum to 1
    children: tuple[ComponentSpec, ...] = ()
    key: str = ""  # TOML key path, for errors

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def validate(self, *, file: str = "<spec>") -> None:
        check_weight(self.weight, file, f"{self.key}.weight")
        if self.where is not None:  # syntax only; properties are checked against the index later
            parse(self.where, f"{file}: {self.key}.where")
        if self.on_exhausted not in ON_EXHAUSTED:
            raise fail(file, f"{self.key}.on_exhausted", f"unknown value {self.on_exhausted!r}",
                       f"use one of {', '.join(ON_EXHAUSTED)}")
        for child in self.children:
            child.validate(file=file)
        if self.children:
            check_level({c.name.rsplit(".", 1)[-1]: c.weight for c in self.children}, self.normalize,
                        file, f"{self.key}.components")

    def leaves(self) -> list[ComponentSpec]:
        return [self] if self.is_leaf else [leaf for c in self.children for leaf in c.leaves()]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "where": self.where, "weight": self.weight,
                               "on_exhausted": self.on_exhausted}
        if self.children:
            out["normalize"] = self.normalize
            out["components"] = [c.to_dict() for c in self.children]
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleStage:
    from_step: int
    ramp_steps: int = 0
    weights: dict[str, Weight] = field(default_factory=dict)  # component path -> weight
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"from_step": self.from_step, "ramp_steps": self.ramp_steps,
                "weights": dict(sorted(self.weights.items()))}


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationSpec:
    """The ``[validation]`` table: a fixed held-out amount per component, replayed as its own plan."""

    per_component: int  # tokens (unit = "tokens") or samples (unit = "samples") per leaf component
    batch_size: int  # sequences (or samples) per rank and step
    key: str = "validation"  # the TOML key of ``per_component``, for errors

    def validate(self, file: str) -> None:
        for name, value in (("per_component", self.per_component), ("batch_size", self.batch_size)):
            if value < 1:
                key = self.key if name == "per_component" else "validation.batch_size"
                raise fail(file, key, f"must be >= 1, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return {"per_component": self.per_component, "batch_size": self.batch_size}


@dataclass(frozen=True, slots=True, kw_only=True)
class MixtureSpec:
    index: Path
    seed: int
    unit: str
    steps: int
    segment_steps: int
    topology: Topology
    components: tuple[ComponentSpec, ...]
    schedule: tuple[ScheduleStage, ...] = ()
    dynamic: dict[str, Any] | None = None
    overlap: str = "error"
    normalize: bool = False
    validation: ValidationSpec | None = None
    image_tokens: int | None = None  # unit = "tokens": positions one image takes in a sequence
    source: str = "<spec>"  # the TOML file, for errors

    def validate(self) -> None:
        f = self.source
        if self.unit not in UNITS:
            raise fail(f, "mixture.unit", f"unknown unit {self.unit!r}", f"use one of {', '.join(UNITS)}")
        if self.overlap not in OVERLAP:
            raise fail(f, "mixture.overlap", f"unknown value {self.overlap!r}",
                       f"use one of {', '.join(OVERLAP)}")
        for name in ("steps", "segment_steps"):
            if getattr(self, name) < 1:
                raise fail(f, f"mixture.{name}", f"must be >= 1, got {getattr(self, name)}")
        check_u32(self.segment_steps, f, "mixture.segment_steps")
        segments = -(-self.steps // self.segment_steps)
        check_u32(segments, f, "mixture.steps", "segments (steps / segment_steps)")
        if not 0 <= self.seed < 2**63:
            raise fail(f, "mixture.seed", f"must be in [0, 2**63), got {self.seed}")
        self.topology.validate(unit=self.unit, file=f)
        self._validate_image_tokens()
        if not self.components:
            raise fail(f, "components", "the mixture has no components",
                       "add [components.NAME] tables with `where` and `weight`")
        for c in self.components:
            c.validate(file=f)
        check_level({c.name: c.weight for c in self.components}, self.normalize, f, "components")
        self.validate_schedule()
        if self.validation is not None:
            self.validation.validate(f)
        if self.dynamic is not None:
            algo = self.dynamic.get("algorithm")
            if algo not in ALGORITHMS:
                raise fail(f, "dynamic.algorithm", f"unknown algorithm {algo!r}",
                           f"use one of {', '.join(ALGORITHMS)}")
            # every other [dynamic] key (man/mixtera-feedback.md)
            from mixtera.planner.mixture.dynamic import parse_dynamic, prior_weights

            dyn = parse_dynamic(self.dynamic, f"{f}: [dynamic]", self.segment_steps)
            if dyn is not None and isinstance(dyn.prior, dict):
                prior_weights(dyn.prior, [leaf.name for leaf in self.leaves()], f"{f}: [dynamic] prior")

    def validate_schedule(self) -> None:
        f, nodes, prev_end = self.source, self.nodes(), 0
        for stage in self.schedule:
            if stage.from_step < prev_end or stage.from_step >= self.steps:
                raise fail(f, f"{stage.key}.from_step",
                           f"{stage.from_step} must be in [{prev_end}, {self.steps}) (after the previous "
                           "stage and its ramp, before the plan's last step)",
                           "order [[schedule]] entries by from_step and keep them inside `steps`")
            if stage.ramp_steps < 0 or stage.from_step + stage.ramp_steps > self.steps:
                raise fail(f, f"{stage.key}.ramp_steps", f"{stage.ramp_steps} must be >= 0 and end by "
                           f"step {self.steps}", "shorten the ramp")
            for name, w in stage.weights.items():
                if name not in nodes:
                    close = difflib.get_close_matches(name, sorted(nodes), n=1)
                    guess = f"did you mean {close[0]!r}? " if close else ""
                    raise fail(f, f"{stage.key}.weights.{name}", f"unknown component {name!r}",
                               f"{guess}components are: {', '.join(sorted(nodes))}")
                check_weight(w, f, f"{stage.key}.weights.{name}")
            prev_end = stage.from_step + max(stage.ramp_steps, 1)
            for parent, level in self.levels(self.stage_weights(stage)).items():
                key = f"{stage.key}.weights" + (f" (children of {parent})" if parent else "")
                check_level(level, self.normalize or (parent in nodes and nodes[parent].normalize), f, key)

    def nodes(self) -> dict[str, ComponentSpec]:
        out: dict[str, ComponentSpec] = {}
        stack = list(self.components)
        while stack:
            node = stack.pop()
            out[node.name] = node
            stack.extend(node.children)
        return out

    def path_nodes(self, name: str) -> list[ComponentSpec]:
        """The nodes from the top level down to ``name`` (a dotted component path)."""
        nodes, parts = self.nodes(), name.split(".")
        return [nodes[".".join(parts[: i + 1])] for i in range(len(parts))]

    def leaves(self) -> list[ComponentSpec]:
        """Leaf components in spec order: their position is the component id of the plan."""
        return [leaf for c in self.components for leaf in c.leaves()]

    def base_weights(self) -> dict[str, Weight]:
        return {name: node.weight for name, node in self.nodes().items()}

    def stage_weights(self, upto: ScheduleStage | None) -> dict[str, Weight]:
        """Node weights in effect once ``upto`` has fully ramped in (``None``: the base weights)."""
        weights = self.base_weights()
        for stage in self.schedule:
            weights.update(stage.weights)
            if stage is upto:
                break
        return weights

    def levels(self, weights: dict[str, Weight]) -> dict[str, dict[str, Weight]]:
        """``{parent path ('' for the root): {child local name: weight}}``."""
        out: dict[str, dict[str, Weight]] = {}
        for name, w in weights.items():
            parent, _, local = name.rpartition(".")
            out.setdefault(parent, {})[local] = w
        return out

    def _validate_image_tokens(self) -> None:
        if self.image_tokens is None:
            return
        if self.unit != "tokens":
            raise fail(self.source, "mixture.image_tokens", "only applies with unit = 'tokens'",
                       "remove it, or set unit = \"tokens\" (a sample then counts its text tokens plus "
                       "images * image_tokens)")
        if self.image_tokens < 1:
            raise fail(self.source, "mixture.image_tokens", f"must be >= 1, got {self.image_tokens}",
                       "the number of positions the vision encoder gives one image, e.g. 576")
        if self.image_tokens > self.topology.seq_len:
            raise fail(self.source, "mixture.image_tokens",
                       f"{self.image_tokens} does not fit in one sequence of seq_len = "
                       f"{self.topology.seq_len}",
                       "an image is never split across sequences: use a larger seq_len")

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec, canonical (recorded in the plan and hashed into its fingerprint)."""
        return {"index": str(self.index), "seed": self.seed, "unit": self.unit, "steps": self.steps,
                "segment_steps": self.segment_steps, "topology": self.topology.to_dict(),
                "overlap": self.overlap, "normalize": self.normalize,
                "components": [c.to_dict() for c in self.components],
                "schedule": [s.to_dict() for s in self.schedule], "dynamic": self.dynamic,
                # only when set, so that plans without [validation] keep their fingerprints
                **({"validation": self.validation.to_dict()} if self.validation else {}),
                **({"image_tokens": self.image_tokens} if self.image_tokens is not None else {})}


U32_MAX = 2**32 - 1  # rank files store ranks, world size, segment lengths and counts in 32 bits


def check_u32(value: int, file: str, key: str, what: str = "it") -> None:
    if value > U32_MAX:
        raise fail(file, key, f"{what} must be at most {U32_MAX:,} (what plan files hold), got {value:,}",
                   "check the value: it is far beyond any real training run")


def check_weight(w: Any, file: str, key: str) -> None:
    if w == NATURAL:
        return
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
        raise fail(file, key, f"weight must be a number > 0 or \"natural\", got {w!r}",
                   "drop the component instead of giving it weight 0, or use a schedule")


def check_level(level: dict[str, Weight], normalize: bool, file: str, key: str) -> None:
    explicit = {n: float(w) for n, w in level.items() if w != NATURAL}
    total = sum(explicit.values())
    if not math.isfinite(total):
        raise fail(file, key, f"weights {', '.join(f'{n}={w:g}' for n, w in explicit.items())} sum beyond "
                   "the float64 range", "scale them down: with `normalize = true` only their ratios matter")
    naturals = len(level) - len(explicit)
    if naturals and total >= 1 - WEIGHT_TOLERANCE and explicit:
        raise fail(file, key, f"explicit weights sum to {total:g}, leaving nothing for the \"natural\" "
                   f"components ({', '.join(n for n in level if level[n] == NATURAL)})",
                   "make the explicit weights sum to less than 1")
    if not naturals and not normalize and abs(total - 1) > WEIGHT_TOLERANCE:
        raise fail(file, key, f"weights {', '.join(f'{n}={w:g}' for n, w in explicit.items())} sum to "
                   f"{total:g}, not 1", "fix the weights, or set `normalize = true` to scale them")


# -- TOML -------------------------------------------------------------------------------------------
_MIXTURE_KEYS = {"index", "seed", "unit", "steps", "segment_steps", "overlap", "normalize", "on_exhausted",
                 "image_tokens"}
_TOPOLOGY_KEYS = {"world_size", "batch_size", "seq_len"}
_COMPONENT_KEYS = {"where", "weight", "on_exhausted", "normalize", "components"}
_SCHEDULE_KEYS = {"from_step", "ramp_steps", "weights"}
_TOP_KEYS = {"mixture", "topology", "components", "schedule", "dynamic", "validation"}
_VALIDATION_KEYS = {"tokens_per_component", "samples_per_component", "batch_size"}


class _Reader:
    """Typed access to one TOML table with key paths and unknown-key detection."""

    def __init__(self, file: str) -> None:
        self.file = file

    def table(self, value: Any, key: str, allowed: set[str] | None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise fail(self.file, key, f"must be a table, got {type(value).__name__}")
        for k in value if allowed is not None else ():
            if k not in allowed:
                close = difflib.get_close_matches(k, sorted(allowed), n=1)
                guess = f"did you mean {close[0]!r}? " if close else ""
                raise fail(self.file, f"{key}.{k}" if key else k, "unknown key",
                           f"{guess}allowed keys: {', '.join(sorted(allowed))}")
        return value

    def get(self, table: dict[str, Any], key: str, name: str, kind: type | tuple[type, ...],
            default: Any = ..., *, required_hint: str | None = None) -> Any:
        if name not in table:
            if default is ...:
                raise fail(self.file, f"{key}.{name}", "is required", required_hint)
            return default
        value = table[name]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise fail(self.file, f"{key}.{name}", f"must be {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise fail(self.file, f"{key}.{name}", f"must be {_kind_name(kind)}, got {value!r}")
        return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_spec(path: Path | str) -> MixtureSpec:
    """Read and validate a mixture TOML file; paths in it are relative to the file."""
    path = Path(path)
    return parse_spec(read_config_text(path, "mixture file"), file=str(path), base=path.parent)


def parse_spec(text: str, *, file: str = "<string>", base: Path | None = None) -> MixtureSpec:
    doc = parse_toml(text, file)
    spec = _build(doc, _Reader(file), base or Path.cwd())
    spec.validate()
    return spec


def _build(doc: dict[str, Any], r: _Reader, base: Path) -> MixtureSpec:
    r.table(doc, "", _TOP_KEYS)
    mix = r.table(doc.get("mixture", {}), "mixture", _MIXTURE_KEYS)
    topo = r.table(doc.get("topology", {}), "topology", _TOPOLOGY_KEYS)
    index = r.get(mix, "mixture", "index", str, required_hint="index = \"path/to/index\" (relative to "
                  "this file)")
    unit = r.get(mix, "mixture", "unit", str, "tokens")
    default_exhausted = r.get(mix, "mixture", "on_exhausted", str, "repeat")
    schedule_raw = doc.get("schedule", [])
    if not isinstance(schedule_raw, list):
        raise fail(r.file, "schedule", "must be an array of tables", "write [[schedule]] blocks")
    dynamic = doc.get("dynamic")
    if dynamic is not None:
        dynamic = dict(r.table(dynamic, "dynamic", None))
    return MixtureSpec(
        index=(base / index).resolve(), source=r.file, unit=unit,
        seed=r.get(mix, "mixture", "seed", int, 0),
        steps=r.get(mix, "mixture", "steps", int, required_hint="steps = number of optimizer steps"),
        segment_steps=r.get(mix, "mixture", "segment_steps", int, 100),
        overlap=r.get(mix, "mixture", "overlap", str, "error"),
        normalize=r.get(mix, "mixture", "normalize", bool, False),
        topology=Topology(
            world_size=r.get(topo, "topology", "world_size", int, required_hint="world_size = ranks"),
            batch_size=r.get(topo, "topology", "batch_size", int, required_hint="batch_size = per rank"),
            seq_len=r.get(topo, "topology", "seq_len", int, 0)),
        components=_components(doc.get("components"), "components", "", default_exhausted,
                               r.get(mix, "mixture", "normalize", bool, False), r),
        schedule=tuple(_stage(s, f"schedule[{i}]", r) for i, s in enumerate(schedule_raw)),
        dynamic=dynamic,
        validation=_validation(doc.get("validation"), unit, r),
        image_tokens=r.get(mix, "mixture", "image_tokens", int, None))


def _validation(raw: Any, unit: str, r: _Reader) -> ValidationSpec | None:
    if raw is None:
        return None
    body = r.table(raw, "validation", _VALIDATION_KEYS)
    wanted = "samples_per_component" if unit == "samples" else "tokens_per_component"
    other = "tokens_per_component" if unit == "samples" else "samples_per_component"
    if other in body:
        raise fail(r.file, f"validation.{other}", f"does not fit unit = {unit!r}",
                   f"hold out an amount in the plan's unit: {wanted} = N")
    return ValidationSpec(
        per_component=r.get(body, "validation", wanted, int, required_hint=f"{wanted} = N (per component)"),
        batch_size=r.get(body, "validation", "batch_size", int, required_hint="batch_size = per rank"),
        key=f"validation.{wanted}")


def _components(raw: Any, key: str, prefix: str, inherited: str, normalize: bool,
                r: _Reader) -> tuple[ComponentSpec, ...]:
    if raw is None:
        return ()
    table = r.table(raw, key, None)
    out = []
    for name, body in table.items():
        ckey = f"{key}.{name}"
        body = r.table(body, ckey, _COMPONENT_KEYS)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise fail(r.file, ckey, f"component name {name!r} may only hold letters, digits, _ and -")
        weight = r.get(body, ckey, "weight", (int, float, str), 1.0 if len(table) == 1 else ...,
                       required_hint="weight = a number > 0, or \"natural\"")
        if isinstance(weight, str) and weight != NATURAL:
            raise fail(r.file, f"{ckey}.weight", f"unknown weight {weight!r}",
                       "use a number > 0 or \"natural\"")
        exhausted = r.get(body, ckey, "on_exhausted", str, inherited)
        path = f"{prefix}{name}"
        norm = r.get(body, ckey, "normalize", bool, normalize)
        children = _components(body.get("components"), f"{ckey}.components", f"{path}.", exhausted,
                               normalize, r)
        where = r.get(body, ckey, "where", str, None)
        out.append(ComponentSpec(name=path, where=where, weight=weight, on_exhausted=exhausted,
                                 normalize=norm,
                                 children=children, key=ckey))
    return tuple(out)


def _stage(raw: Any, key: str, r: _Reader) -> ScheduleStage:
    body = r.table(raw, key, _SCHEDULE_KEYS)
    weights = r.get(body, key, "weights", dict, required_hint="weights = { component = weight, ... }")
    return ScheduleStage(from_step=r.get(body, key, "from_step", int, required_hint="from_step = N"),
                         ramp_steps=r.get(body, key, "ramp_steps", int, 0),
                         weights=_flatten(weights, ""), key=key)


def _flatten(weights: dict[str, Any], prefix: str) -> dict[str, Weight]:
    """``{other = {de = 0.5}}`` and ``{"other.de" = 0.5}`` both name component ``other.de``."""
    out: dict[str, Weight] = {}
    for name, w in weights.items():
        if isinstance(w, dict):
            out.update(_flatten(w, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = w
    return out

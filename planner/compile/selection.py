"""Match the spec's leaf components against an index and resolve their weights.

A leaf's filter is the `and` of the `where` of every node on its path. Leaves must be disjoint
unless ``overlap = "first"`` (then a sample belongs to the first leaf, in spec order, that matches).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from mixtera.planner.index import IndexTables
from mixtera.planner.mixture.spec import NATURAL, ComponentSpec, MixtureSpec, Weight
from mixtera.planner.mixture.where import parse, referenced, where_mask
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.tokenizer import framing_tokens

# Reserved columns a `where` may also use, with their property types (media columns: indexes >= 1.1).
FILTER_COLUMNS = {"tokens": "int", "text_bytes": "int"}
MEDIA_FILTER_COLUMNS = {"key": "string", "images": "int", "image_width": "int", "image_height": "int"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """The samples of every leaf (index rows, ascending) and their spans in the plan's unit."""

    names: tuple[str, ...]
    rows: tuple[np.ndarray, ...]
    spans: tuple[np.ndarray, ...]  # tokens (+1 with eos, +1 with bos, + images * image_tokens) or 1
    dropped: tuple[int, ...]  # members left out because they hold no token
    whole: tuple[bool, ...] = ()  # per leaf (unit = tokens): its members hold images, never cut

    def sizes(self) -> np.ndarray:
        return np.array([int(s.sum()) for s in self.spans], dtype=np.int64)


def schema_of(index: IndexTables) -> dict[str, str]:
    schema = dict(index.properties)
    schema.update(FILTER_COLUMNS)
    schema.update({c: t for c, t in MEDIA_FILTER_COLUMNS.items() if c in index.samples.column_names})
    return schema


def select(spec: MixtureSpec, index: IndexTables) -> Selection:
    leaves = spec.leaves()
    tokens = _token_spans(spec, index)
    images = _images(index) if tokens is not None else None
    raw = [_match(spec, leaf, index) for leaf in leaves]
    matched = _resolve_overlap(spec, leaves, raw, index.samples.num_rows)
    rows, spans, dropped, whole = [], [], [], []
    for leaf, m, r in zip(leaves, matched, raw, strict=True):
        if r.size and not m.size:
            raise ConfigError(f"{spec.source}: component {leaf.name!r} gets no sample: all {r.size} samples "
                              "it matches belong to earlier components (overlap = \"first\")",
                              "move it before the components that claim its samples, or narrow theirs")
        span = tokens[m] if tokens is not None else np.ones(m.size, np.int64)
        has_images = images is not None and bool(np.count_nonzero(images[m]))
        if has_images:
            assert images is not None
            span = span + images[m] * _image_tokens(spec, leaf, images[m])
            _check_fits(spec, leaf, span)
        whole.append(has_images)
        keep = span > 0
        rows.append(m[keep])
        spans.append(span[keep])
        dropped.append(int((~keep).sum()))
        if not keep.any():
            raise _empty(spec, leaf, index, m.size)
    return Selection(names=tuple(leaf.name for leaf in leaves), rows=tuple(rows), spans=tuple(spans),
                     dropped=tuple(dropped), whole=tuple(whole) if any(whole) else ())


def _token_spans(spec: MixtureSpec, index: IndexTables) -> np.ndarray | None:
    if spec.unit != "tokens":
        return None
    col = index.samples.column("tokens")
    tokenizer = index.manifest.get("tokenizer")
    if tokenizer is None or col.null_count == len(col):
        raise ConfigError(f"{spec.source}: mixture.unit: unit = 'tokens' needs token counts, and the index "
                          f"{index.path} has none (it was built without a tokenizer)",
                          "re-index with a tokenizer (`tokenizer = \"tokenizer.json\"` under [index] in "
                          "the index config), or use unit = \"samples\"")
    return pc.fill_null(col, 0).to_numpy().astype(np.int64) + framing_tokens(tokenizer)


def _images(index: IndexTables) -> np.ndarray | None:
    """Images per sample (indexes before format 1.1 have no `images` column: no images)."""
    if "images" not in index.samples.column_names:
        return None
    return pc.fill_null(index.samples.column("images"), 0).to_numpy().astype(np.int64)


def _image_tokens(spec: MixtureSpec, leaf: ComponentSpec, images: np.ndarray) -> int:
    """What one image costs: a token plan over image-text samples needs ``[mixture] image_tokens``."""
    if spec.image_tokens is None:
        raise ConfigError(f"{spec.source}: mixture.image_tokens: component {leaf.name!r} matches "
                          f"{int(np.count_nonzero(images))} samples with images, and unit = 'tokens' needs "
                          "to know what an image costs",
                          "set image_tokens = N under [mixture]: the positions the vision encoder gives one "
                          "image (576 for a LLaVA-style 24x24 patch grid), or use unit = \"samples\"")
    return spec.image_tokens


def _check_fits(spec: MixtureSpec, leaf: ComponentSpec, span: np.ndarray) -> None:
    """Image-text samples are packed whole: every one must fit one sequence."""
    seq_len = spec.topology.seq_len
    over = int(np.count_nonzero(span > seq_len))
    if over:
        raise ConfigError(f"{spec.source}: component {leaf.name!r}: {over} image-text samples span more "
                          f"than seq_len = {seq_len} tokens (the longest {int(span.max())}: text, end-of-"
                          f"text and images x image_tokens = {spec.image_tokens}); a sample is never cut "
                          "across sequences",
                          "raise [topology] seq_len, lower [mixture] image_tokens, or leave the long samples "
                          "out with `where = \"tokens <= N\"` on the component")


def _match(spec: MixtureSpec, leaf: ComponentSpec, index: IndexTables) -> np.ndarray:
    """Rows matching every ``where`` on the path to ``leaf`` (evaluated as masks: see where_mask)."""
    n = index.samples.num_rows
    wheres = [node for node in spec.path_nodes(leaf.name) if node.where is not None]
    if not wheres:
        return np.arange(n, dtype=np.int64)
    schema = schema_of(index)
    columns = list(dict.fromkeys(name for node in wheres for name in referenced(parse(node.where))))
    table = index.samples.select([c for c in columns if c in schema])
    mask = None
    for node in wheres:
        m = where_mask(node.where, schema, table, f"{spec.source}: {node.key}.where")
        mask = m if mask is None else pc.and_kleene(mask, m)
    keep = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)  # type: ignore[union-attr]
    return np.flatnonzero(keep).astype(np.int64)


def _resolve_overlap(spec: MixtureSpec, leaves: list[ComponentSpec], matched: list[np.ndarray],
                     n: int) -> list[np.ndarray]:
    owner = np.full(n, -1, np.int64)
    out = []
    for k, m in enumerate(matched):
        taken = owner[m] >= 0
        if taken.any() and spec.overlap == "error":
            other = leaves[int(owner[m[taken]][0])].name
            raise ConfigError(f"{spec.source}: components {other!r} and {leaves[k].name!r} overlap: "
                              f"{int(taken.sum())} samples match both "
                              f"({int(np.count_nonzero(owner >= 0))} are claimed before {leaves[k].name!r})",
                              "make the `where` expressions disjoint, or set overlap = \"first\" under "
                              "[mixture] to give each sample to the first component that matches")
        m = m[~taken]
        owner[m] = k
        out.append(m)
    return out


def _empty(spec: MixtureSpec, leaf: ComponentSpec, index: IndexTables, matched: int) -> ConfigError:
    if matched:
        return ConfigError(f"{spec.source}: component {leaf.name!r} matches {matched} samples, all with 0 "
                           "tokens", "check its `where` expression")
    hints = []
    for node_where in (leaf.where,) if leaf.where else ():
        for name in referenced(parse(node_where)):
            if name in index.properties and index.properties[name] == "string":
                top = Counter(v for v in index.samples.column(name).to_pylist() if v is not None)
                values = ", ".join(repr(v) for v, _ in top.most_common(8))
                hints.append(f"{name} takes values {values}")
    hint = "; ".join(hints) if hints else "check its `where` expression with `mixtera inspect INDEX`"
    return ConfigError(f"{spec.source}: component {leaf.name!r} matches no sample "
                       f"(where {leaf.where!r})", f"the index has: {hint}" if hints else hint)


def leaf_weights(spec: MixtureSpec, node_weights: dict[str, Weight], sizes: np.ndarray) -> np.ndarray:
    """Leaf weights (summing to 1) from node weights; "natural" shares follow the data ``sizes``."""
    leaves = spec.leaves()
    size_of = {leaf.name: int(s) for leaf, s in zip(leaves, sizes, strict=True)}

    def subtree_size(node: ComponentSpec) -> int:
        return sum(size_of[leaf.name] for leaf in node.leaves())

    def level(nodes: tuple[ComponentSpec, ...], scale: float, normalize: bool) -> dict[str, float]:
        explicit = {n.name: float(node_weights[n.name]) for n in nodes if node_weights[n.name] != NATURAL}
        naturals = [n for n in nodes if node_weights[n.name] == NATURAL]
        total = sum(explicit.values())
        if not naturals and normalize and total > 0:
            explicit = {k: v / total for k, v in explicit.items()}
        rest = max(0.0, 1.0 - sum(explicit.values()))
        nat_total = sum(subtree_size(n) for n in naturals)
        out: dict[str, float] = {}
        for n in nodes:
            share = explicit[n.name] if n.name in explicit else rest * subtree_size(n) / nat_total
            if n.children:
                out.update(level(n.children, scale * share, n.normalize))
            else:
                out[n.name] = scale * share
        return out

    weights = level(spec.components, 1.0, spec.normalize)
    return np.array([weights[leaf.name] for leaf in leaves], dtype=np.float64)

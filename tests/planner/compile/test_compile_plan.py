"""The compiler's guarantees, checked on decoded plans: exact steps, contiguous streams, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mixtera.planner.compile.packing import PlanState, plan_steps
from mixtera.planner.compile.pipeline import compile_file
from mixtera.planner.compile.plan_arrays import compile_plan
from mixtera.planner.index import load_index
from mixtera.planner.mixture.spec import load_spec
from mixtera.runtime.errors import ConfigError, PlanError
from mixtera.runtime.plan import Plan
from mixtera.runtime.shuffle import permute
from tests.helpers.plan_checks import (
    assert_sequences_exact,
    assert_streams_contiguous,
    edit_manifest,
    per_step_units,
    plan_bytes,
    write_mixture,
)
from tests.helpers.synthetic_index import write_synthetic_index


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_index(tmp_path_factory.mktemp("idx") / "index", 400, tokens=(5, 100))


def compile_to(tmp: Path, index: Path, name: str = "plan", **overrides: object) -> Path:
    mix = write_mixture(tmp / f"{name}.toml", index, **overrides)
    compile_file(mix, tmp / name)
    return tmp / name


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory: pytest.TempPathFactory, index: Path) -> Path:
    return compile_to(tmp_path_factory.mktemp("plan"), index)


def test_every_step_meets_its_quotas_exactly(plan_dir: Path) -> None:
    with Plan.open(plan_dir) as plan:
        units = per_step_units(plan)
        quotas = np.load(plan_dir / "quotas.npy")
        weights = np.load(plan_dir / "weights.npy")
        assert np.array_equal(units, quotas)
        total = plan.world_size * plan.batch_size * plan.seq_len
        assert (units.sum(axis=1) == total).all()
        # Largest remainder with carry: every prefix of steps is within one token of its target.
        drift = np.abs(np.cumsum(units, axis=0) - np.cumsum(weights * total, axis=0))
        assert drift.max() < 1
        assert_sequences_exact(plan)


def test_streams_are_contiguous_no_token_repeats_or_is_skipped(plan_dir: Path) -> None:
    with Plan.open(plan_dir) as plan:
        assert_streams_contiguous(plan)


def test_an_epoch_visits_every_member_once(plan_dir: Path) -> None:
    with Plan.open(plan_dir) as plan:
        for c in plan.components:
            rows = plan.rows_of(c.id, np.arange(c.rows))
            assert np.array_equal(np.sort(rows), np.arange(c.first_row, c.first_row + c.rows))


def test_recompiles_are_byte_identical(tmp_path: Path, index: Path, plan_dir: Path) -> None:
    again = compile_to(tmp_path, index)
    assert plan_bytes(again) == plan_bytes(plan_dir)


def test_other_seed_gives_other_order_same_quotas(tmp_path: Path, index: Path, plan_dir: Path) -> None:
    other = compile_to(tmp_path, index, seed=8)
    assert np.array_equal(np.load(other / "quotas.npy"), np.load(plan_dir / "quotas.npy"))
    assert (other / "rank-00000.bin").read_bytes() != (plan_dir / "rank-00000.bin").read_bytes()


def test_every_rank_sees_the_mixture(tmp_path: Path, index: Path) -> None:
    """Each rank's share of a component's step tokens is its 1/world_size, up to a few documents."""
    plan_dir = compile_to(tmp_path, index, world_size=4, batch_size=4, seq_len=256, steps=5, segment_steps=5)
    q = np.load(plan_dir / "quotas.npy")
    with Plan.open(plan_dir) as plan:
        for s in range(plan.steps):
            for r in range(plan.world_size):
                e = plan.step_entries(r, s)
                got = np.bincount(e.component, weights=e.token_end - e.token_start, minlength=4)
                assert np.abs(got - q[s] / plan.world_size).max() <= 3 * 100, (s, r)
                assert {0, 1} <= set(e.component.tolist())


def test_resuming_from_a_recorded_start_state_reproduces_the_segment(plan_dir: Path, index: Path) -> None:
    spec = load_spec(plan_dir.parent / "plan.toml")
    compiled = compile_plan(spec, load_index(index))
    with Plan.open(plan_dir) as plan:
        for seg in plan.manifest["segments"]:
            state = PlanState.from_json(seg["start_state"])
            q = compiled.quotas[seg["first_step"]: seg["first_step"] + seg["steps"]]
            block, _ = plan_steps(compiled.streams, state, q, world_size=4, batch_size=2, seq_len=64)
            for r in range(plan.world_size):
                mine, theirs = block.rank_segment(r), plan.segment(r, seg["index"])
                for col in ("step_counts", "component", "position", "token_start", "token_end"):
                    assert np.array_equal(getattr(mine, col), getattr(theirs, col)), (seg["index"], r, col)


def test_samples_unit_gives_batch_size_whole_documents_per_rank(tmp_path: Path, index: Path) -> None:
    plan_dir = compile_to(tmp_path, index, unit="samples", batch_size=5, seq_len=0)
    with Plan.open(plan_dir) as plan:
        for s in range(plan.steps):
            for r in range(plan.world_size):
                e = plan.step_entries(r, s)
                assert len(e) == 5
                assert (e.token_start == 0).all() and (e.token_end == e.doc_tokens).all()
        assert np.array_equal(per_step_units(plan), np.load(plan_dir / "quotas.npy"))
        assert_streams_contiguous(plan)


def test_natural_weights_follow_the_data(plan_dir: Path) -> None:
    with Plan.open(plan_dir) as plan:
        comps = {c["name"]: c for c in plan.manifest["components"]}
        de, other = comps["rest.de"], comps["rest.other"]
        assert de["weight"] + other["weight"] == pytest.approx(0.2)
        assert de["weight"] / other["weight"] == pytest.approx(de["size"] / other["size"])


def test_schedule_ramps_linearly(tmp_path: Path, index: Path) -> None:
    tail = "[[schedule]]\nfrom_step = 10\nramp_steps = 4\nweights = { web = 0.2, code = 0.6 }\n"
    plan_dir = compile_to(tmp_path, index, tail=tail)
    w = np.load(plan_dir / "weights.npy")
    assert w[9, 0] == pytest.approx(0.5) and w[10, 0] == pytest.approx(0.5)
    assert w[12, 0] == pytest.approx(0.35) and w[14:, 0] == pytest.approx(0.2)
    assert w[14:, 1] == pytest.approx(0.6)
    q = np.load(plan_dir / "quotas.npy")
    assert np.abs(np.cumsum(q, axis=0) - np.cumsum(w * 512, axis=0)).max() < 1


def test_repeat_counts_epochs(tmp_path: Path, index: Path) -> None:
    plan_dir = compile_to(tmp_path, index, steps=200, segment_steps=50)
    with Plan.open(plan_dir) as plan:
        web = plan.manifest["components"][0]
        assert web["epochs"] > 1 and web["epochs_started"] == int(np.ceil(web["epochs"]))
        assert_streams_contiguous(plan)


def test_error_policy_says_how_many_tokens_are_missing(tmp_path: Path, index: Path) -> None:
    missing = r"component 'web' runs out of data at step \d+.*\(\d+ tokens missing\)"
    with pytest.raises(ConfigError, match=missing):
        compile_to(tmp_path, index, steps=200, segment_steps=50, web_extra='on_exhausted = "error"')
    assert not (tmp_path / "plan").exists()


def test_redistribute_moves_the_weight_to_the_others(tmp_path: Path, index: Path) -> None:
    plan_dir = compile_to(tmp_path, index, steps=200, segment_steps=50,
                          web_extra='on_exhausted = "redistribute"')
    q = np.load(plan_dir / "quotas.npy")
    with Plan.open(plan_dir) as plan:
        web = plan.manifest["components"][0]
        s = web["exhausted_at"]
        assert s is not None and web["used"] == web["size"] and web["epochs"] == 1
        assert (q[s + 1:, 0] == 0).all() and (q.sum(axis=1) == 512).all()
        # From there on the others keep their relative weights.
        assert q[s + 1:, 1].sum() / q[s + 1:, 2:].sum() == pytest.approx(0.3 / 0.2, rel=0.01)
        assert_streams_contiguous(plan)


def test_corrupted_rank_file_names_file_and_segment(tmp_path: Path, index: Path) -> None:
    plan_dir = compile_to(tmp_path, index)
    rank_file = plan_dir / "rank-00001.bin"
    data = bytearray(rank_file.read_bytes())
    data[64 + 3] ^= 0xFF  # inside segment 0's frame
    rank_file.write_bytes(bytes(data))
    message = r"rank-00001.bin: checksum mismatch in segment 0"
    with Plan.open(plan_dir) as plan, pytest.raises(PlanError, match=message):
        plan.segment(1, 0)


def test_truncated_rank_file_is_refused(tmp_path: Path, index: Path) -> None:
    plan_dir = compile_to(tmp_path, index)
    rank_file = plan_dir / "rank-00002.bin"
    rank_file.write_bytes(rank_file.read_bytes()[:-30])
    message = r"rank-00002.bin: .*(truncated|seek table)"
    with Plan.open(plan_dir) as plan, pytest.raises(PlanError, match=message):
        plan.segment(2, 0)


def test_refuses_an_output_that_is_not_a_plan(tmp_path: Path, index: Path) -> None:
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "notes.txt").write_text("mine")
    with pytest.raises(PlanError, match="exists and is not a mixtera plan"):
        compile_to(tmp_path, index)
    assert (tmp_path / "plan" / "notes.txt").read_text() == "mine"


def test_a_failed_compile_keeps_the_previous_plan(tmp_path: Path, index: Path) -> None:
    plan_dir = compile_to(tmp_path, index)
    before = plan_bytes(plan_dir)
    with pytest.raises(ConfigError):
        compile_to(tmp_path, index, steps=200, segment_steps=50, web_extra='on_exhausted = "error"')
    assert plan_bytes(plan_dir) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


OVERLAPPING = """
[mixture]
index = "{index}"
steps = 4
segment_steps = 2
{extra}
[topology]
world_size = 2
batch_size = 2
seq_len = 32
[components.english]
where = "language == 'en'"
weight = 0.5
[components.web]
where = "source == 'web'"
weight = 0.5
"""


def test_overlap_is_an_error_with_its_count_unless_first(tmp_path: Path, index: Path) -> None:
    mix = tmp_path / "mix.toml"
    mix.write_text(OVERLAPPING.format(index=index, extra=""))
    with pytest.raises(ConfigError, match=r"components 'english' and 'web' overlap: \d+ samples match both"):
        compile_file(mix, tmp_path / "plan")
    mix.write_text(OVERLAPPING.format(index=index, extra='overlap = "first"'))
    compile_file(mix, tmp_path / "plan")
    with Plan.open(tmp_path / "plan") as plan:
        rows = [set(plan.rows_of(c.id, np.arange(c.rows)).tolist()) for c in plan.components]
        assert sum(len(r) for r in rows) == len(set().union(*rows))
        ids = [plan.sample_id(r) for r in rows[1]]
        table = load_index(index).samples
        langs = dict(zip(table["sample_id"].to_pylist(), table["language"].to_pylist(), strict=True))
        assert all(langs[i] != "en" for i in ids)


def test_component_matching_nothing_is_named(tmp_path: Path, index: Path) -> None:
    tail = "[components.klingon]\nwhere = \"language == 'tlh'\"\nweight = 0.1\n"
    with pytest.raises(ConfigError, match="component 'klingon' matches no sample") as exc:
        compile_to(tmp_path, index, tail=tail, mixture_extra="normalize = true")
    assert "'en'" in (exc.value.hint or "")


def test_tokens_unit_needs_token_counts(tmp_path: Path) -> None:
    idx = write_synthetic_index(tmp_path / "idx", 50, tokens=None)
    with pytest.raises(ConfigError, match="needs token counts") as exc:
        compile_to(tmp_path, idx)
    assert "re-index with a tokenizer" in (exc.value.hint or "")


def test_permutation_matches_the_reference_network() -> None:
    """runtime/shuffle's chunked, in-place network equals the plain formula it documents."""
    from mixtera.runtime.shuffle import _round_keys, _splitmix64

    def reference(x: np.ndarray, n: int, key: int) -> np.ndarray:
        bits = max(1, (n - 1).bit_length())
        low = bits // 2
        masks = (np.uint64((1 << (bits - low)) - 1), np.uint64((1 << low) - 1))

        def net(v: np.ndarray) -> np.ndarray:
            left, right = v >> np.uint64(low), v & masks[1]
            for i, k in enumerate(_round_keys(key)):
                if i % 2 == 0:
                    left = left ^ (_splitmix64(right ^ k) & masks[0])
                else:
                    right = right ^ (_splitmix64(left ^ k) & masks[1])
            return (left << np.uint64(low)) | right
        with np.errstate(over="ignore"):
            out = net(x.astype(np.uint64))
            while (out >= n).any():
                bad = out >= n
                out[bad] = net(out[bad])
        return out.astype(np.int64)

    for n in (1, 2, 3, 5, 1000, 70_001, 100_000):
        x = np.arange(n)
        got = permute(x, n, 99)
        assert np.array_equal(got, reference(x, n, 99))
        assert np.array_equal(np.sort(got), x)


def test_plan_of_an_unknown_major_version_is_refused(tmp_path: Path, index: Path) -> None:
    import json

    plan_dir = compile_to(tmp_path, index)
    manifest = json.loads((plan_dir / "manifest.json").read_text())
    manifest["format_version"] = "2.0"
    (plan_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PlanError, match="plan format '2.0', this mixtera reads 1.x") as exc:
        Plan.open(plan_dir)
    assert "recompile the plan" in (exc.value.hint or "")


def test_packing_in_small_pieces_gives_the_same_plan(tmp_path: Path, index: Path, plan_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """plan_steps packs a segment in cache-sized sub-blocks; their size never changes the plan."""
    from mixtera.planner.compile import packing

    monkeypatch.setattr(packing, "SUB_BLOCK_ENTRIES", 30)
    assert plan_bytes(compile_to(tmp_path, index)) == plan_bytes(plan_dir)


def test_a_where_of_ten_thousand_terms_selects_like_one(tmp_path: Path, index: Path, plan_dir: Path) -> None:
    mix = write_mixture(tmp_path / "long.toml", index)
    long = " or ".join(["source == 'web'"] + [f"source == 'x{i}'" for i in range(10_000)])
    mix.write_text(mix.read_text().replace("where = \"source == 'web'\"", f'where = "{long}"'))
    compile_file(mix, tmp_path / "long")  # a pyarrow expression of 10,000 terms crashed the process
    assert plan_bytes(tmp_path / "long")["samples.npy"] == plan_bytes(plan_dir)["samples.npy"]


def test_a_segment_missing_from_the_manifest_names_the_manifest(tmp_path: Path, index: Path) -> None:
    plan_dir = compile_to(tmp_path, index)
    edit_manifest(plan_dir, lambda m: m["segments"].pop())
    wanted = "segment 3 .* not among the manifest's 3 segments"
    with Plan.open(plan_dir) as plan, pytest.raises(PlanError, match=wanted) as exc:
        plan.segment(0, 3)
    assert str(plan_dir / "manifest.json") in exc.value.message

"""unit = "tokens" over image-text samples: every sample packed whole, text fills what remains.

The checks read the written plan back (rank files through ``Plan``), so they hold for what a job
replays: every sequence exactly seq_len tokens, no image-text sample cut or crossing a sequence end,
every component's tokens over every prefix of steps within one sample of its target quotas (the text
filler takes what the whole samples leave over or under theirs; any other text component is exact),
and quotas.npy holding exactly what the rank files hold.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mixtera.planner.compile import packing
from mixtera.planner.compile.elastic import repartition
from mixtera.planner.compile.packing import PlanState, plan_steps
from mixtera.planner.compile.pipeline import compile_file, needed_columns
from mixtera.planner.compile.plan_arrays import compile_plan
from mixtera.planner.feedback.orchestrate import inprocess_rewriter
from mixtera.planner.feedback.rewrite import PlanContext
from mixtera.planner.index import build_index, load_index, parse_config
from mixtera.planner.mixture.spec import load_spec, parse_spec
from mixtera.planner.report import plan_report, replayed
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.feedback import FeedbackReporter
from mixtera.runtime.plan import Plan
from mixtera.runtime.versions import read_decision
from tests.helpers.feedback_plans import Replay
from tests.helpers.shards import mixed_corpus, mixture_toml

IMAGE_TOKENS = 16


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    tmp = tmp_path_factory.mktemp("whole")
    cfg = parse_config(f'[index]\ntext = ["text", "txt"]\ntokenizer = "{tiny_tokenizer}"\n')
    build_index(mixed_corpus(tmp / "corpus", shards=2, per_shard=20, texts=40), tmp / "idx", cfg)
    return tmp / "idx"


def _toml(index: Path, weights: dict[str, float], **kw: object) -> str:
    args: dict = {"unit": "tokens", "seq_len": 64, "batch_size": 2, "world_size": 2, "steps": 10,
                  "extra": f"image_tokens = {IMAGE_TOKENS}\n"}
    args.update(kw)
    return mixture_toml(index, weights, **args)


def _compile(tmp: Path, toml: str, name: str = "plan", processes: int = 1) -> Path:
    (tmp / f"{name}.toml").write_text(toml)
    compile_file(tmp / f"{name}.toml", tmp / name, processes=processes)
    return tmp / name


def _targets(toml: str) -> np.ndarray:
    """The quotas that drive the packing (quotas.npy holds what the rank files hold instead)."""
    spec = parse_spec(toml)
    return compile_plan(spec, load_index(spec.index, columns=needed_columns(spec))).quotas


@dataclass
class Replayed:
    taken: np.ndarray  # (steps, components): tokens each component got in each step (all ranks)
    whole: list[bool]
    longest: np.ndarray  # per component: its longest member span
    whole_entries: np.ndarray  # (steps, world_size): whole samples each rank replays in each step


def _replay(path: Path) -> Replayed:
    """Reads every rank's entries of every step (in the version the job replays) and checks the
    sequence layout on the way."""
    with Plan.open(path) as plan:
        seq_len, batch = plan.seq_len, plan.batch_size
        replay = Replay(plan)
        comps = plan.manifest["components"]
        whole = [bool(c.get("whole")) for c in comps]
        samples = np.load(path / "samples.npy")
        taken = np.zeros((plan.steps, len(comps)), np.int64)
        per_rank = np.zeros((plan.steps, plan.world_size), np.int64)
        for step in range(plan.steps):
            for rank in range(plan.world_size):
                e = replay.entries(rank, step)
                size = (e.token_end - e.token_start).astype(np.int64)
                assert int(size.sum()) == batch * seq_len  # every sequence exactly seq_len
                start = np.cumsum(size) - size
                for c, s0, n, ts, te, doc in zip(e.component.tolist(), start.tolist(), size.tolist(),
                                                 e.token_start.tolist(), e.token_end.tolist(),
                                                 e.doc_tokens.tolist(), strict=True):
                    if whole[c]:  # the whole sample, inside one sequence
                        assert (ts, te) == (0, doc)
                        assert s0 // seq_len == (s0 + n - 1) // seq_len
                per_rank[step, rank] = sum(whole[c] for c in e.component.tolist())
                taken[step] += np.bincount(e.component.astype(np.int64), weights=size,
                                           minlength=len(comps)).astype(np.int64)
        framing = plan.framing
    longest = np.array([int(samples["tokens"][c["first_row"]: c["first_row"] + c["rows"]].max()) + framing
                        for c in comps])
    return Replayed(taken, whole, longest, per_rank)


def test_whole_samples_fill_sequences_and_keep_quotas_over_every_prefix(index: Path, tmp_path: Path) -> None:
    toml = _toml(index, {"img": 0.4, "text": 0.6})
    path = _compile(tmp_path, toml)
    got = _replay(path)
    quotas = _targets(toml)
    assert got.whole == [True, False]
    lag = np.cumsum(quotas, axis=0) - np.cumsum(got.taken, axis=0)
    # Images: never ahead of their quotas, behind by less than their longest sample; text takes the rest.
    assert (lag[:, 0] >= 0).all() and (lag[:, 0] < got.longest[0]).all()
    assert (lag[:, 1] == -lag[:, 0]).all()
    assert (got.taken[:, 0] > 0).all()  # images in every step
    assert (got.whole_entries > 0).all()  # and on every rank: ties go round the ranks


def test_a_second_text_component_gets_exactly_its_quotas(index: Path, tmp_path: Path) -> None:
    toml = _toml(index, {}) + (
        "[components.img]\nwhere = \"source == 'img'\"\nweight = 0.3\n"
        "[components.long]\nwhere = \"source == 'text' and text_bytes >= 35\"\nweight = 0.5\n"
        "[components.short]\nwhere = \"source == 'text' and text_bytes < 35\"\nweight = 0.2\n")
    path = _compile(tmp_path, toml)
    got = _replay(path)
    quotas = _targets(toml)
    assert (got.taken[:, 2] == quotas[:, 2]).all()  # not the filler: exact in every step
    lag = np.cumsum(quotas, axis=0) - np.cumsum(got.taken, axis=0)
    assert (lag[:, 0] >= 0).all() and (lag[:, 0] < got.longest[0]).all()
    assert (lag.sum(axis=1) == 0).all()


def test_sample_spans_count_image_placeholders(index: Path, tmp_path: Path) -> None:
    path = _compile(tmp_path, _toml(index, {"img": 0.4, "text": 0.6}))
    samples = np.load(path / "samples.npy")
    plain = _compile(tmp_path, _toml(index, {"img": 0.4, "text": 0.6}, unit="samples", seq_len=0, extra=""),
                     "samples")
    # Same rows (component order, index order); image samples gain one image's placeholders each.
    texts = np.load(plain / "samples.npy")["tokens"].astype(np.int64)
    with Plan.open(path) as plan:
        assert plan.manifest["image_tokens"] == IMAGE_TOKENS
        img = plan.manifest["components"][0]
    extra = samples["tokens"].astype(np.int64) - texts
    assert (extra[: img["rows"]] == IMAGE_TOKENS).all() and (extra[img["rows"]:] == 0).all()


def test_same_bytes_twice_and_whatever_the_sub_block(index: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    toml = _toml(index, {"img": 0.4, "text": 0.6})
    a, b = _compile(tmp_path, toml, "a"), _compile(tmp_path, toml, "b")
    monkeypatch.setattr(packing, "SUB_BLOCK_ENTRIES", 7)  # a few steps per sub-block
    c = _compile(tmp_path, toml, "c")
    for name in ("rank-00000.bin", "rank-00001.bin", "samples.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes() == (c / name).read_bytes()


DYNAMIC = '[dynamic]\nalgorithm = "loss_proportional"\nrefit_every = 4\nwait_timeout_s = 30\n'


def test_packing_resumes_from_any_segment_state(index: Path, tmp_path: Path) -> None:
    """What feedback rewrites do: re-pack from a segment's start state with the plan's own streams."""
    toml = _toml(index, {"img": 0.4, "text": 0.6}) + DYNAMIC
    path = _compile(tmp_path, toml)
    ctx = PlanContext.open(path)
    assert ctx.streams().whole == (True, False)
    quotas = _targets(toml)
    with Plan.open(path) as plan:
        for seg in plan.manifest["segments"][1:]:
            state = PlanState.from_json(seg["start_state"])
            assert state.consumed[0] >= 0  # the image component's lag
            first, n = seg["first_step"], seg["steps"]
            block, _ = plan_steps(ctx.streams(), state, quotas[first: first + n], world_size=2, batch_size=2,
                                  seq_len=64)
            for rank in range(2):
                want, got = plan.segment(rank, seg["index"]), block.rank_segment(rank)
                for col in ("step_counts", "component", "position", "token_start", "token_end"):
                    assert np.array_equal(getattr(want, col), getattr(got, col)), (seg["index"], rank, col)


def test_elastic_repartition_keeps_samples_whole(index: Path, tmp_path: Path) -> None:
    toml = _toml(index, {"img": 0.4, "text": 0.6}, world_size=2, batch_size=2)
    path = _compile(tmp_path, toml)
    (tmp_path / "one.toml").write_text(toml.replace("world_size = 2\nbatch_size = 2",
                                                    "world_size = 1\nbatch_size = 4"))
    repartition(path, load_spec(tmp_path / "one.toml"), tmp_path / "one", world_size=1, from_step=4)
    got = _replay(tmp_path / "one")
    assert (got.taken == _replay(path).taken).all()
    assert (np.load(tmp_path / "one" / "quotas.npy") == got.taken).all()  # what the new ranks replay


def test_a_sample_longer_than_a_sequence_is_refused(index: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"(?s)component 'img': \d+ image-text samples span more than "
                       r"seq_len = 32 tokens.*raise \[topology\] seq_len, lower \[mixture\] image_tokens"):
        _compile(tmp_path, _toml(index, {"img": 0.4, "text": 0.6}, seq_len=32))


def test_images_alone_cannot_fill_sequences(index: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"(?s)step 0: the whole \(image-text\) samples leave \d+ tokens.*"
                       r"never padded.*add a text component"):
        _compile(tmp_path, _toml(index, {"img": 1.0}))


def test_images_that_cannot_keep_up_with_their_quota_are_refused(index: Path, tmp_path: Path) -> None:
    # Samples of ~30 tokens in sequences of 40: one per sequence, far below a 95% share.
    with pytest.raises(ConfigError, match=r"(?s)samples of component 'img' do not fit the step's 4 "
                       r"sequences of 40 tokens.*lower its weight"):
        _compile(tmp_path, _toml(index, {"img": 0.95, "text": 0.05}, seq_len=40))


def _train_with_feedback(path: Path, steps: int) -> None:
    """A job that reports every step's tokens per domain (what it replays) and text as "harder"."""
    with Plan.open(path) as plan, FeedbackReporter(path, rank=0, on_refit=inprocess_rewriter(path),
                                                   fsync=False) as fb:
        replay = Replay(plan)
        for step in range(steps):
            tokens = np.zeros(2, np.int64)
            for rank in range(2):
                e = replay.entries(rank, step)
                np.add.at(tokens, e.component.astype(np.int64), e.token_end - e.token_start)
            fb.report(step, tokens=tokens, loss_sum=np.array([1.0, 3.0]) * tokens)


def test_feedback_rewrites_keep_samples_whole(index: Path, tmp_path: Path) -> None:
    path = _compile(tmp_path, _toml(index, {"img": 0.4, "text": 0.6}, steps=12) + DYNAMIC)
    _train_with_feedback(path, 12)
    assert read_decision(path, 1)["action"] == "rewrite"
    got = _replay(path)  # the rewritten segments, as the job replays them
    start = 8  # the first step the decisions govern (refit at step 4, rewrites from segment 4 on)
    assert got.taken[start:, 1].sum() > 0.7 * got.taken[start:].sum()  # loss-proportional: text 3/4


def _replayed_share(got: Replayed) -> np.ndarray:
    used = got.taken.sum(axis=0)
    return used / used.sum()


def test_quotas_hold_what_the_rank_files_hold(index: Path, tmp_path: Path) -> None:
    """quotas.npy is what every rank replays (summed over ranks), not the targets the whole samples
    lag; inspect's realized share is the rank files' share."""
    toml = _toml(index, {"img": 0.4, "text": 0.6})
    path = _compile(tmp_path, toml)
    got = _replay(path)
    quotas = np.load(path / "quotas.npy")
    assert (quotas == got.taken).all()
    assert not (_targets(toml) == got.taken).all()  # the targets differ: the check means something
    shares = [c["realized_share"] for c in plan_report(path)["components"]]
    np.testing.assert_allclose(shares, _replayed_share(got), rtol=0, atol=1e-12)
    manifest = json.loads((path / "manifest.json").read_text())  # the manifest agrees with them
    assert [c["used"] for c in manifest["components"]] == got.taken.sum(axis=0).tolist()


def test_quotas_of_a_feedback_rewrite_hold_what_its_rank_files_hold(index: Path, tmp_path: Path) -> None:
    path = _compile(tmp_path, _toml(index, {"img": 0.4, "text": 0.6}, steps=12) + DYNAMIC)
    _train_with_feedback(path, 12)
    decision = read_decision(path, 1)
    assert decision["action"] == "rewrite"
    got = _replay(path)  # the rewritten segments, as the job replays them
    rewritten = np.load(path / "versions" / "v000001" / "quotas.npy")
    first = decision["first_step"]
    assert (rewritten == got.taken[first:]).all()
    assert (replayed(path).quotas == got.taken).all()
    shares = [c["realized_share"] for c in plan_report(path)["components"]]
    np.testing.assert_allclose(shares, _replayed_share(got), rtol=0, atol=1e-12)
    with Plan.open(path) as plan:  # the decision's checksum is the written array's
        assert (plan.step_array("quotas.npy", 1) == rewritten).all()


def test_any_process_count_writes_the_same_image_plan(index: Path, tmp_path: Path) -> None:
    toml = _toml(index, {"img": 0.4, "text": 0.6})
    one, two = _compile(tmp_path, toml, "one"), _compile(tmp_path, toml, "two", processes=2)
    for name in sorted(p.name for p in one.iterdir()):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def _filler_near_its_epoch(index: Path, text_weight: float) -> str:
    # 6 steps of 256 tokens; the text component holds 1043 tokens and fills what images leave.
    return _toml(index, {}, steps=6) + (
        f"[components.img]\nwhere = \"source == 'img'\"\nweight = {1 - text_weight}\n"
        f"[components.text]\nwhere = \"source == 'text'\"\nweight = {text_weight}\n"
        "on_exhausted = \"error\"\n")


def test_on_exhausted_error_counts_the_tokens_the_filler_is_given(index: Path, tmp_path: Path) -> None:
    toml = _filler_near_its_epoch(index, 0.675)
    spec = parse_spec(toml)
    plan = compile_plan(spec, load_index(spec.index, columns=needed_columns(spec)))
    size = plan.components[1].size
    assert plan.quotas[:, 1].sum() <= size  # its quotas fit one epoch ...
    placement = plan.placement()
    assert placement is not None
    given = sum(placement.tokens(block)[:, 1].sum() for _, block in plan.blocks())
    assert given > size  # ... what it is given as the filler does not
    with pytest.raises(ConfigError, match=r"(?s)component 'text' runs out of data at step \d: its quotas fit "
                       r"its \d+ tokens, but as the text that fills .* past one epoch.*lower its weight"):
        _compile(tmp_path, toml)
    assert not (tmp_path / "plan").exists()  # nothing left behind
    # A little less text: it fits, on_exhausted = "error" and all.
    path = _compile(tmp_path, _filler_near_its_epoch(index, 0.64), "fits")
    assert np.load(path / "quotas.npy")[:, 1].sum() <= size


def test_text_only_plans_take_the_text_packer(index: Path, tmp_path: Path) -> None:
    path = _compile(tmp_path, _toml(index, {"text": 1.0}) + DYNAMIC)
    ctx = PlanContext.open(path)
    assert ctx.streams().whole == ()
    with Plan.open(path) as plan:
        assert "whole" not in plan.manifest["components"][0]


@pytest.mark.shared
def test_real_shards_mixed_with_text(shared_corpora: Path, neox_tokenizer: Path, tmp_path: Path) -> None:
    """cc12m and tuxpaint beside redpajama text, LLaVA's 576 tokens an image: the same guarantees."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "img").symlink_to(shared_corpora / "image_text")
    (corpus / "text").symlink_to(shared_corpora / "text" / "redpajama")
    cfg = (f'[index]\ntext = ["text", "txt"]\ntokenizer = "{neox_tokenizer}"\n'
           '[properties.source]\npath = "{source}/**"\n')
    build_index(corpus, tmp_path / "idx", parse_config(cfg))
    toml = _toml(tmp_path / "idx", {"img": 0.5, "text": 0.5}, seq_len=2048, batch_size=2, steps=12,
                 extra="image_tokens = 576\n")
    path = _compile(tmp_path, toml)
    got = _replay(path)
    quotas = _targets(toml)
    lag = np.cumsum(quotas, axis=0) - np.cumsum(got.taken, axis=0)
    assert (lag[:, 0] >= 0).all() and (lag[:, 0] < got.longest[0]).all()
    assert (lag.sum(axis=1) == 0).all() and (got.taken[:, 0] > 0).all()
    assert (np.load(path / "quotas.npy") == got.taken).all()


def test_inspect_reports_the_packing_and_its_padding_share(index: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mixtera.cli.app import app

    path = _compile(tmp_path, _toml(index, {"img": 0.4, "text": 0.6}))
    result = CliRunner().invoke(app, ["inspect", str(path)], env={"NO_COLOR": "1", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "image-text samples whole (img; 16 tokens per image), the rest of every sequence text; " \
           "padding 0.0% of tokens" in result.stdout
    report = json.loads(CliRunner().invoke(app, ["inspect", str(path), "--json"]).stdout)
    assert report["packing"] == {"whole_components": ["img"], "image_tokens": 16, "filled_by": "text",
                                 "padding_share": 0.0}
    text = _compile(tmp_path, _toml(index, {"text": 1.0}), "text")
    assert "packing" not in json.loads(CliRunner().invoke(app, ["inspect", str(text), "--json"]).stdout)


def _entries(streams: packing.Streams, quotas: np.ndarray, seq_len: int) -> packing.BlockEntries:
    block, _ = plan_steps(streams, PlanState.initial(len(streams.names)), quotas, world_size=2, batch_size=3,
                          seq_len=seq_len)
    return block


def test_whole_samples_that_fill_sequences_exactly_need_no_text() -> None:
    streams = packing.Streams(names=("img",), doc_lengths=(np.full(50, 16, np.uint16),), seed=1,
                              unit="tokens", whole=(True,))
    block = _entries(streams, np.full((4, 1), 6 * 32), 32)
    assert block.counts.tolist() == [[6, 6]] * 4  # two samples in each of a rank's 3 sequences
    assert not block.token_start.any() and not block.token_end.any()


def test_two_image_components_and_text_on_synthetic_streams() -> None:
    rng = np.random.default_rng(5)
    lens = (rng.integers(20, 60, 300).astype(np.uint16), rng.integers(5, 30, 300).astype(np.uint16),
            rng.integers(1, 200, 300).astype(np.uint16))
    streams = packing.Streams(names=("a", "b", "t"), doc_lengths=lens, seed=2, unit="tokens",
                              whole=(True, True, False))
    from mixtera.planner.compile.quotas import largest_remainder

    quotas, _ = largest_remainder(np.tile([0.3, 0.2, 0.5], (40, 1)) * 6 * 64, np.zeros(3), 6 * 64)
    block = _entries(streams, quotas, 64)
    segs = [block.rank_segment(r) for r in range(2)]
    taken = np.zeros((40, 3), np.int64)
    for seg in segs:
        bounds = seg.step_slices()
        for s in range(40):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            comp = seg.component[lo:hi].astype(np.int64)
            doc = np.array([int(streams.lengths(int(c), int(p), 1)[0]) for c, p in
                            zip(comp, seg.position[lo:hi], strict=True)], np.int64)
            end = np.where(seg.token_end[lo:hi] == 0, doc, seg.token_end[lo:hi])
            size = end - seg.token_start[lo:hi]
            assert size.sum() == 3 * 64
            at = np.cumsum(size) - size
            img = comp < 2
            assert (seg.token_start[lo:hi][img] == 0).all()
            assert (at[img] // 64 == (at[img] + size[img] - 1) // 64).all()
            taken[s] += np.bincount(comp, weights=size, minlength=3).astype(np.int64)
    lag = np.cumsum(quotas, axis=0) - np.cumsum(taken, axis=0)
    assert (lag[:, :2] >= 0).all() and (lag[:, 0] < 60).all() and (lag[:, 1] < 30).all()
    assert (lag.sum(axis=1) == 0).all()
    monkey = packing.SUB_BLOCK_ENTRIES
    try:
        packing.SUB_BLOCK_ENTRIES = 5
        again = _entries(streams, quotas, 64)
    finally:
        packing.SUB_BLOCK_ENTRIES = monkey
    for col in ("counts", "component", "position", "token_start", "token_end"):
        assert np.array_equal(getattr(block, col), getattr(again, col))


def _greedy_worst_fit(sizes: list[int], world_size: int, batch_size: int,
                      seq_len: int) -> tuple[list[int], list[int], int | None]:
    """The one-by-one definition: longest first (stream order among equals), each into the sequence
    with the most room, ties in the order sequence 0 of every rank, then sequence 1, ..."""
    free = [(-seq_len, (j % batch_size) * world_size + j // batch_size, j)
            for j in range(world_size * batch_size)]
    heapq.heapify(free)
    seq = [0] * len(sizes)
    for n in sorted(range(len(sizes)), key=lambda n: -sizes[n]):
        left, tie, j = free[0]
        if sizes[n] > -left:
            return seq, [], n
        seq[n] = j
        heapq.heapreplace(free, (left + sizes[n], tie, j))
    room = [0] * len(free)
    for left, _, j in free:
        room[j] = -left
    return seq, room, None


def test_worst_fit_is_the_one_by_one_greedy() -> None:
    rng = np.random.default_rng(11)
    outcomes = set()
    for _ in range(300):
        world, batch, seq_len = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(8, 200))
        lo = int(rng.integers(1, seq_len))
        hi = lo + 1 if rng.random() < 0.3 else int(rng.integers(lo + 1, seq_len + 2))  # ties, or a misfit
        sizes = rng.integers(lo, hi, int(rng.integers(0, 4 * world * batch)))
        seq, room, failed = packing._worst_fit_decreasing(sizes, world, batch, seq_len)
        want_seq, want_room, want_failed = _greedy_worst_fit(sizes.tolist(), world, batch, seq_len)
        assert failed == want_failed
        outcomes.add(failed is None)
        if failed is None:
            assert seq.tolist() == want_seq and room.tolist() == want_room
    assert outcomes == {True, False}  # both fits and misfits were tried

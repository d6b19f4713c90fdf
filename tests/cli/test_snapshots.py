# ruff: noqa: E501 (the expected texts are the commands' output lines)
"""What each command prints, as a user sees it: exit code, stdout and stderr of the real entry point,
for the main success case and the main errors (tests/helpers/cli_snapshot.py; update the expected
texts with MIXTERA_UPDATE_SNAPSHOTS=1 after a deliberate change)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from mixtera.planner.compile.pipeline import compile_file
from mixtera.planner.index import build_index
from tests.helpers.cli_snapshot import Cli, assert_snapshot, work_folder
from tests.helpers.feedback_plans import make_plan, run_job
from tests.helpers.index_helpers import CONFIG, make_corpus

pytestmark = pytest.mark.slow  # one process per case: about a second each

MIXTURE = """\
[mixture]
index = "idx"
seed = 3
unit = "samples"
steps = 6
segment_steps = 3

[topology]
world_size = 2
batch_size = 5

[components.web]
where = "source == 'web'"
weight = 0.5

[components.code]
where = "source == 'code'"
weight = 0.3

[components.other]
where = "source in ['arxiv', 'books']"
weight = 0.2
"""


@pytest.fixture(scope="module")
def cli() -> Iterator[Cli]:
    """corpus/ (5 files, every format), index.toml, idx/ (its index), mix.toml and plan/ (2 ranks)."""
    with work_folder() as root:
        make_corpus(root / "corpus")
        for path in (root / "corpus").rglob("*.*"):
            os.utime(path, ns=(1_700_000_000 * 10**9,) * 2)
        (root / "index.toml").write_text(CONFIG)
        build_index([root / "corpus"], root / "idx", root / "index.toml", processes=1)
        (root / "mix.toml").write_text(MIXTURE)
        compile_file(root / "mix.toml", root / "plan")
        yield Cli(root)


def _write(cli: Cli, name: str, text: str) -> str:
    (cli.root / name).write_text(text)
    return name


# ------------------------------------------------------------------------------------------ index


def test_index(cli: Cli) -> None:
    assert_snapshot(cli.run("index", "corpus", "--out", "idx2", "--config", "index.toml", "-p", "1"), """
exit code: 0
----- stdout -----
index [TMP]/idx2
┌─────────────────┬────────────────────────────────────────────────┐
│ corpus root     │ [TMP]/corpus              │
│ files           │ 5                                              │
│ samples         │ 21                                             │
│ bytes           │ 323                                            │
│ tokens          │ -                                              │
│ files added     │ 5                                              │
│ files changed   │ 0                                              │
│ files removed   │ 0                                              │
│ files unchanged │ 0                                              │
│ records skipped │ 0                                              │
│ paths skipped   │ 0                                              │
│ properties      │ language: string, score: float, source: string │
│ read            │ 0.0 MB in [TIME]                               │
└─────────────────┴────────────────────────────────────────────────┘
----- stderr -----
""")


def test_index_missing_corpus(cli: Cli) -> None:
    assert_snapshot(cli.run("index", "nope", "--out", "idx3"), """
exit code: 1
----- stdout -----
----- stderr -----
error: corpus path [TMP]/nope does not exist

hint: check the path (it must be a file or folder)
""")


def test_index_invalid_toml(cli: Cli) -> None:
    config = _write(cli, "bad-index.toml", '[index]\ntext = "text"\non_error = skip\n')
    assert_snapshot(cli.run("index", "corpus", "--out", "idx3", "--config", config), """
exit code: 1
----- stdout -----
----- stderr -----
error: bad-index.toml: invalid TOML at line 3, column 12: Invalid value

hint: check quotes, brackets and `key = value` syntax on that line
""")


def test_index_unknown_config_key(cli: Cli) -> None:
    config = _write(cli, "typo-index.toml", '[index]\ntext = "text"\non_eror = "skip"\n')
    assert_snapshot(cli.run("index", "corpus", "--out", "idx3", "--config", config), """
exit code: 1
----- stdout -----
----- stderr -----
error: typo-index.toml: unknown key [index] 'on_eror'

hint: allowed keys there: bos, bos_token, eos, eos_token, function, on_error, text, tokenizer (see man/mixtera-index.md)
""")


def test_index_out_is_not_an_index(cli: Cli) -> None:
    assert_snapshot(cli.run("index", "corpus", "--out", "plan"), """
exit code: 1
----- stdout -----
----- stderr -----
error: --out [TMP]/plan holds something other than a mixtera index (manifest.json, quotas.npy, rank-00000.bin, rank-00001.bin, samples.blocks.npy, ...); refusing to replace it

hint: choose an empty or new folder for --out, or an existing mixtera index to update
""")


# ---------------------------------------------------------------------------------------- compile


def test_compile(cli: Cli) -> None:
    assert_snapshot(cli.run("compile", "mix.toml", "--out", "plan2"), """
exit code: 0
----- stdout -----
plan plan2
┌─────────────┬──────────────────────────────────────────────────┐
│ fingerprint │ [HASH]                 │
│ topology    │ 2 ranks x 5 samples                              │
│ steps       │ 6 in 2 segments of 3                             │
│ entries     │ 60                                               │
│ size        │ 6,347 bytes (8.55 bytes per entry in rank files) │
│ time        │ [TIME]                                           │
└─────────────┴──────────────────────────────────────────────────┘
components
┏━━━━┳━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━┓
┃ id ┃ component ┃ weight ┃ samples ┃ samples ┃ epochs ┃
┡━━━━╇━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━┩
│  0 │ web       │ 0.5000 │       9 │      30 │  3.333 │
│  1 │ code      │ 0.3000 │       7 │      18 │  2.571 │
│  2 │ other     │ 0.2000 │       5 │      12 │  2.400 │
└────┴───────────┴────────┴─────────┴─────────┴────────┘
----- stderr -----
""")


def test_compile_missing_mixture(cli: Cli) -> None:
    assert_snapshot(cli.run("compile", "missing.toml", "--out", "plan3"), """
exit code: 1
----- stdout -----
----- stderr -----
error: missing.toml: mixture file does not exist

hint: check the path
""")


def test_compile_invalid_toml(cli: Cli) -> None:
    mixture = _write(cli, "bad-toml.toml", MIXTURE.replace("steps = 6", "steps = = 6"))
    assert_snapshot(cli.run("compile", mixture, "--out", "plan3"), """
exit code: 1
----- stdout -----
----- stderr -----
error: bad-toml.toml: invalid TOML at line 5, column 9: Invalid value

hint: check quotes, brackets and `key = value` syntax on that line
""")


def test_compile_bad_where_expression(cli: Cli) -> None:
    mixture = _write(cli, "bad-where.toml", MIXTURE.replace("source == 'web'", "source = 'web'"))
    assert_snapshot(cli.run("compile", mixture, "--out", "plan3"), """
exit code: 1
----- stdout -----
----- stderr -----
error: bad-where.toml: components.web.where: invalid where expression at column 8: unexpected character '='
    source = 'web'
           ^

hint: compare with `==`
""")


def test_compile_unknown_component_in_schedule(cli: Cli) -> None:
    schedule = "\n[[schedule]]\nfrom_step = 3\nweights = { webb = 0.3, code = 0.5, other = 0.2 }\n"
    mixture = _write(cli, "bad-schedule.toml", MIXTURE + schedule)
    assert_snapshot(cli.run("compile", mixture, "--out", "plan3"), """
exit code: 1
----- stdout -----
----- stderr -----
error: bad-schedule.toml: schedule[0].weights.webb: unknown component 'webb'

hint: did you mean 'web'? components are: code, other, web
""")


def test_compile_weights_do_not_sum_to_one(cli: Cli) -> None:
    mixture = _write(cli, "bad-weights.toml", MIXTURE.replace("weight = 0.3", "weight = 0.35"))
    assert_snapshot(cli.run("compile", mixture, "--out", "plan3"), """
exit code: 1
----- stdout -----
----- stderr -----
error: bad-weights.toml: components: weights web=0.5, code=0.35, other=0.2 sum to 1.05, not 1

hint: fix the weights, or set `normalize = true` to scale them
""")


def test_compile_elastic_needs_all_three_options(cli: Cli) -> None:
    assert_snapshot(cli.run("compile", "mix.toml", "--out", "plan3", "--world-size", "1"), """
exit code: 1
----- stdout -----
----- stderr -----
error: --from-plan, --from-step and --world-size go together

hint: pass all three to re-partition a plan, or none to compile from scratch
""")


def test_compile_without_arguments_is_a_usage_error(cli: Cli) -> None:
    assert_snapshot(cli.run("compile"), """
exit code: 2
----- stdout -----
----- stderr -----
Usage: mixtera compile [OPTIONS] {MIXTURE}
Try 'mixtera compile --help' for help.
╭─ Error ──────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────╮
│ Missing argument 'MIXTURE'.                                                                                                                                  │
╰──────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────╯
""")


# ---------------------------------------------------------------------------------------- inspect


def test_inspect_index(cli: Cli) -> None:
    assert_snapshot(cli.run("inspect", "idx"), """
exit code: 0
----- stdout -----
index idx
┌───────────────┬──────────────────────────────────────────────────────────────────┐
│ corpus root   │ [TMP]/corpus                                │
│ files         │ 5  (json.gz: 1, jsonl: 1, jsonl.gz: 1, jsonl.zst: 1, parquet: 1) │
│ samples       │ 21  (0 bad records skipped)                                      │
│ bytes         │ 323                                                              │
│ tokens        │ -                                                                │
│ tokenizer     │ -                                                                │
│ stored tokens │ no                                                               │
└───────────────┴──────────────────────────────────────────────────────────────────┘
property language: string from lang, meta.language
┏━━━━━━━━━┳━━━━━━━━━┓
┃ value   ┃ samples ┃
┡━━━━━━━━━╇━━━━━━━━━┩
│ py      │       7 │
│ en      │       5 │
│ de      │       4 │
│ fr      │       3 │
│ unknown │       2 │
└─────────┴─────────┘
5 distinct, 0 null
property score: float from score
┏━━━━━━━┳━━━━━━━━━┓
┃ value ┃ samples ┃
┡━━━━━━━╇━━━━━━━━━┩
│ 0.5   │       5 │
│ 1.0   │       4 │
└───────┴─────────┘
2 distinct, 12 null; min 0.5, mean 0.722222, max 1
property source: string from path:{source}/**
┏━━━━━━━┳━━━━━━━━━┓
┃ value ┃ samples ┃
┡━━━━━━━╇━━━━━━━━━┩
│ web   │       9 │
│ code  │       7 │
│ arxiv │       3 │
│ books │       2 │
└───────┴─────────┘
4 distinct, 0 null
----- stderr -----
""")


def test_inspect_plan(cli: Cli) -> None:
    assert_snapshot(cli.run("inspect", "plan"), """
exit code: 0
----- stdout -----
plan plan
┌──────────────┬───────────────────────────────────────────────┐
│ fingerprint  │ [HASH]              │
│ ranks        │ 2 x batch 5 samples                           │
│ steps        │ 6 in 2 segments of 3                          │
│ entries      │ 60                                            │
│ size on disk │ 6,347 bytes; rank files 8.550 bytes per entry │
└──────────────┴───────────────────────────────────────────────┘
components
┏━━━━┳━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━┓
┃    ┃           ┃ initial ┃   mean ┃          ┃ max step ┃ samples ┃ samples ┃        ┃
┃ id ┃ component ┃  target ┃ target ┃ realized ┃      dev ┃    used ┃ matched ┃ epochs ┃
┡━━━━╇━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━┩
│  0 │ web       │  0.5000 │ 0.5000 │   0.5000 │ 0.00e+00 │      30 │       9 │  3.333 │
│  1 │ code      │  0.3000 │ 0.3000 │   0.3000 │ 0.00e+00 │      18 │       7 │  2.571 │
│  2 │ other     │  0.2000 │ 0.2000 │   0.2000 │ 0.00e+00 │      12 │       5 │  2.400 │
└────┴───────────┴─────────┴────────┴──────────┴──────────┴─────────┴─────────┴────────┘
Over what the runtime replays now: the compiled plan.
target = weight of a step (initial: step 0, mean: all steps); realized = share of all samples; max step dev = max over steps of |share - target|.
----- stderr -----
""")


def test_inspect_rank_entries(cli: Cli) -> None:
    assert_snapshot(cli.run("inspect", "plan", "--rank", "1", "--steps", "0:2"), """
exit code: 0
----- stdout -----
rank 1, steps 0:2: 10 entries
┏━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━━┓
┃ step ┃ sample id                ┃ tokens ┃ component ┃ version ┃
┡━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━━┩
│    0 │ web/b.jsonl.gz#0         │ [0, 0) │ web       │      v0 │
│    0 │ books/old.json.gz#0      │ [0, 0) │ other     │      v0 │
│    0 │ web/a.jsonl#1            │ [0, 0) │ web       │      v0 │
│    0 │ code/src.parquet#4       │ [0, 0) │ code      │      v0 │
│    0 │ web/a.jsonl#0            │ [0, 0) │ web       │      v0 │
│    1 │ web/a.jsonl#3            │ [0, 0) │ web       │      v0 │
│    1 │ arxiv/papers.jsonl.zst#0 │ [0, 0) │ other     │      v0 │
│    1 │ web/a.jsonl#4            │ [0, 0) │ web       │      v0 │
│    1 │ code/src.parquet#3       │ [0, 0) │ code      │      v0 │
│    1 │ web/b.jsonl.gz#0         │ [0, 0) │ web       │      v0 │
└──────┴──────────────────────────┴────────┴───────────┴─────────┘
----- stderr -----
""")


def test_inspect_rank_out_of_range(cli: Cli) -> None:
    assert_snapshot(cli.run("inspect", "plan", "--rank", "2"), """
exit code: 1
----- stdout -----
----- stderr -----
error: --rank 2: the plan has ranks 0..1

hint: use a rank in 0..1
""")


def test_inspect_negative_rank_is_a_usage_error(cli: Cli) -> None:
    assert_snapshot(cli.run("inspect", "plan", "--rank", "-1"), """
exit code: 2
----- stdout -----
----- stderr -----
Usage: mixtera inspect [OPTIONS] {PATH}
Try 'mixtera inspect --help' for help.
╭─ Error ──────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────╮
│ Invalid value for '--rank': Input should be greater than or equal to 0                                                                                       │
╰──────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────╯
""")


def test_inspect_bad_step_range(cli: Cli) -> None:
    assert_snapshot(cli.run("inspect", "plan", "--rank", "0", "--steps", "4:2"), """
exit code: 1
----- stdout -----
----- stderr -----
error: --steps '4:2' is outside the plan's steps 0..6

hint: use a range inside 0:6
""")


def test_inspect_missing_folder(cli: Cli) -> None:
    assert_snapshot(cli.run("inspect", "nope"), """
exit code: 1
----- stdout -----
----- stderr -----
error: nope does not exist or is not a directory

hint: pass a folder written by `mixtera index` or `mixtera compile`
""")


def test_inspect_folder_without_manifest(cli: Cli) -> None:
    assert_snapshot(cli.run("inspect", "corpus"), """
exit code: 1
----- stdout -----
----- stderr -----
error: corpus is neither an index nor a plan: it has no manifest.json

hint: pass a folder written by `mixtera index` or `mixtera compile`
""")


# --------------------------------------------------------------------------------------- feedback


def test_feedback_publishes_what_the_log_allows(cli: Cli) -> None:
    plan = make_plan(cli.root / "fb", steps=600, segment_steps=50, refit=200, wait=60)
    run_job(plan, range(240))
    # The fifth column, "took (s)", is 8 wide: the placeholder fills it whatever the time's digits.
    took = (r"^(│(?:[^│]*│){4}) *\d+\.\d\d(?= │)", r"\g<1>   [TIME]")
    assert_snapshot(cli.run("feedback", "fb/plan", filters=(took,)), """
exit code: 0
----- stdout -----
decisions published by this run
┏━━━━━━━━━┳━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━┓
┃ version ┃ losses of steps ┃ takes effect at step ┃ action  ┃ took (s) ┃ fit           ┃    web ┃   code ┃  books ┃   wiki ┃
┡━━━━━━━━━╇━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━┩
│       1 │           0-199 │                  250 │ rewrite │   [TIME] │ ok, 15 points │ 0.2271 │ 0.3399 │ 0.2015 │ 0.2315 │
└─────────┴─────────────────┴──────────────────────┴─────────┴──────────┴───────────────┴────────┴────────┴────────┴────────┘
losses of steps: what the decision used; takes effect at step: the first step it governs;
component columns: the new weights at that step (ADO moves them every step after; --json has their mean).
feedback log: 240 steps reported (last step 239); 1 decisions pending, the next needs the losses of steps 0-399
----- stderr -----
ado on fb/plan: a decision every 200 steps, 2 in the plan
""")


def test_feedback_on_a_plan_without_dynamic(cli: Cli) -> None:
    assert_snapshot(cli.run("feedback", "plan"), """
exit code: 1
----- stdout -----
----- stderr -----
error: plan: the mixture has no rewriting [dynamic] algorithm (none)

hint: add [dynamic] algorithm = "ado" (or "loss_proportional") to the mixture and recompile
""")


def test_feedback_missing_plan(cli: Cli) -> None:
    assert_snapshot(cli.run("feedback", "nope"), """
exit code: 1
----- stdout -----
----- stderr -----
error: nope is not a mixtera plan: it has no manifest.json

hint: compile one with `mixtera compile MIXTURE.toml --out PLAN`
""")

"""What `pip install mixtera` puts on sys.path: one top-level name, `mixtera`, in the wheel and in the
editable install, and `mixtera --version` from the installed metadata (pyproject's version)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tests.helpers import ROOT

# What a wheel is built from: copied out so that the build leaves nothing in the checkout (build/, egg-info).
SOURCES = ("pyproject.toml", "README.md", "runtime", "planner", "mixtera_cli")
OLD_NAMES = ("runtime", "planner", "mixtera_cli")
IMPORTS = (
    "from mixtera.runtime import PlanDataset, FeedbackReporter",
    "import mixtera.runtime.format.rank_file",
    "import mixtera.planner.compile.pipeline, mixtera.planner.feedback.orchestrate",
    "import mixtera.planner.index, mixtera.planner.mixture.where",
    "import mixtera.cli.app",
)


def _python(code: str, cwd: Path, **env: str) -> str:
    """Run ``code`` in this venv's interpreter outside the checkout (so its folders are not on sys.path)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _probe(names: tuple[str, ...]) -> str:
    """Code printing where mixtera's packages come from; it fails if an old top-level name imports."""
    return "\n".join([
        "import importlib.util, mixtera, mixtera.runtime, mixtera.planner, mixtera.cli",
        *IMPORTS,
        f"assert [n for n in {names!r} if importlib.util.find_spec(n)] == [], 'an old top-level name'",
        "print(mixtera.runtime.__file__); print(mixtera.planner.__file__); print(mixtera.cli.__file__)",
    ])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(out), str(src)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("mixtera-*.whl")
    return built


def _version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


@pytest.mark.slow
def test_wheel_installs_only_the_mixtera_root(wheel: Path) -> None:
    version = _version()
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist()}
        packages = {name.rsplit("/", 1)[0] for name in zf.namelist() if name.endswith("/__init__.py")}
    assert top == {"mixtera", f"mixtera-{version}.dist-info"}
    # Every package of the source tree is listed in pyproject's `packages` and so lands in the wheel.
    expected = {f"mixtera/{'cli' if d.parts[0] == 'mixtera_cli' else d.parts[0]}/" + "/".join(d.parts[1:])
                for d in (p.parent.relative_to(ROOT) for name in OLD_NAMES
                          for p in (ROOT / name).rglob("__init__.py"))}
    assert packages == {p.rstrip("/") for p in expected}
    assert "mixtera/__init__.py" not in packages  # a namespace package: no folder of its own in the tree


@pytest.mark.slow
def test_installed_wheel_imports_from_its_target(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in target.iterdir() if p.name != "bin") == [
        "mixtera", wheel.name.split("-py")[0] + ".dist-info"]
    # The venv's dependencies (torch, pyarrow, ...) stay importable; mixtera itself comes from the target.
    files = _python(_probe(OLD_NAMES), tmp_path, PYTHONPATH=str(target)).split()
    assert files == [str(target / "mixtera" / pkg / "__init__.py") for pkg in ("runtime", "planner", "cli")]


def test_editable_install_maps_the_source_folders() -> None:
    files = _python(_probe(OLD_NAMES), Path("/")).split()
    assert files == [str(ROOT / folder / "__init__.py") for folder in OLD_NAMES]


def test_version_comes_from_pyproject(tmp_path: Path) -> None:
    version = _version()
    done = subprocess.run([str(Path(sys.executable).parent / "mixtera"), "--version"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"mixtera {version}\n", "")

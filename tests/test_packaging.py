"""Installed the way Python users install it: the sdist and wheel ``python -m build`` makes, checked as PyPI checks them
(``twine check``), the wheel installed in a fresh venv that has never seen this checkout, then README's quick start run
there. One venv, and pip's cache keeps the second run quick.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from otel_segments import __version__
from tests.conftest import clean_env

ROOT = Path(__file__).resolve().parents[1]
USERS = 25


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=cwd)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The wheel is built from the sdist (build's default): a file missing from the sdist fails here, not for a user.
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out)
    return out


def test_sdist_and_wheel_are_built_versioned_and_pass_twine_check(dist: Path) -> None:
    wheel = dist / f"otel_segments-{__version__}-py3-none-any.whl"
    sdist = dist / f"otel_segments-{__version__}.tar.gz"
    assert wheel.exists() and sdist.exists(), sorted(p.name for p in dist.iterdir())
    checked = _run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist, cwd=dist)
    assert checked.stdout.count("PASSED") == 2, checked.stdout
    names = zipfile.ZipFile(wheel).namelist()
    assert "otel_segments/py.typed" in names
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "otel_segments").rglob("__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= set(names)  # every part, not only the root
    assert not [n for n in names if n.startswith("tests/")]


def test_the_wheel_in_a_fresh_venv_runs_the_quick_start(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    wheel = dist / f"otel_segments-{__version__}-py3-none-any.whl"
    pip = (python, "-m", "pip", "install", "-q", "--disable-pip-version-check")
    _run(*pip, "-c", ROOT / "constraints" / "newest.txt", wheel, cwd=tmp_path)

    where = _run(python, "-c", "import otel_segments; print(otel_segments.__file__)", cwd=tmp_path).stdout
    assert str(venv) in where and str(ROOT) not in where  # the installed copy, not this checkout
    cli = venv / "bin" / "otel-segments"
    assert _run(cli, "--version", cwd=tmp_path).stdout.strip() == f"otel-segments {__version__}"

    db = tmp_path / "timetracker.sqlite"
    _run(cli, "demo", "--users", USERS, "--database", db, cwd=tmp_path)
    out = tmp_path / "segments.jsonl"
    with out.open("w") as file:
        done = subprocess.run(
            [cli, "compute", "--database-url", f"sqlite:///{db}", "--format", "jsonl"],
            stdout=file,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=clean_env(),
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr
    assert sorted(int(json.loads(line)["distinct_id"]) for line in out.read_text().splitlines()) == list(range(1, USERS + 1))

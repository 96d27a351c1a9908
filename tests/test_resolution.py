"""The package's own dependency specifiers resolve, core and every extra, for the Pythons users
run (3.11 is installed here; 3.12 and 3.13 are resolved only, with uv, which needs no such
interpreter). A dry run: nothing is installed. Needs PyPI, as `make test`'s set-up does."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
PYTHONS = ("3.11", "3.12", "3.13")
EXTRAS = (None, *tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"])


def uv_binary() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        pytest.fail("uv is not installed: it comes with the [test] extra (make test installs it)")
    return found


@functools.cache
def resolve(python: str, extra: str | None) -> dict[str, str]:
    """``{package: version}`` of uv's resolution of the package for ``python`` (with ``extra``).

    The ``all`` extra is resolved against PyPI first; the others then resolve offline from the
    package metadata that it cached (all of theirs is in it), which takes 0.5 s instead of ~10 s
    of index revalidation each, and online again if that fails."""
    cmd = [uv_binary(), "pip", "compile", str(PYPROJECT), "--python-version", python, "--quiet",
           "--no-header", "--no-annotate", "--no-progress"]
    if extra:
        cmd += ["--extra", extra]
    done = None
    if extra != "all":
        resolve(python, "all")
        done = subprocess.run(cmd + ["--offline"], capture_output=True, text=True, timeout=300)
    if done is None or done.returncode != 0:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (f"`{' '.join(cmd[1:])}` failed (rc {done.returncode}):\n"
                                  f"{done.stderr[-3000:]}")
    pins = {}
    for line in done.stdout.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def major(version: str) -> int:
    return int(version.split(".")[0])


@pytest.mark.parametrize("extra", EXTRAS, ids=lambda e: e or "core")
@pytest.mark.parametrize("python", PYTHONS)
def test_resolves(python, extra):
    pins = resolve(python, extra)
    assert "torch" in pins and "numpy" in pins, pins
    wants_spacy = extra in ("extract", "all")
    assert ("spacy" in pins) == wants_spacy and ("medspacy" in pins) == wants_spacy, pins
    if extra is None:
        # the core is torch + numpy (and torch's own dependencies): no extra's package leaks in
        for name in ("spacy", "pandas", "pyarrow", "timm", "transformers", "scikit-learn", "tqdm",
                     "matplotlib", "pytorch-metric-learning", "open-clip-torch"):
            assert name not in pins, f"the core install pulls {name}"
    if wants_spacy:
        # medspacy 1.3 takes spaCy 3.7 below Python 3.12 (numpy 1 there), spaCy 3.8 from 3.12
        spacy_minor = tuple(map(int, pins["spacy"].split(".")[:2]))
        assert spacy_minor == ((3, 7) if python < "3.12" else (3, 8)), pins["spacy"]
    if not wants_spacy or python >= "3.12":
        assert major(pins["numpy"]) >= 2, f"numpy 2 is allowed here, got {pins['numpy']}"
    if "pyarrow" in pins and major(pins["numpy"]) < 2:
        assert major(pins["pyarrow"]) < 22, "pyarrow 22+ needs numpy 2"


# pyarrow releases that abort the interpreter at exit now and then after reading Parquet from a
# Python file object, as pandas.read_parquet does (README, "Entity extraction")
PYARROW_ABORTS_AT_EXIT = ("21.0.0", "22.0.0", "23.0.0", "24.0.0")


@pytest.mark.parametrize("python", PYTHONS)
def test_extras_exclude_the_pyarrow_that_aborts_where_numpy_allows(python):
    """From Python 3.12 (numpy 2 throughout) every pyarrow requirement excludes 21-24; below it,
    numpy 1 (spaCy 3.7) caps pyarrow at 21 and the readers go by path instead."""
    from packaging.requirements import Requirement

    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    env = {"python_version": python, "python_full_version": f"{python}.0"}
    specs = [Requirement(r) for reqs in extras.values() for r in reqs]
    active = [r for r in specs if r.name == "pyarrow" and (r.marker is None or r.marker.evaluate(env))]
    assert active, f"no pyarrow requirement applies on Python {python}"
    for req in active:
        admitted = [v for v in PYARROW_ABORTS_AT_EXIT if req.specifier.contains(v)]
        if python >= "3.12":
            assert admitted == [], f"{req} admits pyarrow {admitted} on Python {python}"
        else:
            assert not req.specifier.contains("22.0.0"), f"{req}: pyarrow 22+ needs numpy 2"

"""The CUDA meta-entity kernels' indexing, checked on the host (no GPU needed).

tests/kernel_layouts_check.cpp includes csrc/cuda/kernel_layouts.h (the shared-memory layouts,
the staging slots, the tile and split sizes the CUDA kernels use) and emulates the kernels' loops:
region bounds and alignment, bank conflicts, every score-matrix element written exactly once,
every candidate visited once per anchor, and which vocabularies take the mining fallback.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPILER = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler on PATH")
def test_cuda_kernel_layouts_emulated_on_the_host(tmp_path):
    exe = tmp_path / "kernel_layouts_check"
    subprocess.run([COMPILER, "-std=c++17", "-O1", "-Wall", f"-I{ROOT / 'csrc'}",
                    str(ROOT / "tests" / "kernel_layouts_check.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, text=True, timeout=300)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok"), run.stdout

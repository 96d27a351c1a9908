"""The README cannot rot: every ```python block of README.md runs as written.

Each block runs on its own (a fresh namespace: a block defines what it uses) in a temporary
working folder, so files it writes (runs/, mydata/) go there. Lines that need a GPU are guarded in
the block itself (``if torch.cuda.is_available():``), so every block runs on a CPU.

A block that genuinely needs data that cannot be made here (MIMIC-CXR, local model weights) may
be preceded, on the line just before its opening fence, by the marker

    <!-- readme-test: compile-only: <why> -->

and is then only compiled. No block needs it today; a marker without a reason fails the test.
The shell recipe of "Train on your own data" runs in ``tests/test_train_cli.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*compile-only:?(.*?)-->")


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line of the opening fence, source, compile-only reason or None) of each ```python block."""
    blocks, lines = [], text.splitlines()
    k = 0
    while k < len(lines):
        if lines[k].strip() == "```python":
            start = k
            end = next((j for j in range(k + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"README.md:{start + 1}: a ```python block is never closed"
            marker = MARKER.search(lines[start - 1]) if start > 0 else None
            reason = marker.group(1).strip() if marker else None
            blocks.append((start + 1, "\n".join(lines[start + 1:end]) + "\n", reason))
            k = end
        k += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_its_python_blocks():
    assert len(BLOCKS) >= 7  # guards the parser: an unparsed README would pass vacuously
    for line, _, reason in BLOCKS:
        assert reason is None or reason, f"README.md:{line}: a compile-only marker needs a reason"


@pytest.mark.parametrize("line, source, reason", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_readme_python_block_runs(line, source, reason, tmp_path, monkeypatch):
    code = compile(source, f"README.md:{line}", "exec")  # tracebacks name the README line
    if reason is not None:
        pytest.skip(f"compile-only: {reason}")
    monkeypatch.chdir(tmp_path)
    exec(code, {"__name__": "__readme__"})

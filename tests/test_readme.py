"""The README and docs/ cannot rot: every ```python block of README.md and of docs/*.md runs as
written, and every link, repository path and module name they mention exists.

Each block runs on its own (a fresh namespace: a block defines what it uses) in a temporary
working folder, so files it writes (runs/, mydata/) go there. Lines that need a GPU are guarded in
the block itself (``if torch.cuda.is_available():``), so every block runs on a CPU. Test ids name
the file and the line of the opening fence (``README.md:line48``, ``docs/ops.md:line60``).

A block that genuinely needs data that cannot be made here (MIMIC-CXR, local model weights) may
be preceded, on the line just before its opening fence, by the marker

    <!-- readme-test: compile-only: <why> -->

and is then only compiled. No block needs it today; a marker without a reason fails the test.
The shell recipe of "Train on your own data" runs in ``tests/test_train_cli.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MARKER = re.compile(r"<!--\s*readme-test:\s*compile-only:?(.*?)-->")


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def python_blocks(text: str, name: str = "README.md") -> list[tuple[int, str, str | None]]:
    """(line of the opening fence, source, compile-only reason or None) of each ```python block."""
    blocks, lines = [], text.splitlines()
    k = 0
    while k < len(lines):
        if lines[k].strip() == "```python":
            start = k
            end = next((j for j in range(k + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"{name}:{start + 1}: a ```python block is never closed"
            marker = MARKER.search(lines[start - 1]) if start > 0 else None
            reason = marker.group(1).strip() if marker else None
            blocks.append((start + 1, "\n".join(lines[start + 1:end]) + "\n", reason))
            k = end
        k += 1
    return blocks


BLOCKS = [(page_name(page), line, source, reason)
          for page in PAGES
          for line, source, reason in python_blocks(page.read_text(encoding="utf-8"), page_name(page))]


def test_the_readme_has_its_python_blocks():
    readme_blocks = [b for b in BLOCKS if b[0] == "README.md"]
    assert len(readme_blocks) >= 7  # guards the parser: an unparsed README would pass vacuously
    assert (DOCS / "README.md").is_file() and len(PAGES) > 2  # docs/ is collected too
    for name, line, _, reason in BLOCKS:
        assert reason is None or reason, f"{name}:{line}: a compile-only marker needs a reason"


@pytest.mark.parametrize("name, line, source, reason", BLOCKS, ids=[f"{b[0]}:line{b[1]}" for b in BLOCKS])
def test_readme_python_block_runs(name, line, source, reason, tmp_path, monkeypatch):
    code = compile(source, f"{name}:{line}", "exec")  # tracebacks name the file and line
    if reason is not None:
        pytest.skip(f"compile-only: {reason}")
    monkeypatch.chdir(tmp_path)
    exec(code, {"__name__": "__readme__"})


def test_the_objectives_example_trains_the_logit_temperature(tmp_path, monkeypatch):
    """The README's own loop gives the optimizer the objective's parameters: InfoNCE's learnable
    logit temperature changes over its steps (a copied loop without them would keep 1 / 0.07)."""
    import torch

    found = [b for b in BLOCKS if b[0] == "README.md" and "*objective.parameters()" in b[2]]
    assert len(found) == 1, "the README's objectives example must optimise objective.parameters()"
    _, line, source, _ = found[0]
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__readme__"}
    exec(compile(source, f"README.md:{line}", "exec"), ns)
    objective, opt = ns["objective"], ns["opt"]
    optimised = {id(p) for group in opt.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in objective.parameters())
    scale = objective.parts["infonce"].loss.logit_scale.item()
    assert abs(scale - 1 / 0.07) > 1e-3, f"the logit scale did not train: {scale}"
    assert torch.isfinite(torch.tensor(scale))


# ---- links, paths and module names ------------------------------------------------------------

def prose(text: str) -> str:
    """The text outside fenced blocks (shell examples name files that do not exist here)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a markdown page's headings."""
    heads = re.findall(r"^#+\s+(.*)$", prose(page.read_text(encoding="utf-8")), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def spans(page: Path) -> list[tuple[int, str]]:
    """(line, content) of every inline code span outside fenced blocks."""
    return [(n, m.group(1)) for n, line in enumerate(prose(page.read_text(encoding="utf-8")).splitlines(), 1)
            for m in re.finditer(r"`([^`]+)`", line)]


def test_links_point_at_files_and_headings_that_exist():
    bad = []
    for page in PAGES:
        for n, line in enumerate(prose(page.read_text(encoding="utf-8")).splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):
                    continue  # http(s), mailto
                path, _, fragment = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                if not dest.exists():
                    bad.append(f"{page_name(page)}:{n}: {target} (no such file)")
                elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                    bad.append(f"{page_name(page)}:{n}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


REPO_PREFIXES = ("medtrim_ext/", "csrc/", "python/", "benchmarks/", "tests/", "docs/", ".ci/")
REPO_FILES = {"CMakeLists.txt", "pyproject.toml", "Makefile", "constraints.txt"}
GENERATED = ("benchmarks/out/",)  # written by make demo / make bench
SOURCE_SUFFIXES = (".py", ".cpp", ".cu", ".h", ".md", ".yaml", ".json", ".sh")


def test_repository_paths_exist():
    sources = [p.relative_to(ROOT).as_posix() for d in ("medtrim_ext", "csrc", "python", "benchmarks", "tests")
               for p in (ROOT / d).rglob("*") if p.is_file()]
    bad = []
    for page in PAGES:
        for n, span in spans(page):
            if any(c in span for c in "<>*{} ") or span.startswith(GENERATED):
                continue
            if span.startswith(REPO_PREFIXES) or span in REPO_FILES:
                if not (ROOT / span.rstrip("/")).exists():
                    bad.append(f"{page_name(page)}:{n}: {span}")
            elif page != DOCS / "paper.md" and (  # paper.md cites the published repository's files
                    ("/" in span and span.endswith(SOURCE_SUFFIXES)) or span.endswith((".py", ".cpp", ".cu", ".h"))):
                # a file named relative to its folder (docs/architecture.md: `models/image.py`)
                if not any(s == span or s.endswith("/" + span) for s in sources):
                    bad.append(f"{page_name(page)}:{n}: {span}")
    assert not bad, "paths that do not exist:\n" + "\n".join(bad)


# modules of the earlier flat layout: docs/architecture.md lists where they went; they no longer import
MOVED = {"medtrim_ext.loss", "medtrim_ext.contrastive", "medtrim_ext.objective", "medtrim_ext.memory_bank",
         "medtrim_ext.vocabulary", "medtrim_ext.bits", "medtrim_ext.synthetic", "medtrim_ext.offline",
         "medtrim_ext.reference", "medtrim_ext.tokenization", "medtrim_ext.io", "medtrim_ext.cli",
         "medtrim_ext.demo", "medtrim_ext.mining_demo", "medtrim_ext.training.objectives",
         "medtrim_ext.training.evaluate"}


def resolves(name: str) -> bool:
    """Whether ``a.b.c`` is a module, or an attribute of the longest importable module prefix."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        try:
            for part in parts[k:]:
                obj = getattr(obj, part)
        except AttributeError:
            return False
        return True
    return False


def test_module_names_exist():
    bad = []
    for page in PAGES:
        for n, span in spans(page):
            m = re.fullmatch(r"(medtrim_ext(?:\.\w+)+)(\(.*\))?", span)
            if m is None:
                continue
            name = m.group(1)
            if name in MOVED and page == DOCS / "architecture.md":
                if importlib.util.find_spec(name) is not None:
                    bad.append(f"{page_name(page)}:{n}: {name} is listed as moved but still imports")
            elif not resolves(name):
                bad.append(f"{page_name(page)}:{n}: {name}")
    assert not bad, "module names that do not resolve:\n" + "\n".join(bad)


def test_keyword_comments_sit_on_the_call_that_takes_them():
    # The README once wrote "MetaEntities.from_records(records)  # n_process=4", a keyword that
    # from_records does not take (it is EntityExtractor.extract's). A comment that names a keyword
    # as "name=" must sit on a line that calls something taking it.
    import inspect

    from medtrim_ext import EntityExtractor, MetaEntities

    takes = {"from_records": set(inspect.signature(MetaEntities.from_records).parameters),
             "extract": set(inspect.signature(EntityExtractor.extract).parameters)}
    assert "n_process" in takes["extract"] and "n_process" not in takes["from_records"]
    for name, line, source, _ in BLOCKS:
        for k, text in enumerate(source.splitlines()):
            code, _, comment = text.partition("#")
            for call, params in takes.items():
                if f".{call}(" not in code:
                    continue
                for keyword in re.findall(r"\b([a-z_]+)=", comment):
                    assert keyword in params, (f"{name}:{line + k + 1}: the comment names {keyword}=, "
                                               f"which {call} does not take: {text.strip()}")

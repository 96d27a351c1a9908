"""The core install, as a user with only torch and numpy 2 gets it: the package is built into a
fresh virtual environment that holds torch (the pinned one, reused from this environment), numpy 2
and the build tools, and nothing of any extra. There the core names import, the kernels mine and
the fused loss runs forward and backward equal to the reference, and the modules of the extras
raise an ImportError naming the extra.

Slow by nature (a C++-only build of the kernels, about 1-2 minutes on 2 cores); set
MEDTRIM_SKIP_CORE_INSTALL=1 to skip it locally.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# numpy 2 for the core venv (the [all] environment pins numpy 1.26 for spaCy 3.7 on Python 3.11)
CORE_NUMPY = "numpy==2.4.6"
BUILD_TOOLS = ("scikit-build-core", "cmake", "ninja")

pytestmark = pytest.mark.skipif(os.environ.get("MEDTRIM_SKIP_CORE_INSTALL") == "1",
                                reason="MEDTRIM_SKIP_CORE_INSTALL=1")


def pinned(name: str) -> str:
    """``name==version`` from constraints.txt (the versions `make test` installs)."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec and Requirement(spec).name.lower() == name.lower():
            return spec
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def torch_closure() -> list[metadata.Distribution]:
    """torch and every distribution it needs here (markers evaluated, extras followed): what a
    plain `pip install torch==<pin>` gives, found among this environment's installed packages."""
    seen, todo = {}, [("torch", frozenset())]
    while todo:
        name, extras = todo.pop()
        key = name.lower().replace("_", "-")
        dist = metadata.distribution(name)
        new_extras = extras - seen.get(key, (None, frozenset()))[1]
        if key in seen and not new_extras:
            continue
        seen[key] = (dist, seen.get(key, (None, frozenset()))[1] | extras)
        for spec in dist.requires or ():
            req = Requirement(spec)
            envs = [{"extra": e} for e in (extras or {""})]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return [dist for dist, _ in seen.values()]


def link_torch(target: Path) -> None:
    """Symlink torch and its dependencies' files into ``target``: the new venv reuses the pinned
    torch (about 5 GB as a CUDA build) instead of installing a second copy."""
    target.mkdir()
    for dist in torch_closure():
        site = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}:
            if not (target / top).exists() and (site / top).exists():
                (target / top).symlink_to(site / top)


def run(cmd, **kwargs):
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    shown = " ".join(str(c) if len(str(c)) < 200 else "<script>" for c in cmd)
    assert done.returncode == 0, f"{shown} failed (rc {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


CORE_CHECK = textwrap.dedent("""
    import importlib, json, numpy, torch
    assert int(numpy.__version__.split(".")[0]) >= 2, numpy.__version__
    for name in ("spacy", "medspacy", "pandas", "pyarrow", "timm", "transformers", "sklearn",
                 "tqdm", "yaml", "matplotlib"):
        assert importlib.util.find_spec(name) is None, f"{name} is in the core venv"

    import medtrim_ext
    from medtrim_ext import (MedTrimObjective, MetaEntities, MultimodalTripletLoss, TripletMiner,
                             Triplets, Vocabulary, reference)
    from medtrim_ext.losses import InfoNCEObjective, MemoryBank, SoftInfoNCEObjective
    from medtrim_ext.utils.io import load_records

    records = [{"pleural effusion": {"adjs": ["small"], "dirs": ["left"]}},
               {"pleural effusion": {"adjs": ["small", "lower"], "dirs": ["left"]}},
               {"pleural effusion": {"adjs": ["large"], "dirs": ["right"]}},
               {"cardiomegaly": {"adjs": ["mild"], "dirs": []}},
               {"cardiomegaly": {"adjs": ["moderate"], "dirs": []}, "edema": {"adjs": [], "dirs": []}},
               {}, {}, {"pneumothorax": {"adjs": ["small", "upper"], "dirs": ["right"]}}]
    ents = MetaEntities.from_records(records)
    # the semi-hard rule for every anchor and lowest-index ties: the reference's defaults
    triplets = TripletMiner(semi_hard_prob=1.0, tie_break="first")(ents)
    ref = reference.mine_triplets(ents)
    assert bool(triplets.valid.any())
    for got, want in zip(triplets, ref):
        assert torch.equal(got, want), (got, want)

    torch.manual_seed(0)
    img = torch.randn(len(records), 16, requires_grad=True)
    txt = torch.randn(len(records), 16, requires_grad=True)
    loss_img, loss_txt = MultimodalTripletLoss(margin=0.3)(img, txt, triplets)
    (loss_img + loss_txt).backward()
    img_r = img.detach().clone().requires_grad_(True)
    txt_r = txt.detach().clone().requires_grad_(True)
    ref_img, ref_txt = reference.multimodal_triplet_loss(img_r, txt_r, *triplets, margin=0.3)
    (ref_img + ref_txt).backward()
    torch.testing.assert_close(loss_img, ref_img)
    torch.testing.assert_close(loss_txt, ref_txt)
    torch.testing.assert_close(img.grad, img_r.grad)
    torch.testing.assert_close(txt.grad, txt_r.grad)
    assert float(loss_img + loss_txt) > 0

    for module, extra in (("medtrim_ext.extraction", "extract"), ("medtrim_ext.models", "train"),
                          ("medtrim_ext.training", "train"), ("medtrim_ext.datasets", "train"),
                          ("medtrim_ext.evaluation", "train")):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            assert f'pip install "medtrim_ext[{extra}]"' in str(exc), (module, str(exc))
            assert type(exc).__name__ == "MissingExtraError", type(exc)
        else:
            raise AssertionError(f"{module} imported without its extra")
    try:
        medtrim_ext.EntityExtractor
    except ImportError as exc:
        assert 'medtrim_ext[extract]' in str(exc)
    else:
        raise AssertionError("medtrim_ext.EntityExtractor without spaCy")
    print(json.dumps({"numpy": numpy.__version__, "torch": torch.__version__,
                      "backends": medtrim_ext.build_info()["backends"]}))
""")


def test_core_install_with_numpy2(tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    link_torch(tmp_path / "torch_site")
    (site / "pinned_torch.pth").write_text(str(tmp_path / "torch_site") + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_CONSTRAINT", "PYTHON"))}
    env["MEDTRIM_CUDA"] = "OFF"  # C++ only: the CUDA build is CI's slowest part and needs no new check here
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    run(pip + [CORE_NUMPY, *(pinned(t) for t in BUILD_TOOLS)], env=env, timeout=900)
    # the core install: no extras; the build compiles against the venv's (linked) torch
    run(pip + ["--no-build-isolation", "--no-deps", "--config-settings",
               f"build-dir={tmp_path / 'build'}", str(ROOT)], env=env, timeout=1800)
    # what `pip install .` asks for beyond itself: torch and numpy, nothing else without an extra
    requires = json.loads(run([str(py), "-c", "import importlib.metadata as m, json; "
                               "print(json.dumps(m.requires('medtrim_ext')))"], env=env).stdout)
    core = sorted(Requirement(r).name for r in requires if "extra ==" not in r)
    assert core == ["numpy", "torch"], requires

    out = run([str(py), "-c", CORE_CHECK], env=env, cwd=tmp_path, timeout=600)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["numpy"].startswith("2.") and info["backends"] == ["cpu"], info

    # the command line of the core: help and mining work; a command of an extra names it
    medtrim = str(venv / "bin" / "medtrim")
    run([medtrim, "--version"], env=env, cwd=tmp_path)
    records = tmp_path / "records.jsonl"
    records.write_text("\n".join(json.dumps({"id": f"s{i}", "entities": r}) for i, r in enumerate(
        [{"edema": {"adjs": ["mild"], "dirs": []}}, {"edema": {"adjs": ["mild"], "dirs": []}},
         {"edema": {"adjs": ["severe"], "dirs": ["left"]}}, {}, {}])) + "\n")
    run([medtrim, "mine", str(records), "-o", str(tmp_path / "triplets.csv")], env=env, cwd=tmp_path)
    assert (tmp_path / "triplets.csv").read_text().count("\n") >= 2
    # Parquet records need pyarrow, which the core lacks: the error names the extra
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"study_id": ["a", "b", "c"],
                             "entities": ["{}", '{"edema": {"adjs": [], "dirs": []}}', "{}"]}),
                   tmp_path / "records.parquet")
    failed = subprocess.run([medtrim, "mine", str(tmp_path / "records.parquet"), "-o",
                             str(tmp_path / "t2.csv")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert failed.returncode == 2 and 'pip install "medtrim_ext[extract]"' in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr and not (tmp_path / "t2.csv").exists()
    failed = subprocess.run([medtrim, "extract", str(records), "-o", str(tmp_path / "x.jsonl")],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert failed.returncode == 2 and 'pip install "medtrim_ext[extract]"' in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr

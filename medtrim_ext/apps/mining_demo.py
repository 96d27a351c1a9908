"""The mining demo behind ``medtrim mine-demo``: mine triplets on generated records.

It generates seeded synthetic meta-entities, mines one triplet per record with the fused kernel,
checks the result against the pure-PyTorch reference (and the CUDA kernel against the CPU kernel
when a GPU is present), prints statistics and example triplets, and writes ``triplets.csv``,
``summary.json`` and, where matplotlib is installed, ``scores.png`` to the output folder (atomically).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import torch

from .. import build_info
from ..ops import reference
from ..utils.io import atomic_write
from ..mining.miner import TripletMiner, Triplets
from ..entities.synthetic import synthetic_entities

REFERENCE_MAX_N = 4096  # the reference materializes N x N float64 matrices


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def _describe(record: dict) -> str:
    if not record:
        return "no finding"
    parts = []
    for disease, spec in record.items():
        words = spec["adjs"] + spec["dirs"]
        parts.append(f"{disease} ({', '.join(words)})" if words else disease)
    return "; ".join(parts)


def _plot_scores(path: Path, pos: torch.Tensor, neg: torch.Tensor, miner: TripletMiner) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = torch.linspace(0, max(1.0, float(pos.max()) if len(pos) else 1.0), 41).tolist()
    ax.hist(pos.tolist(), bins=bins, alpha=0.6, label="anchor-positive")
    ax.hist(neg.tolist(), bins=bins, alpha=0.6, label="anchor-negative")
    ax.axvline(miner.threshold, color="k", ls="--", lw=1, label=f"threshold {miner.threshold}")
    ax.axvline(miner.upper, color="r", ls=":", lw=1, label=f"upper {miner.upper}")
    ax.set_xlabel("meta-entity score")
    ax.set_ylabel("triplets")
    ax.set_title("Scores of mined pairs")
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def run(n: int = 4096, seed: int = 0, out: Path = Path("medtrim-demo"),
        device: torch.device = torch.device("cpu")) -> int:
    info = build_info()
    print(f"medtrim_ext {info['version']}: kernels for {', '.join(info['backends'])} "
          f"(torch {info['torch_version']}); running on {device}")
    ents_cpu = synthetic_entities(n, seed=seed)
    ents = ents_cpu.to(device)
    records = ents_cpu.to_records()
    miner = TripletMiner()
    gen_seed = seed + 1

    triplets, t_kernel = _timed(lambda: miner(ents, generator=torch.Generator().manual_seed(gen_seed)))
    print(f"mined {n} anchors x {n} candidates with the fused kernel in {t_kernel * 1e3:.1f} ms "
          f"({n * n / t_kernel / 1e6:.0f} M pair scores/s)")
    checks = {}
    if n <= REFERENCE_MAX_N:
        draw = miner.draw(n, torch.Generator().manual_seed(gen_seed))  # the kernel call's choices
        ref, t_ref = _timed(lambda: reference.mine_triplets(
            ents_cpu, **miner.weights, threshold=miner.threshold, upper=miner.upper,
            semi_hard=draw.semi_hard, tie_seed=draw.tie_seed))
        same = all(torch.equal(a.cpu(), b) for a, b in zip(triplets, ref))
        checks["reference"] = {"identical": same, "reference_ms": 1e3 * t_ref}
        print(f"pure-PyTorch reference: {t_ref * 1e3:.1f} ms, identical triplets: {same}")
    if device.type == "cuda":
        cpu_t = miner(ents_cpu, generator=torch.Generator().manual_seed(gen_seed))
        same = all(torch.equal(a.cpu(), b) for a, b in zip(triplets, cpu_t))
        checks["cpu_vs_cuda"] = {"identical": same}
        print(f"CUDA kernel identical to CPU kernel: {same}")

    triplets = triplets.to("cpu")
    pos_s, neg_s = miner.triplet_scores(ents_cpu, triplets)
    valid = triplets.valid
    summary = {
        "n": n, "seed": seed, "device": str(device), "miner": repr(miner), "kernel_ms": 1e3 * t_kernel,
        "valid_triplets": int(valid.sum()),
        "no_finding_share": float((ents_cpu.disease_bits == 0).float().mean()),
        "mean_positive_score": float(pos_s[valid].mean()) if valid.any() else None,
        "mean_negative_score": float(neg_s[valid].mean()) if valid.any() else None,
        "semi_hard_negatives": int(((neg_s >= miner.threshold) & valid).sum()),
        "checks": checks, "build": info,
    }
    print(f"valid triplets: {summary['valid_triplets']} / {n}; mean score positive "
          f"{summary['mean_positive_score']:.3f}, negative {summary['mean_negative_score']:.3f}; "
          f"{summary['semi_hard_negatives']} negatives in [threshold, upper)")

    print("\nexample triplets:")
    shown = 0
    for a in valid.nonzero().flatten().tolist():
        if not records[a] or shown >= 3:
            continue
        p, q = triplets.positive[a].item(), triplets.negative[a].item()
        print(f"  anchor   #{a}: {_describe(records[a])}")
        print(f"  positive #{p}: {_describe(records[p])}  [score {pos_s[a]:.3f}]")
        print(f"  negative #{q}: {_describe(records[q])}  [score {neg_s[a]:.3f}]\n")
        shown += 1

    out = Path(out)
    with atomic_write(out / "triplets.csv", newline="") as f:
        w = csv.writer(f)
        w.writerow(["anchor", "positive", "negative", "positive_score", "negative_score"])
        for row in zip(*(t.tolist() for t in triplets), pos_s.tolist(), neg_s.tolist()):
            w.writerow(row)
    with atomic_write(out / "summary.json") as f:
        json.dump(summary, f, indent=1)
    written = [out / "triplets.csv", out / "summary.json"]
    try:
        _plot_scores(out / "scores.png", pos_s[valid], neg_s[valid], miner)
        written.append(out / "scores.png")
    except ModuleNotFoundError as exc:   # matplotlib is not a core dependency: the checks still run
        if not (exc.name or "").startswith("matplotlib"):
            raise
        print(f"scores.png not written ({exc}; it comes with pip install \"medtrim_ext[train]\")")
    print("wrote " + ", ".join(map(str, written)))
    failed = [k for k, v in checks.items() if not v["identical"]]
    if failed:
        print(f"ERROR: kernel results differ from {failed}")
        return 1
    return 0

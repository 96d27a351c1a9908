"""Choose the demo's objectives and their settings on the VALIDATION split (never the test split).

Trains every candidate objective with the demo preset (``medtrim_ext/data/configs/demo.yaml``)
for each seed, evaluates image->text and text->image retrieval on the phantoms' validation split
(600 studies, generated from their own seed), and ranks the candidates by the selection criterion
fixed before any run: the mean of the four fine-grained metrics (i2t / t2i precision@5 and mAP),
averaged over seeds. The demo then uses the winner of each family; ``benchmarks/RESULTS.md``
records this table.

    python benchmarks/select_objective.py --out benchmarks/out/selection --steps 900 --seeds 0 1
    python benchmarks/select_objective.py --only soft-t0.1-w0.5 infonce   # a subset (e.g. 2 processes)
    python benchmarks/select_objective.py --dataset iu-phantoms --out benchmarks/out/selection-iu

Runs are reused when the script is started again (each run resumes from its checkpoint and its
validation result is cached), so it can be interrupted, split over processes
(``OMP_NUM_THREADS=1`` each) and completed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

CRITERION = ("i2t/fine/precision@5", "t2i/fine/precision@5", "i2t/fine/mAP", "t2i/fine/mAP")
REPORTED = CRITERION + ("i2t/disease/mAP", "t2i/disease/mAP", "i2t/graded/ndcg@10", "t2i/graded/ndcg@10",
                       "i2t/disease/pair_recall@5", "t2i/disease/pair_recall@5")
# the per-attribute diagnostic (kept with every run; shown with --attributes)
ATTRIBUTES = tuple(f"attributes/{d}/{k}/{s}@5" for d in ("i2t", "t2i") for k in ("side", "size", "zone")
                   for s in ("same", "same_given_disease"))
# the hub diagnostic: "no finding" share of the top 5, distinct items in any top 5, hub share
HUB = tuple(f"attributes/{d}/hub/{s}@5" for d in ("i2t", "t2i") for s in ("no_finding", "distinct", "hub_share"))

ATTR_WEIGHTS = "objective.soft_weights=[0.5, 0.3, 0.2]"
MEDTRIM_X2 = "objective.weights={medtrim: 2.0}"


def _soft(kind: str, temperature: float, own_weight: float, *extra: str) -> list[str]:
    """The overrides of an arm with soft InfoNCE targets (``extra``: weights of the sum, score)."""
    out = [f"objective.kind={kind}"]
    if MEDTRIM_X2 in extra:
        out.append(MEDTRIM_X2)
    out += [f"objective.target_temperature={temperature}", f"objective.soft_own_weight={own_weight}"]
    return out + [e for e in extra if e != MEDTRIM_X2]


# name -> (family, config overrides). Families: the arms of the demo.
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "infonce": ("infonce", ["objective.kind=infonce"]),
    "infonce-t0.1": ("infonce", ["objective.kind=infonce", "objective.logit_temperature=0.1"]),
    # the published loss: in-batch (random ties) and the published offline pools
    "medtrim": ("medtrim", ["objective.kind=medtrim"]),
    "medtrim-offline": ("medtrim", ["objective.kind=medtrim_offline", "train.batch_size=63"]),
    # the published loss plus a term that ties each image to its own report
    "medtrim+infonce": ("combined", ["objective.kind=medtrim+infonce"]),
    "medtrim0.25+infonce": ("combined", ["objective.kind=medtrim+infonce", "objective.weights={medtrim: 0.25}"]),
    "medtrim0.5+infonce": ("combined", ["objective.kind=medtrim+infonce", "objective.weights={medtrim: 0.5}"]),
    "medtrim2+infonce": ("combined", ["objective.kind=medtrim+infonce", "objective.weights={medtrim: 2.0}"]),
    "medtrim0.5+infonce-bank512": ("combined", ["objective.kind=medtrim+infonce",
                                                "objective.weights={medtrim: 0.5}",
                                                "objective.memory_bank=512"]),
    "medtrim+infonce-minpos0.5": ("combined", ["objective.kind=medtrim+infonce",
                                               "objective.min_positive_score=0.5"]),
    # InfoNCE with meta-entity soft targets
    "soft-t0.05-w0.5": ("combined", _soft("soft_infonce", 0.05, 0.5)),
    "soft-t0.1-w0.5": ("combined", _soft("soft_infonce", 0.1, 0.5)),
    "soft-t0.1-w0.25": ("combined", _soft("soft_infonce", 0.1, 0.25)),
    "soft-t0.2-w0.5": ("combined", _soft("soft_infonce", 0.2, 0.5)),
    "medtrim+soft-t0.1-w0.5": ("combined", _soft("medtrim+soft_infonce", 0.1, 0.5)),
    "medtrim+soft-t0.05-w0.5": ("combined", _soft("medtrim+soft_infonce", 0.05, 0.5)),
    # round 2, after the validation diagnostic (within a disease, soft targets at temperature 0.1
    # agree less on size and zone than InfoNCE): targets that reward descriptor matches more
    "medtrim+soft-t0.02-w0.5": ("combined", _soft("medtrim+soft_infonce", 0.02, 0.5)),
    "medtrim+soft-t0.05-w0.5-attr": ("combined", _soft("medtrim+soft_infonce", 0.05, 0.5, ATTR_WEIGHTS)),
    "medtrim+soft-t0.1-w0.5-attr": ("combined", _soft("medtrim+soft_infonce", 0.1, 0.5, ATTR_WEIGHTS)),
    "medtrim2+soft-t0.1-w0.5": ("combined", _soft("medtrim+soft_infonce", 0.1, 0.5, MEDTRIM_X2)),
    "medtrim2+soft-t0.05-w0.5": ("combined", _soft("medtrim+soft_infonce", 0.05, 0.5, MEDTRIM_X2)),
}


def run_one(name: str, overrides: list[str], seed: int, steps: int, out: Path,
            refresh: bool = False, dataset: str = "phantoms") -> dict:
    from medtrim_ext.training import load_config, train
    from medtrim_ext.training.builders import resolve_device
    from medtrim_ext.training.distributed import DistContext
    from medtrim_ext.evaluation.run import evaluate_model, load_trained
    from medtrim_ext.utils.io import atomic_write
    from medtrim_ext.apps.demo import DATASETS

    run_dir = out / "runs" / f"{name}-seed{seed}"
    cached = run_dir / "validate.json"
    if cached.exists() and not (refresh and not set(REPORTED + ATTRIBUTES + HUB) <= set(json.loads(cached.read_text())["metrics"])):
        return json.loads(cached.read_text())
    cfg = load_config("demo", list(DATASETS[dataset]) + overrides + [f"train.steps={steps}", f"train.seed={seed}",
                                           f"train.out_dir={run_dir}", "train.progress=false",
                                           "train.tensorboard=false", "train.device=cpu",
                                           f"data.cache_dir={out / 'entity-cache'}",
                                           "data.eval_split=validate", "eval.probe=false"])
    result = train(cfg)
    dev = resolve_device("cpu", DistContext())
    model, tokenizer, _, _ = load_trained(result["checkpoint"], dev)
    ev = evaluate_model(model, tokenizer, cfg, dev, progress=False)
    row = {"name": name, "seed": seed, "steps": steps, "overrides": overrides, "dataset": dataset,
           "validation_studies": ev["num_samples"],
           "metrics": {k: _metric(ev, k) for k in REPORTED + ATTRIBUTES + HUB}, "wall_s": result["wall_s"],
           "step_time": result["step_time"]}
    with atomic_write(cached) as f:
        json.dump(row, f, indent=1)
    return row


def _metric(ev: dict, path: str) -> float:
    node = ev
    for part in path.split("/"):
        node = node[part]
    return float(node)


def table(rows: list[dict], columns=REPORTED) -> str:
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    lines = ["| candidate | family | seeds | criterion (mean of 4 fine) | " +
             " | ".join(columns) + " |", "|---|---|---|---:|" + "---:|" * len(columns)]
    scored = []
    for name, rs in by_name.items():
        means = {k: sum(r["metrics"].get(k, float("nan")) for r in rs) / len(rs) for k in
                 set(columns) | set(CRITERION)}
        crit = sum(means[k] for k in CRITERION) / len(CRITERION)
        scored.append((crit, name, rs, means))
    for crit, name, rs, means in sorted(scored, reverse=True):
        seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
        lines.append(f"| {name} | {CANDIDATES.get(name, ('?',))[0]} | {seeds} | {crit:.4f} | " +
                     " | ".join(f"{means[k]:.3f}" for k in columns) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/out/selection")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--dataset", default="phantoms", choices=["phantoms", "iu-phantoms"],
                   help="the demo dataset whose validation split chooses (default: phantoms)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", nargs="+", default=None, help="candidate names (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--refresh", action="store_true",
                   help="re-evaluate finished runs whose cached result lacks a reported metric or diagnostic")
    p.add_argument("--attributes", action="store_true",
                   help="also write attributes.md: the per-attribute top-5 agreement per candidate")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidates {unknown}; known: {list(CANDIDATES)}")
    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        for name in names:
            row = run_one(name, CANDIDATES[name][1], seed, args.steps, out, refresh=args.refresh,
                          dataset=args.dataset)
            rows.append(row)
            m = row["metrics"]
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {m[k]:.3f}" for k in CRITERION), flush=True)
    # the table over every finished run in the folder, not just this process's
    done = [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*/validate.json"))]
    done = [r for r in done if r["steps"] == args.steps and r.get("dataset", "phantoms") == args.dataset]
    md = table(done)
    studies = sorted({r.get("validation_studies", 600) for r in done})
    from medtrim_ext.utils.io import atomic_write

    with atomic_write(out / "selection.md") as f:
        f.write(f"# Validation-split selection on {args.dataset} ({args.steps} steps)\n\nCriterion: mean "
                f"of {', '.join(CRITERION)} over seeds (validation split, {studies} studies).\n\n{md}\n")
    print("\n" + md)
    if args.attributes:
        with_attrs = [r for r in done if set(ATTRIBUTES + HUB) <= set(r["metrics"])]
        attrs = table(with_attrs, ATTRIBUTES + HUB)
        with atomic_write(out / "attributes.md") as f:
            f.write(f"# Validation split: top-5 agreement per attribute kind ({args.steps} steps)\n\n"
                    f"{attrs}\n")
        print("\n" + attrs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a demo arm's fine-grained lead on the IU phantoms comes from: normal or abnormal queries.

Two thirds of the IU test studies are normal, and every normal study has the same ground truth,
so a model that puts all normal studies together scores high fine P@5 and mAP on them whatever it
does with the findings. For each run of a ``medtrim demo --dataset iu-phantoms`` output folder,
this re-embeds the test split and reports, per direction:

- fine P@5 and mAP over the abnormal queries alone and over the normal queries alone;
- abnormal queries whose top 5 holds only normal items (a finding retrieved as "no finding");
- normal queries whose top 5 holds only normal items;
- the hub: the most retrieved item, whether it is normal, and the share of queries with it in
  their top 5 (the collapse diagnostic's hub share).

    python benchmarks/iu_diagnostics.py benchmarks/out/demo-iu            # writes iu_diagnostics.md there
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def run_diagnostics(checkpoint: Path) -> dict:
    from medtrim_ext.evaluation.attributes import top_k
    from medtrim_ext.evaluation.retrieval import retrieval_metrics
    from medtrim_ext.evaluation.run import embed_dataset, load_trained, relevance_keys
    from medtrim_ext.training.builders import build_dataset

    dev = torch.device("cpu")
    model, tokenizer, cfg, _ = load_trained(checkpoint, dev)
    test = build_dataset(cfg, cfg.data.eval_split, train=False, progress=False)
    img, txt = embed_dataset(model, test, tokenizer, cfg, dev, False)
    fine = relevance_keys(test)["fine"]
    normal = torch.tensor([not a for a in test.attributes])
    out = {}
    for direction, (q, g) in {"i2t": (img, txt), "t2i": (txt, img)}.items():
        # the evaluation's own metrics, over each group of queries against the whole gallery
        group = {name: retrieval_metrics(q[mask], g, fine[mask], fine, ks=(5,))
                 for name, mask in (("abnormal", ~normal), ("normal", normal))}
        top = top_k(q, g, 5)
        all_normal = normal[top].all(1)
        counts = torch.bincount(top.flatten(), minlength=len(test))
        hub = int(counts.argmax())
        out[direction] = {
            **{f"{name} fine {label}": float(m[key]) for name, m in group.items()
               for label, key in (("P@5", "precision@5"), ("mAP", "mAP"))},
            "abnormal queries, all-normal top 5": float(all_normal[~normal].float().mean()),
            "normal queries, all-normal top 5": float(all_normal[normal].float().mean()),
            "hub share": float((top == hub).any(1).float().mean()), "hub is normal": bool(normal[hub]),
        }
    out["abnormal queries"] = int((~normal).sum())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo", help="a medtrim demo --dataset iu-phantoms output folder")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    demo = Path(args.demo)
    runs = sorted((demo / "runs").glob("*-seed*/last.pt"))
    if not runs:
        p.error(f"{demo} has no runs/<arm>-seed<N>/last.pt")
    results = {}
    for ckpt in runs:
        arm, seed = ckpt.parent.name.rsplit("-seed", 1)
        results.setdefault(arm, {})[int(seed)] = run_diagnostics(ckpt)
        print(f"{arm} seed {seed} done", flush=True)
    first = next(iter(next(iter(results.values())).values()))
    keys = [k for k in first["i2t"] if k != "hub is normal"]
    lines = ["# IU phantoms: abnormal and normal queries apart (test split; per seed 0 / 1 / 2)\n",
             f"{first['abnormal queries']} abnormal queries. The hub is the most retrieved item; "
             "'hub share' is the share of queries with it in their top 5.\n",
             "| direction | measure | " + " | ".join(results) + " |", "|---|---|" + "---|" * len(results)]
    for direction in ("i2t", "t2i"):
        for k in keys:
            cells = [" / ".join(f"{r[s][direction][k]:.3f}" for s in sorted(r)) for r in results.values()]
            lines.append(f"| {direction} | {k} | " + " | ".join(cells) + " |")
        cells = [" / ".join("yes" if r[s][direction]["hub is normal"] else "no" for s in sorted(r))
                 for r in results.values()]
        lines.append(f"| {direction} | hub is a normal study | " + " | ".join(cells) + " |")
    from medtrim_ext.utils.io import atomic_write

    with atomic_write(demo / "iu_diagnostics.md") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How many distinct samples the miner picks under each tie rule (random against lowest index).

Two settings, each mined with ``tie_break="random"`` and ``tie_break="first"``:

- in-batch: the built-in phantoms' training records (meta-entities extracted from the generated
  reports by the real spaCy/medspacy pipeline), in the demo's shuffled batches of 64, every anchor
  mining among its batch: distinct positives and negatives per 64 anchors, averaged over batches;
- a whole collection: the 3,955 IU / OpenI reports that ``torchxrayvision`` ships (read from the
  installed package), extracted and mined over the whole collection as ``medtrim mine`` does: how
  many anchors share the most common positive and negative, and how many distinct ones there are.

    python benchmarks/tie_spread.py --out benchmarks/out/ties
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch


def spread(triplets) -> dict:
    pos = [p for p in triplets.positive.tolist() if p >= 0]
    neg = [n for n in triplets.negative.tolist() if n >= 0]
    return {"distinct_positives": len(set(pos)), "distinct_negatives": len(set(neg)),
            "most_common_positive": Counter(pos).most_common(1)[0][1] if pos else 0,
            "most_common_negative": Counter(neg).most_common(1)[0][1] if neg else 0,
            "anchors": len(triplets.positive)}


def in_batch(records, batch: int, batches: int, seed: int) -> dict:
    from medtrim_ext import MetaEntities, TripletMiner

    ents = MetaEntities.from_records(records)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for rule in ("random", "first"):
        miner = TripletMiner(tie_break=rule)
        rows = []
        for b in range(batches):
            idx = torch.randperm(len(ents), generator=g)[:batch]
            rows.append(spread(miner(ents[idx], anchor_ids=idx,
                                     generator=torch.Generator().manual_seed(seed * 1000 + b))))
        out[rule] = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return out


def whole_collection(records) -> dict:
    from medtrim_ext import MetaEntities, TripletMiner

    ents = MetaEntities.from_records(records)
    return {rule: spread(TripletMiner(tie_break=rule)(ents, generator=torch.Generator().manual_seed(0)))
            for rule in ("random", "first")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/out/ties")
    p.add_argument("--batches", type=int, default=200)
    args = p.parse_args(argv)
    from medtrim_ext.utils.io import atomic_write
    from medtrim_ext.training import load_config
    from medtrim_ext.training.builders import build_dataset

    out = Path(args.out)
    cfg = load_config("demo", [f"data.cache_dir={out / 'entity-cache'}"])
    phantoms = build_dataset(cfg, "train", train=False, progress=False)
    report = {"phantoms_in_batch": in_batch(phantoms.records, cfg.train.batch_size, args.batches, 0)}
    try:
        from extraction_quality import find_iu_archive  # torchxrayvision's copy of the IU reports
        archive = find_iu_archive()
    except (ImportError, SystemExit) as exc:
        print(f"IU reports unavailable ({exc}): skipping the whole-collection case")
    else:
        from medtrim_ext import EntityExtractor, read_reports

        texts = read_reports(archive).texts
        report["iu_whole_collection"] = whole_collection(EntityExtractor().extract(texts))
    lines = ["| setting | rule | distinct positives | distinct negatives | anchors on the most common positive | on the most common negative |",
             "|---|---|---:|---:|---:|---:|"]
    for setting, rules in report.items():
        for rule, r in rules.items():
            lines.append(f"| {setting} ({r['anchors']:.0f} anchors) | {rule} | {r['distinct_positives']:.1f} | "
                         f"{r['distinct_negatives']:.1f} | {r['most_common_positive']:.1f} | "
                         f"{r['most_common_negative']:.1f} |")
    table = "\n".join(lines)
    print(table)
    with atomic_write(out / "ties.json") as f:
        json.dump(report, f, indent=1)
    with atomic_write(out / "ties.md") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())

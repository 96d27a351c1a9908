"""The ``medtrim`` command line: ``info``, ``demo``, ``train``, ``evaluate``, ``mine``,
``mine-demo`` and ``extract``."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch


def _add_miner_args(p: argparse.ArgumentParser) -> None:
    from ..mining import MINER_DEFAULTS as D, TIE_BREAKS

    g = p.add_argument_group("mining (defaults: the published MedTrim settings)")
    for name in ("w_dis", "w_adj", "w_dir", "threshold", "upper", "semi_hard_prob"):
        g.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(D, name))
    g.add_argument("--tie-break", choices=TIE_BREAKS, default=D.tie_break,
                   help="equal scores: a random tied candidate per anchor (default, as the published "
                        "random pools do in effect) or the lowest index")
    g.add_argument("--min-positive-score", type=float, default=D.min_positive_score,
                   help="no triplet for an anchor whose best candidate scores less (default 0: off)")
    g.add_argument("--seed", type=int, default=0, help="seed of the semi-hard/hard draw and the ties")


def _miner(args):
    from ..mining import MINER_DEFAULTS, TripletMiner

    return TripletMiner(**{name: getattr(args, name) for name in MINER_DEFAULTS.as_kwargs()})


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return device


def cmd_info(args) -> int:
    from .. import build_info

    print(json.dumps(build_info(), indent=1))
    return 0


def _mining_ids(anchors, candidates) -> tuple[list, list]:
    """Integer ids for the miner from two :class:`~medtrim_ext.utils.io.RecordsFile` (the same object
    when mining a file against itself): equal given ids share an integer, in both files alike
    (the same study never pairs with itself); an item without an id is its own sample, keyed by
    its file and position, so a bare record k of one file never shares an id with record k of the
    other (two files are two id spaces unless ids are given)."""
    keys = {}

    def key_ids(loaded, file_tag):
        out = []
        for k, (i, given) in enumerate(zip(loaded.ids, loaded.given)):
            key = ("id", str(i)) if given else ("position", file_tag, k)
            out.append(keys.setdefault(key, len(keys)))
        return out

    anchor_ids = key_ids(anchors, 0)
    return anchor_ids, (anchor_ids if candidates is anchors else key_ids(candidates, 1))


def cmd_mine(args) -> int:
    from tqdm import tqdm

    from ..entities.meta_entities import MetaEntities
    from ..utils.io import atomic_write, check_writable, load_records
    from ..mining.miner import Triplets

    check_writable(args.output, "output")   # before any work
    miner = _miner(args)
    device = _device(args.device)
    loaded = load_records(args.records)
    ids = loaded.ids
    anchors = MetaEntities.from_records(loaded.records, device=device)
    if args.candidates and Path(args.candidates).resolve() != Path(args.records).resolve():
        bank_loaded = load_records(args.candidates)
        bank = MetaEntities.from_records(bank_loaded.records, device=device)
    else:
        bank_loaded, bank = loaded, anchors
    bank_ids = bank_loaded.ids
    a_keys, b_keys = _mining_ids(loaded, bank_loaded)
    anchor_ids = torch.tensor(a_keys, dtype=torch.int64, device=device)
    bank_id_t = torch.tensor(b_keys, dtype=torch.int64, device=device)

    # one draw for the whole file, so the result does not depend on the chunk size
    draw = miner.draw(len(anchors), torch.Generator().manual_seed(args.seed))
    parts = []
    for start in tqdm(range(0, len(anchors), args.chunk_size), desc="mining", unit="chunk"):
        sl = slice(start, start + args.chunk_size)
        t = miner(anchors[sl], bank, anchor_ids=anchor_ids[sl], candidate_ids=bank_id_t,
                  draw=draw.rows(sl))
        parts.append(Triplets(t.anchor + start, t.positive, t.negative))
    triplets = Triplets(*(torch.cat(x) for x in zip(*parts))) if parts else Triplets(
        *(torch.empty(0, dtype=torch.int64),) * 3)
    pos_s, neg_s = miner.triplet_scores(anchors, triplets.to(device), bank)

    with atomic_write(args.output, newline="") as f:
        w = csv.writer(f)
        w.writerow(["anchor_id", "positive_id", "negative_id", "positive_score", "negative_score"])
        for a, p, n, sp, sn in zip(triplets.anchor.tolist(), triplets.positive.tolist(),
                                   triplets.negative.tolist(), pos_s.tolist(), neg_s.tolist()):
            w.writerow([ids[a], bank_ids[p] if p >= 0 else "", bank_ids[n] if n >= 0 else "",
                        "" if p < 0 else f"{sp:.6f}", "" if n < 0 else f"{sn:.6f}"])
    valid = int(triplets.valid.sum())
    # a positive with score 0 shares no disease with its anchor (or, for a no-finding anchor, is
    # not a no-finding report): the best candidate there was, but no match (NaN: no positive)
    unmatched = int((pos_s == 0).sum())
    hint = (" - --min-positive-score leaves such anchors without a triplet"
            if unmatched and args.min_positive_score == 0 else "")
    print(f"{valid} of {len(anchors)} anchors have a full triplet; {unmatched} got a positive that "
          f"shares no disease with them (score 0){hint}; wrote {args.output}")
    return 0


def cmd_mine_demo(args) -> int:
    from . import mining_demo

    return mining_demo.run(n=args.n, seed=args.seed, out=Path(args.out), device=_device(args.device))


def cmd_demo(args) -> int:
    from . import demo

    return demo.run(out=Path(args.out), seeds=args.seeds, steps=args.steps, arms=args.arms,
                    overrides=args.overrides, device=args.device, progress=not args.no_progress)


def cmd_train(args) -> int:
    from .train import run_train

    return run_train(args)


def cmd_evaluate(args) -> int:
    from ..training.evaluate import evaluate_run

    overrides = []
    if args.data is not None or args.kind is not None:
        # other data: the run's kind-specific options (e.g. phantom counts) no longer apply
        overrides.append("data.options={}")
    overrides += list(args.overrides)
    if args.data is not None:
        overrides.append(f"data.root={args.data}")
    if args.kind is not None:
        overrides.append(f"data.kind={args.kind}")
    if args.split is not None:
        overrides.append(f"data.eval_split={args.split}")
    report = evaluate_run(args.checkpoint, overrides, out_dir=args.out, device=args.device,
                          progress=not args.no_progress)
    print(report["markdown"])
    print("wrote " + ", ".join(map(str, report["paths"].values())))
    return 0


def cmd_extract(args) -> int:
    from ..extraction import EntityExtractor, read_reports
    from ..extraction.output import summarize, write_entities

    from ..utils.io import check_writable

    if Path(args.output).suffix.lower() not in (".parquet", ".pq", ".jsonl", ".json"):
        raise ValueError(f"output {args.output!r}: use a .parquet, .jsonl or .json file name")
    check_writable(args.output, "output")   # before reading and extracting every report
    reports = read_reports(args.reports)
    print(f"{len(reports)} reports from {reports.source} ({reports.kind})", file=sys.stderr)
    extractor = EntityExtractor(args.ontology, uncertain=args.uncertain, sections=not args.all_sections)
    records = extractor.extract(reports.texts, n_process=args.n_process, progress=not args.no_progress,
                                ids=reports.ids)
    write_entities(args.output, reports, records, extractor.ontology.classes)
    print(summarize(records, extractor.ontology.classes, empty=sum(not t.strip() for t in reports.texts)))
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medtrim", description="MedTrim meta-entity triplet mining.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="how the extension was built and what runs here")
    p.set_defaults(func=cmd_info)

    from .demo import ARMS, DEFAULT_ARMS

    p = sub.add_parser("demo", help="train MedTrim-based objectives and InfoNCE on the built-in phantoms "
                                    "and compare them seed by seed")
    p.add_argument("--out", default="medtrim-demo", help="output folder (runs, results, plots)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the preset's)")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=[*ARMS, "all"],
                   help=f"objectives to compare (default: {' '.join(DEFAULT_ARMS)}; 'all': {' '.join(ARMS)})")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="demo config overrides")
    p.set_defaults(func=cmd_demo)

    from .train import add_train_args

    p = sub.add_parser("train", help="train image and text encoders (MedTrim or InfoNCE) from a config")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="retrieval and linear-probe evaluation of a checkpoint")
    p.add_argument("--checkpoint", required=True,
                   help="a run folder (runs/x: its last.pt) or a training checkpoint (runs/x/last.pt)")
    p.add_argument("--data", help="dataset root or manifest (default: the run's own data)")
    p.add_argument("--kind", choices=["phantoms", "manifest", "mimic", "iu"],
                   help="dataset kind of --data (default: the run's)")
    p.add_argument("--split", help="split to evaluate (default: the run's eval split)")
    p.add_argument("--out", help="output folder (default: <run>/eval)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("mine-demo", help="mine triplets on generated records, check against the reference")
    p.add_argument("--n", type=int, default=4096, help="number of generated records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--out", default="medtrim-mine-demo", help="output folder")
    p.set_defaults(func=cmd_mine_demo)

    p = sub.add_parser("mine", help="mine one triplet per record of a records file "
                                    "(what `extract` writes)")
    p.add_argument("records", help="entities.parquet from `medtrim extract`, or a JSON list or JSONL "
                                   "of records or of {'id', 'entities'} objects")
    p.add_argument("-o", "--output", required=True, help="CSV of (anchor, positive, negative) ids")
    p.add_argument("--candidates", help="records to draw positives/negatives from (default: the "
                                        "records); equal given ids never pair across the two files, "
                                        "records without ids are distinct samples")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--chunk-size", type=int, default=4096, help="anchors per kernel call")
    _add_miner_args(p)
    p.set_defaults(func=cmd_mine)

    p = sub.add_parser("extract", help="extract meta-entities from radiology reports")
    p.add_argument("reports", help="CSV/Parquet (findings/impression or report column), a MIMIC-CXR "
                                   "report tree (folder of .txt), or IU/OpenI XML (.tgz or folder)")
    p.add_argument("-o", "--output", required=True,
                   help="entities.parquet (one row per report), or .jsonl/.json records for 'mine'")
    p.add_argument("--ontology", help="extraction ontology YAML/JSON (default: the packaged one)")
    p.add_argument("--uncertain", choices=["negative", "positive"], default="negative",
                   help="hedged mentions ('may represent atelectasis') count as absent (default) or present")
    p.add_argument("--all-sections", action="store_true",
                   help="analyse the whole report, not only FINDINGS/IMPRESSION")
    p.add_argument("--n-process", type=int, default=1, help="worker processes (0: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``section.key=value`` overrides may come anywhere among
    the flags (``train --config demo --no-eval train.steps=5``): argparse takes the positional
    overrides only as one run, so later ones come back unrecognised and join them here."""
    args, extra = parser.parse_known_args(argv)
    late = [a for a in extra if not a.startswith("-") and "=" in a]
    rest = [a for a in extra if a not in late]
    if late and hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + late
    elif late:
        rest = extra
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if getattr(args, "chunk_size", 1) < 1:
        parser.error("--chunk-size must be >= 1")
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

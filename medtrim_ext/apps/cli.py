"""The ``medtrim`` command line: ``info``, ``demo``, ``train``, ``evaluate``, ``mine``,
``neighbors``, ``mine-demo`` and ``extract``.

Building the parser imports only the core (torch, numpy): each subcommand imports its own modules
when it runs, so ``medtrim --help``, ``medtrim --version``, ``medtrim info``, ``medtrim mine`` and
``medtrim neighbors`` (CSV output) work without the optional extras, and a subcommand whose extra
is missing says which one to install (exit code 2, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

import torch

DISTRIBUTION = "medtrim_ext"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is none
    to show (a flag, or an option that is unset unless given: its help says what happens then)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("(default" in text or not action.option_strings or default is None or default is False
                or default is argparse.SUPPRESS):
            return text
        if isinstance(default, (list, tuple)):   # as typed on the command line: 0 1 2
            return text + " (default: " + " ".join(map(str, default)).replace("%", "%%") + ")"
        return text + " (default: %(default)s)"


def package_version() -> str:
    """The installed distribution's version; the package's ``__version__`` where no metadata is
    installed (sources on ``PYTHONPATH``). Neither imports more than the core."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


# one line of help per miner setting (MinerSettings holds the defaults)
_MINER_HELP = {
    "w_dis": "weight of the disease-label Jaccard index in the pair score",
    "w_adj": "weight of the agreement (IoU) of the adjectives (e.g. small, mild) of shared diseases",
    "w_dir": "weight of the agreement (IoU) of the directions (left, right, bilateral) of shared diseases",
    "threshold": "semi-hard rule: the negative is the lowest kept score >= THRESHOLD (else the "
                 "highest kept score)",
    "upper": "only candidates scoring < UPPER are kept as possible negatives",
    "semi_hard_prob": "share of anchors mined with the semi-hard rule; the others (hard rule) take "
                      "the lowest kept score",
}


def _add_miner_args(p: argparse.ArgumentParser, scores_only: bool = False) -> None:
    """The miner's settings as options; ``scores_only``: those of the pair score and the ties
    (``neighbors`` ranks by score alone: no negatives, no threshold)."""
    from ..mining import MINER_DEFAULTS as D, TIE_BREAKS

    g = p.add_argument_group("scoring (defaults: the published MedTrim settings)" if scores_only
                             else "mining (defaults: the published MedTrim settings)")
    for name, text in _MINER_HELP.items():
        if scores_only and not name.startswith("w_"):
            continue
        g.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(D, name), help=text,
                       metavar=name.upper())
    g.add_argument("--tie-break", choices=TIE_BREAKS, default=D.tie_break,
                   help="equal scores: a random tied candidate per anchor (as the published random "
                        "pools do in effect) or the lowest index")
    if not scores_only:
        g.add_argument("--min-positive-score", type=float, default=D.min_positive_score,
                       help="no triplet for an anchor whose best candidate scores less (0: off)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the order of equal scores" if scores_only
                   else "seed of the semi-hard/hard draw and the ties")


def _miner(args):
    from ..mining import MINER_DEFAULTS, TripletMiner

    # options a command does not have (neighbors: no threshold) keep the defaults
    return TripletMiner(**{name: getattr(args, name, default)
                           for name, default in MINER_DEFAULTS.as_kwargs().items()})


def _device(name: str) -> torch.device:
    from ..utils.checks import parse_device

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name, "--device")
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


def _entities(records: list, device):
    """``(MetaEntities.from_records(records), "U distinct of N (x%)")``, each distinct record built
    once: a collection's records repeat heavily (the IU reports: 22% distinct), and building is a
    Python loop per record. Equal ``repr`` means equal content for the JSON values a records file
    holds. U counts the distinct rows (:meth:`MetaEntities.unique`, what folding works on), found
    among the built records only: every row is a copy of one of them."""
    from ..entities.meta_entities import MetaEntities

    first: dict = {}
    seen: dict = {}   # id(record) -> its key: load_records shares one dict among equal records
    inverse = []
    for r in records:
        k = seen.get(id(r))
        if k is None:
            k = seen[id(r)] = first.setdefault(repr(r), len(first))
        inverse.append(k)
    distinct = [None] * len(first)
    for record, k in zip(records, inverse):
        distinct[k] = record
    try:
        built = MetaEntities.from_records(distinct, device=device)
    except (TypeError, ValueError):   # said again over all records: the message names the record's own place
        MetaEntities.from_records(records, device=device)
        raise
    ents = built if len(first) == len(records) else built[
        torch.tensor(inverse, dtype=torch.int64, device=built.device)]
    n, u = len(records), (len(built.unique()[2]) if len(built) else 0)
    return ents, f"{u} distinct of {n} ({u / max(n, 1):.1%})"


class _Collection(NamedTuple):
    anchors: object          # MetaEntities
    loaded: object           # RecordsFile of the records
    bank: object             # MetaEntities of --candidates, None: the records themselves
    bank_loaded: object      # RecordsFile of the candidates (the records' when self-mining)
    anchor_ids: torch.Tensor
    bank_ids: torch.Tensor | None
    distinct: str            # the distinct shares, for the summary


def _load_collection(args, bar, label: str) -> _Collection:
    """The records (and --candidates) of ``mine``/``neighbors``, with the miner's integer ids."""
    import gc

    from ..utils.io import load_records

    device = _device(args.device)
    bar.set_postfix(stage="read")
    # reading makes a few objects per record and no cycles: the collector's passes over the
    # growing heap were a third of the read time (377k records: 2.4 s -> 1.5 s without)
    collecting = gc.isenabled()
    gc.disable()
    try:
        loaded = load_records(args.records)
        anchors, share = _entities(loaded.records, device)
        distinct = f"{label}: {share}"
        if args.candidates and Path(args.candidates).resolve() != Path(args.records).resolve():
            bank_loaded = load_records(args.candidates)
            bank, share = _entities(bank_loaded.records, device)
            distinct += f"; candidates: {share}"
        else:
            bank_loaded, bank = loaded, None
        a_keys, b_keys = _mining_ids(loaded, bank_loaded)
    finally:
        if collecting:
            gc.enable()
    anchor_ids = torch.tensor(a_keys, dtype=torch.int64, device=device)
    bank_ids = None if bank is None else torch.tensor(b_keys, dtype=torch.int64, device=device)
    bar.update(1)
    return _Collection(anchors, loaded, bank, bank_loaded, anchor_ids, bank_ids, distinct)


def _check_output(args) -> None:
    """The checks of an output before any work: writable, not an input, its format available."""
    from ..utils.io import check_not_input, check_writable
    from ..utils.tables import check_format

    check_writable(args.output, "output")
    check_not_input(args.output, {"records": args.records, "--candidates": args.candidates})
    check_format(args.output)


def _stage_times(times: dict) -> str:
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in times.items())


def cmd_mine(args) -> int:
    import time

    import numpy as np

    from ..utils.io import STDOUT, is_stream_output
    from ..utils.progress import progress_bar
    from ..utils.tables import IdColumn, write_table

    _check_output(args)   # before any work
    if args.chunk_size is not None:
        print("warning: --chunk-size is deprecated and ignored: `medtrim mine` mines the whole "
              "collection in one folded call", file=sys.stderr)
    miner = _miner(args)
    k = args.per_anchor
    times = {}
    t0 = time.perf_counter()
    with progress_bar(total=3, enabled=not args.no_progress, desc="mine", unit="stage") as bar:
        anchors, loaded, bank, bank_loaded, anchor_ids, bank_ids, distinct = _load_collection(
            args, bar, "anchors")
        times["read"] = (t1 := time.perf_counter()) - t0
        bar.set_postfix(stage="unique+mine")
        # one draw for the whole file from --seed: the triplets of a direct TripletMiner call
        draw = miner.draw(len(anchors), torch.Generator().manual_seed(args.seed))
        if len(anchors) and len(anchors if bank is None else bank):
            got = miner.mine_collection(anchors, bank, anchor_ids=anchor_ids, candidate_ids=bank_ids,
                                        per_anchor=k, draw=draw)
            positive, negative = got.positive.cpu().numpy(), got.negative.cpu().numpy()
            pos_s, neg_s = got.positive_score.cpu().numpy(), got.negative_score.cpu().numpy()
        else:   # no records or no candidates (`[]`): nothing to fold, no triplet
            positive = negative = np.full((len(anchors), k), -1, dtype=np.int64)
            pos_s = neg_s = np.full((len(anchors), k), np.nan, dtype=np.float32)
        times["unique+mine"] = (t2 := time.perf_counter()) - t1
        bar.update(1)
        bar.set_postfix(stage="write")
        # a row per positive (slot i: the i-th best positive and negative i, empty where the rule
        # found none); an anchor without any positive keeps one row, rank 0, ids and scores empty
        keep = positive >= 0
        keep[:, 0] = True
        rows, slot = np.nonzero(keep)
        pos, neg = positive[rows, slot], negative[rows, slot]
        columns = {"anchor_id": IdColumn(loaded.ids, rows)}
        if k > 1:
            columns["rank"] = slot
        columns.update(positive_id=IdColumn(bank_loaded.ids, pos),
                       negative_id=IdColumn(bank_loaded.ids, neg),
                       positive_score=np.where(pos >= 0, pos_s[rows, slot], np.nan).astype(np.float32),
                       negative_score=np.where(neg >= 0, neg_s[rows, slot], np.nan).astype(np.float32))
        fmt = write_table(args.output, columns, progress=not args.no_progress)
        times["write"] = time.perf_counter() - t2
        bar.update(1)
    full = (positive[:, 0] >= 0) & (negative[:, 0] >= 0)
    valid = int(full.sum())
    # a positive with score 0 shares no disease with its anchor (or, for a no-finding anchor, is
    # not a no-finding report): the best candidate there was, but no match (NaN: no positive)
    unmatched = int((pos_s[:, 0] == 0).sum())
    hint = (" - --min-positive-score leaves such anchors without a triplet"
            if unmatched and args.min_positive_score == 0 else "")
    # "-", /dev/stdout, a pipe: the output may be standard output, which then holds the CSV alone
    log = sys.stderr if is_stream_output(args.output) else sys.stdout
    per = ""
    if k > 1:
        all_k = int(((positive >= 0) & (negative >= 0)).all(axis=1).sum())
        per = (f"; {all_k} have {k} full triplets, {int(((positive >= 0) & (negative >= 0)).sum())} "
               f"full triplets in all")
    print(f"{valid} of {len(anchors)} anchors have a full triplet; {len(anchors) - valid} have none"
          f"{per}; {unmatched} got a positive that shares no disease with them (score 0){hint}; wrote "
          f"{'standard output' if args.output == STDOUT else args.output} ({len(rows)} rows, {fmt})",
          file=log)
    print(f"{distinct}; {_stage_times(times)}", file=log)
    return 0


def cmd_neighbors(args) -> int:
    import time

    import numpy as np

    from ..utils.io import STDOUT, is_stream_output
    from ..utils.progress import progress_bar
    from ..utils.tables import IdColumn, write_table

    _check_output(args)   # before any work
    miner = _miner(args)
    k = args.k
    times = {}
    t0 = time.perf_counter()
    with progress_bar(total=3, enabled=not args.no_progress, desc="neighbors", unit="stage") as bar:
        anchors, loaded, bank, bank_loaded, anchor_ids, bank_ids, distinct = _load_collection(
            args, bar, "studies")
        times["read"] = (t1 := time.perf_counter()) - t0
        bar.set_postfix(stage="unique+rank")
        # the draw of --seed: its tie seed orders equal scores (the semi-hard draw is unused)
        draw = miner.draw(len(anchors), torch.Generator().manual_seed(args.seed))
        if len(anchors) and len(anchors if bank is None else bank):
            got = miner.neighbors(anchors, bank, k=k, anchor_ids=anchor_ids, candidate_ids=bank_ids,
                                  draw=draw)
            index, score = got.index.cpu().numpy(), got.score.cpu().numpy()
        else:   # no records or no candidates (`[]`): nothing to rank
            index = np.full((len(anchors), k), -1, dtype=np.int64)
            score = np.full((len(anchors), k), np.nan, dtype=np.float32)
        times["unique+rank"] = (t2 := time.perf_counter()) - t1
        bar.update(1)
        bar.set_postfix(stage="write")
        rows, rank = np.nonzero(index >= 0)   # a row per neighbour, best first; none: no row
        columns = {"anchor_id": IdColumn(loaded.ids, rows), "rank": rank,
                   "neighbor_id": IdColumn(bank_loaded.ids, index[rows, rank]),
                   "score": score[rows, rank].astype(np.float32)}
        fmt = write_table(args.output, columns, progress=not args.no_progress)
        times["write"] = time.perf_counter() - t2
        bar.update(1)
    short = int((index[:, k - 1] < 0).sum()) if len(index) else 0
    log = sys.stderr if is_stream_output(args.output) else sys.stdout
    print(f"{len(anchors) - short} of {len(anchors)} studies have {k} neighbours; {short} have "
          f"fewer (fewer candidates with another id); wrote "
          f"{'standard output' if args.output == STDOUT else args.output} ({len(rows)} rows, {fmt})",
          file=log)
    print(f"{distinct}; {_stage_times(times)}", file=log)
    return 0


def cmd_mine_demo(args) -> int:
    from . import mining_demo

    return mining_demo.run(n=args.n, seed=args.seed, out=Path(args.out), device=_device(args.device))


def cmd_demo(args) -> int:
    from . import demo

    from ..utils.checks import parse_device

    if args.device != "auto":   # named here: "tpu" was a RuntimeError traceback from torch.device
        parse_device(args.device, "--device")
    return demo.run(out=Path(args.out), seeds=args.seeds, steps=args.steps, arms=args.arms,
                    overrides=args.overrides, device=args.device, progress=not args.no_progress,
                    dataset=args.dataset)


def cmd_train(args) -> int:
    from .train import run_train

    return run_train(args)


def cmd_evaluate(args) -> int:
    from ..evaluation.run import evaluate_run

    from ..utils.checks import parse_device

    if args.device != "auto":   # named here: "tpu" was a RuntimeError traceback from torch.device
        parse_device(args.device, "--device")
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

    from ..utils.io import check_not_input, check_writable, is_stream_output

    # "-", a device or a pipe: JSON lines (no name to choose by); the messages go to stderr
    stream = is_stream_output(args.output)
    if not stream and Path(args.output).suffix.lower() not in (".parquet", ".pq", ".jsonl", ".json"):
        raise ValueError(f"output {args.output!r}: use a .parquet, .jsonl or .json file name, or - "
                         "for JSON lines on standard output")
    check_writable(args.output, "output")   # before reading and extracting every report
    check_not_input(args.output, {"reports": args.reports, "--ontology": args.ontology})
    reports = read_reports(args.reports, text_column=args.text_column, id_column=args.id_column,
                           follow_links=args.follow_links)
    print(f"{len(reports)} reports from {reports.source} ({reports.kind})", file=sys.stderr)
    extractor = EntityExtractor(args.ontology, uncertain=args.uncertain, sections=not args.all_sections)
    records = extractor.extract(reports.texts, n_process=args.n_process, progress=not args.no_progress,
                                ids=reports.ids)
    write_entities(args.output, reports, records, extractor.ontology.classes)
    log = sys.stderr if stream else sys.stdout
    print(summarize(records, extractor.ontology.classes, empty=sum(not t.strip() for t in reports.texts)),
          file=log)
    print(f"wrote {'standard output' if args.output == '-' else args.output}", file=log)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``medtrim`` parser. It imports nothing beyond the core: a subcommand's own modules load
    when it runs (see :func:`main`)."""
    parser = argparse.ArgumentParser(
        prog="medtrim", formatter_class=_HelpFormatter,
        description="MedTrim meta-entity triplet mining: extract meta-entities from radiology reports, "
                    "mine triplets with the C++/CUDA kernels, train and evaluate image-text encoders. "
                    "`medtrim COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, details: str = "", extra: str | None = None):
        """A subcommand whose ``--help`` starts with ``summary`` (the line ``medtrim --help`` lists)
        and its ``details``; ``extra``: the optional extra its modules need."""
        description = f"{summary[0].upper()}{summary[1:]}. {details}".strip()
        p = sub.add_parser(name, help=summary, formatter_class=_HelpFormatter, description=description)
        p.set_defaults(extra=extra)
        return p

    p = command("info", "how the extension was built and what runs here",
                "Prints the compiled backends, the torch they were built for and the torch that runs.")
    p.set_defaults(func=cmd_info)

    from .demo import ARMS, DATASETS, default_arms   # plain data; the demo's training modules load in cmd_demo

    p = command("demo", "train MedTrim-based objectives and InfoNCE on the built-in phantoms (or the "
                        "real IU reports with phantom images) and compare them seed by seed",
                "Writes the runs, results tables and plots into --out; finished runs are reused when "
                "the demo is run again.", extra="train")
    p.add_argument("--out", default="medtrim-demo", help="output folder (runs, results, plots)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the preset's)")
    p.add_argument("--dataset", default="phantoms", choices=list(DATASETS),
                   help="phantoms (built in) or iu-phantoms (the 3,955 real IU reports of the installed "
                        "torchxrayvision, each with a phantom image of its own findings)")
    p.add_argument("--arms", nargs="+", default=None, choices=[*ARMS, "all"], metavar="ARM",
                   help=f"objectives to compare: {', '.join(ARMS)}, or all (default: "
                        f"{' '.join(default_arms('phantoms'))}; for the IU phantoms: "
                        f"{' '.join(default_arms('iu-phantoms'))}: InfoNCE and the arm chosen on "
                        "the dataset's validation split)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="demo config overrides")
    p.set_defaults(func=cmd_demo)

    from .train import add_train_args

    p = command("train", "train image and text encoders (MedTrim or InfoNCE) from a config",
                "Trains one run (under torchrun: one process per GPU), then evaluates it unless "
                "--no-eval.", extra="train")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = command("evaluate", "retrieval and linear-probe evaluation of a checkpoint",
                "Writes results.json, results.md and the figures into --out.", extra="train")
    p.add_argument("--checkpoint", required=True,
                   help="a run folder (runs/x: its last.pt) or a training checkpoint (runs/x/last.pt)")
    p.add_argument("--data", help="dataset root or manifest (default: the run's own data)")
    p.add_argument("--kind", choices=["phantoms", "manifest", "mimic", "iu", "iu_phantoms"],
                   help="dataset kind of --data (default: the run's)")
    p.add_argument("--split", help="split to evaluate (default: the run's eval split)")
    p.add_argument("--out", help="output folder (default: <run>/eval)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.set_defaults(func=cmd_evaluate)

    p = command("mine-demo", "mine triplets on generated records, check against the reference",
                "Writes triplets.csv, summary.json and scores.png (with matplotlib) into --out.")
    p.add_argument("--n", type=int, default=4096, help="number of generated records")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated records and the mining")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--out", default="medtrim-mine-demo", help="output folder")
    p.set_defaults(func=cmd_mine_demo)

    p = command("mine", "mine triplets for every record of a records file (what `extract` writes)",
                "Mines the whole collection at once, folded over its distinct records. Writes one row "
                "per triplet: the anchor's id, the positive's and the negative's ids and their "
                "scores (empty where an anchor has none), as CSV or Parquet (by the name).")
    p.add_argument("records", help="entities.parquet from `medtrim extract`, or a JSON list or JSONL "
                                   "of records or of {'id', 'entities'} objects")
    p.add_argument("-o", "--output", required=True,
                   help="triplets file: .parquet/.pq is Parquet, any other name CSV (-: CSV on "
                        "standard output)")
    p.add_argument("--candidates", help="records to draw positives/negatives from (default: the "
                                        "records); equal given ids never pair across the two files, "
                                        "records without ids are distinct samples")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--per-anchor", type=_at_least_one, default=1, metavar="K",
                   help="triplets per anchor: its K best candidates as positives, each with the "
                        "next negative of the rule; K > 1 adds a rank column")
    p.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="deprecated and ignored (the folded path mines the whole collection in one "
                        "call); default: not given")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_miner_args(p)
    p.set_defaults(func=cmd_mine)

    p = command("neighbors", "each study's K nearest studies by meta-entity score",
                "Ranks every study's candidates (the records themselves, or --candidates) by the "
                "pair score, folded over the distinct records, and writes one row per (study, rank): "
                "anchor_id, rank, neighbor_id, score; a study never lists itself (nor another record "
                "with its id). CSV or Parquet (by the name).")
    p.add_argument("records", help="entities.parquet from `medtrim extract`, or a JSON list or JSONL "
                                   "of records or of {'id', 'entities'} objects")
    p.add_argument("-o", "--output", required=True,
                   help="neighbours file: .parquet/.pq is Parquet, any other name CSV (-: CSV on "
                        "standard output)")
    p.add_argument("--k", type=_at_least_one, default=10, help="neighbours per study")
    p.add_argument("--candidates", help="records to rank (default: the records); equal given ids "
                                        "never pair across the two files")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_miner_args(p, scores_only=True)
    p.set_defaults(func=cmd_neighbors)

    p = command("extract", "extract meta-entities from radiology reports",
                "Runs the spaCy/medspacy pipeline over every report and writes one record per report "
                "(diseases present, with their adjectives and directions).", extra="extract")
    p.add_argument("reports", help="CSV/Parquet (findings/impression or report/text column, or "
                                   "--text-column), a MIMIC-CXR report tree (folder of .txt), or "
                                   "IU/OpenI XML (.tgz or folder)")
    p.add_argument("-o", "--output", required=True,
                   help="entities.parquet (one row per report), or .jsonl/.json records for 'mine' "
                        "(-: JSON lines on standard output)")
    p.add_argument("--text-column", metavar="NAME",
                   help="CSV/Parquet: the column holding the report text (default: findings and/or "
                        "impression, else report / text / report_text)")
    p.add_argument("--id-column", metavar="NAME",
                   help="CSV/Parquet: the column holding the study ids (default: study_id / id / uid / "
                        "report_id / filename / path, else generated: #<row>); an id given twice is an error")
    p.add_argument("--follow-links", action="store_true",
                   help="report folders: read files reached through links that lead outside the folder "
                        "(default: skip them with a warning)")
    p.add_argument("--ontology", help="extraction ontology YAML/JSON (default: the packaged one)")
    p.add_argument("--uncertain", choices=["negative", "positive"], default="negative",
                   help="hedged mentions ('may represent atelectasis') count as absent (negative) or "
                        "present (positive)")
    p.add_argument("--all-sections", action="store_true",
                   help="analyse the whole report, not only FINDINGS/IMPRESSION")
    p.add_argument("--n-process", type=int, default=1, help="worker processes (0: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)
    return parser


def _at_least_one(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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


def missing_extra_message(exc: ImportError, command: str, extra: str | None) -> str | None:
    """The error line for an ImportError that means "install an extra", else None (a genuine bug,
    which keeps its traceback). The package's own modules raise ``MissingExtraError``, whose
    message names the extra; a third-party module missing under a command that needs an extra is
    reported with that command's extra."""
    try:
        from ..utils.extras import MissingExtraError
    except ImportError:   # a package without the helper: its messages still name the extra
        MissingExtraError = ()
    if isinstance(exc, MissingExtraError) or 'pip install "medtrim_ext[' in str(exc):
        return f"error: {exc}"
    missing = getattr(exc, "name", None) or ""
    if (isinstance(exc, ModuleNotFoundError) and extra is not None and missing
            and not missing.startswith(DISTRIBUTION)):
        return (f"error: `medtrim {command}` needs the [{extra}] extra ({exc}): "
                f'pip install "{DISTRIBUTION}[{extra}]"')
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        message = missing_extra_message(exc, args.command, args.extra)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

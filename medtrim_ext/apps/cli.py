"""The ``medtrim`` command line: ``info``, ``demo``, ``train``, ``evaluate``, ``mine``,
``mine-demo`` and ``extract``.

Building the parser imports only the core (torch, numpy): each subcommand imports its own modules
when it runs, so ``medtrim --help``, ``medtrim --version``, ``medtrim info`` and ``medtrim mine``
work without the optional extras, and a subcommand whose extra is missing says which one to
install (exit code 2, no traceback).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

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


def _add_miner_args(p: argparse.ArgumentParser) -> None:
    from ..mining import MINER_DEFAULTS as D, TIE_BREAKS

    g = p.add_argument_group("mining (defaults: the published MedTrim settings)")
    for name, text in _MINER_HELP.items():
        g.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(D, name), help=text,
                       metavar=name.upper())
    g.add_argument("--tie-break", choices=TIE_BREAKS, default=D.tie_break,
                   help="equal scores: a random tied candidate per anchor (as the published random "
                        "pools do in effect) or the lowest index")
    g.add_argument("--min-positive-score", type=float, default=D.min_positive_score,
                   help="no triplet for an anchor whose best candidate scores less (0: off)")
    g.add_argument("--seed", type=int, default=0, help="seed of the semi-hard/hard draw and the ties")


def _miner(args):
    from ..mining import MINER_DEFAULTS, TripletMiner

    return TripletMiner(**{name: getattr(args, name) for name in MINER_DEFAULTS.as_kwargs()})


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


def cmd_mine(args) -> int:
    from ..entities.meta_entities import MetaEntities
    from ..utils.io import (STDOUT, atomic_write, check_not_input, check_writable, escape_csv_cell,
                            is_stream_output, load_records)
    from ..mining.miner import Triplets
    from ..utils.progress import progress_bar

    check_writable(args.output, "output")   # before any work
    check_not_input(args.output, {"records": args.records, "--candidates": args.candidates})
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
    for start in progress_bar(range(0, len(anchors), args.chunk_size), enabled=not args.no_progress,
                              desc="mining", unit="chunk"):
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
            # ids come from the input: a spreadsheet must not run one (the scores are numbers)
            w.writerow([escape_csv_cell(ids[a]), escape_csv_cell(bank_ids[p]) if p >= 0 else "",
                        escape_csv_cell(bank_ids[n]) if n >= 0 else "",
                        "" if p < 0 else f"{sp:.6f}", "" if n < 0 else f"{sn:.6f}"])
    valid = int(triplets.valid.sum())
    # a positive with score 0 shares no disease with its anchor (or, for a no-finding anchor, is
    # not a no-finding report): the best candidate there was, but no match (NaN: no positive)
    unmatched = int((pos_s == 0).sum())
    hint = (" - --min-positive-score leaves such anchors without a triplet"
            if unmatched and args.min_positive_score == 0 else "")
    # "-", /dev/stdout, a pipe: the output may be standard output, which then holds the CSV alone
    to_stdout = is_stream_output(args.output)
    print(f"{valid} of {len(anchors)} anchors have a full triplet; {unmatched} got a positive that "
          f"shares no disease with them (score 0){hint}; wrote "
          f"{'standard output' if args.output == STDOUT else args.output}", file=sys.stderr if to_stdout else sys.stdout)
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
                    overrides=args.overrides, device=args.device, progress=not args.no_progress)


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

    from .demo import ARMS, DEFAULT_ARMS   # plain data; the demo's training modules load in cmd_demo

    p = command("demo", "train MedTrim-based objectives and InfoNCE on the built-in phantoms and "
                        "compare them seed by seed",
                "Writes the runs, results tables and plots into --out; finished runs are reused when "
                "the demo is run again.", extra="train")
    p.add_argument("--out", default="medtrim-demo", help="output folder (runs, results, plots)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the preset's)")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=[*ARMS, "all"], metavar="ARM",
                   help=f"objectives to compare: {', '.join(ARMS)}, or all")
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
    p.add_argument("--kind", choices=["phantoms", "manifest", "mimic", "iu"],
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

    p = command("mine", "mine one triplet per record of a records file (what `extract` writes)",
                "Writes a CSV with one row per anchor: its id, the positive's and the negative's ids "
                "and their scores (empty where an anchor has none).")
    p.add_argument("records", help="entities.parquet from `medtrim extract`, or a JSON list or JSONL "
                                   "of records or of {'id', 'entities'} objects")
    p.add_argument("-o", "--output", required=True,
                   help="CSV of (anchor, positive, negative) ids (-: standard output)")
    p.add_argument("--candidates", help="records to draw positives/negatives from (default: the "
                                        "records); equal given ids never pair across the two files, "
                                        "records without ids are distinct samples")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--chunk-size", type=int, default=4096, help="anchors per kernel call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_miner_args(p)
    p.set_defaults(func=cmd_mine)

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
    if getattr(args, "chunk_size", 1) < 1:
        parser.error("--chunk-size must be >= 1")
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

"""``python -m medtrim_ext.train --config CONFIG [section.key=value ...]``: train one run.

Works as a plain process (one CPU or GPU) and under ``torchrun`` (one process per GPU, or gloo on
CPUs): the process group comes from torchrun's environment. After training, the main process
evaluates the final model unless ``--no-eval`` is given, then prints the paths written. Without
``--out`` (``train.out_dir``) every run writes into a new ``runs/<objective.kind>-<time>`` folder;
see :mod:`medtrim_ext.training.rundir` for ``train.resume``. ``--device`` and ``--no-progress`` set
``train.device`` and ``train.progress`` and apply to the evaluation too. ``medtrim train`` is the
same command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def preset_names() -> list[str]:
    """The packaged config presets, as :func:`medtrim_ext.training.config.preset_names` lists them,
    without importing the training package (the parser must build with only the core installed)."""
    from importlib import resources

    folder = resources.files("medtrim_ext") / "data" / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help=f"YAML config file or packaged preset name ({', '.join(preset_names())}) "
                        "(default: the built-in defaults: ViT-B/16 and a BERT-base shaped text "
                        "encoder from scratch on the built-in phantoms, sized for a GPU)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. train.steps=200 objective.kind=infonce")
    p.add_argument("--out", metavar="FOLDER",
                   help="run folder, sets train.out_dir (default: the config's, else a new "
                        "runs/<objective.kind>-<time>)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto; sets train.device (default: the "
                                    "config's, auto unless set)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (sets train.progress=false)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")


def train_config(args):
    """The run's :class:`~medtrim_ext.training.Config`: ``--config`` plus the overrides, then the
    flags, which win over an override of the same key (they are the more specific request)."""
    from ..training import load_config, replace

    cfg = load_config(args.config, args.overrides)
    flags = {}
    if args.out is not None:
        flags["out_dir"] = str(args.out)   # set as a value: a path is never parsed as YAML
    if args.device is not None:
        flags["device"] = args.device
    if args.no_progress:
        flags["progress"] = False
    return replace(cfg, train=flags) if flags else cfg


def run_train(args) -> int:
    from ..training import train
    from ..evaluation.run import evaluate_run

    from ..utils.io import check_writable
    from ..training.rundir import DEFAULT_RUNS_ROOT

    cfg = train_config(args)
    # before any work; without train.out_dir the run gets a new folder under runs/
    check_writable(cfg.train.out_dir if cfg.train.out_dir is not None else DEFAULT_RUNS_ROOT,
                   "train.out_dir", folder=True)
    if cfg.train.out_dir is not None:
        check_run_outputs(cfg)
    result = train(cfg)
    if result["world_size"] == 1 or _is_main():
        print(json.dumps({k: result[k] for k in ("out_dir", "steps", "device", "wall_s", "step_time")},
                         indent=1))
        written = list(result.get("paths", {}).values())
        if not args.no_eval:
            report = evaluate_run(result["checkpoint"], device=cfg.train.device,
                                  progress=cfg.train.progress)
            print(report["markdown"])
            written += [str(p) for p in report["paths"].values()]
        print("wrote:\n" + "\n".join(f"  {p}" for p in written))
    return 0


def check_run_outputs(cfg) -> None:
    """Refuse, before any work, a run folder whose outputs would replace one of the run's inputs
    (``model.image.checkpoint=runs/x/last.pt train.out_dir=runs/x``, a manifest called
    ``metrics.csv`` in the run folder, a model folder as the run folder). ``config.json`` is left
    to the resume rules (:mod:`medtrim_ext.training.rundir`), which refuse another run's config."""
    from ..evaluation.run import evaluation_files
    from ..training.batches import OFFLINE_TRIPLETS_FILE
    from ..training.checkpoint import CHECKPOINT_NAME
    from ..training.rundir import config_inputs
    from ..utils.io import check_outputs_not_inputs

    out = Path(cfg.train.out_dir)
    inputs = config_inputs(cfg)
    check_outputs_not_inputs(out, [CHECKPOINT_NAME, "metrics.csv", "train_summary.json", "training_loss.png",
                                   OFFLINE_TRIPLETS_FILE], inputs, "train.out_dir")
    check_outputs_not_inputs(out / "eval", evaluation_files(), inputs, "train.out_dir")


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medtrim_ext.train", description=__doc__.split("\n")[0])
    add_train_args(parser)
    args = parser.parse_intermixed_args(argv)   # overrides before and after the flags
    try:
        return run_train(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``python -m medtrim_ext.train --config CONFIG [section.key=value ...]``: train one run.

Works as a plain process (one CPU or GPU) and under ``torchrun`` (one process per GPU, or gloo on
CPUs): the process group comes from torchrun's environment. After training, the main process
evaluates the final model unless ``--no-eval`` is given, then prints the paths written. Without
``train.out_dir`` every run writes into a new ``runs/<objective.kind>-<time>`` folder; see
:mod:`medtrim_ext.training.rundir` for ``train.resume``. ``medtrim train`` is the same command.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_train_args(p: argparse.ArgumentParser) -> None:
    from ..training.config import preset_names

    p.add_argument("--config", default=None,
                   help=f"YAML config file or packaged preset name ({', '.join(preset_names())}); "
                        "default: built-in defaults")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. train.steps=200 objective.kind=infonce")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")


def run_train(args) -> int:
    from ..training import load_config, train
    from ..training.evaluate import evaluate_run

    from ..utils.io import check_writable
    from ..training.rundir import DEFAULT_RUNS_ROOT

    cfg = load_config(args.config, args.overrides)
    # before any work; without train.out_dir the run gets a new folder under runs/
    check_writable(cfg.train.out_dir if cfg.train.out_dir is not None else DEFAULT_RUNS_ROOT,
                   "train.out_dir", folder=True)
    result = train(cfg)
    if result["world_size"] == 1 or _is_main():
        print(json.dumps({k: result[k] for k in ("out_dir", "steps", "device", "wall_s", "step_time")},
                         indent=1))
        written = list(result.get("paths", {}).values())
        if not args.no_eval:
            report = evaluate_run(result["checkpoint"])
            print(report["markdown"])
            written += [str(p) for p in report["paths"].values()]
        print("wrote:\n" + "\n".join(f"  {p}" for p in written))
    return 0


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

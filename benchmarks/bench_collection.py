"""Whole collections: `medtrim mine` and `medtrim neighbors` end to end, records file to output
file, on collections of 100k, 377k (MIMIC-CXR's size) and 1M studies.

The collections (:func:`build_collection`, documented here so that the numbers can be rebuilt):

- **realistic duplication** (``iu-mix``): 70% of the studies carry a record resampled uniformly
  from the records that the project's extractor reads from the 3,955 real IU reports (read at run
  time from the installed ``torchxrayvision`` package; 889 distinct records, 66% of reports with no
  finding), 30% a record of ``synthetic_records`` (seeded; findings drawn independently). At 100k
  about 13% of the records are distinct, at 377k 10%.
- **low duplication** (``synthetic``): every study a ``synthetic_records`` record (34% distinct at
  100k).

Each collection is written as ``medtrim extract`` writes it (Parquet: ``study_id``, ``entities``
JSON), then each command runs in its own process, as a user runs it:
``medtrim mine records.parquet -o triplets.parquet`` and ``medtrim neighbors records.parquet --k 10
-o neighbors.parquet``. Reported per run: the wall time of the whole process (start-up and import
included), the stages the command reports (read, unique + mine or rank, write), the peak resident
memory of the process and its peak above a process that only imports the package and torch (the
extra memory the work needs), and the distinct share. At 100k the same run also times the unfolded
in-batch kernel (``TripletMiner()(entities, fold=False)``, one call over all pairs) against the folded one
(``TripletMiner().mine_collection``) in one process, on the same draw, and checks they agree.

    python benchmarks/bench_collection.py                       # all sizes (about 5 minutes)
    python benchmarks/bench_collection.py --sizes 100000 --out results.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def iu_records() -> list[dict]:
    """The records the project's extractor reads from the 3,955 IU reports (FINDINGS and
    IMPRESSION), read from the installed torchxrayvision package at run time."""
    sys.path.insert(0, str(Path(__file__).parent))
    from extraction_quality import find_iu_archive

    from medtrim_ext.extraction import EntityExtractor, read_reports

    reports = read_reports(find_iu_archive())
    return EntityExtractor().extract(reports.texts, progress=False)


def build_collection(n: int, kind: str, iu: list[dict] | None, seed: int = 0) -> list[dict]:
    """``n`` records: ``iu-mix`` (70% resampled IU records, 30% synthetic) or ``synthetic``."""
    from medtrim_ext.entities.synthetic import synthetic_records

    if kind == "synthetic":
        return synthetic_records(n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    n_iu = int(0.7 * n)
    pick = torch.randint(0, len(iu), (n_iu,), generator=g).tolist()
    return [iu[k] for k in pick] + synthetic_records(n - n_iu, seed=seed + 1)


def write_records(path: Path, records: list[dict]) -> None:
    """Parquet as ``medtrim extract`` writes it: study ids and the records as JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = {}
    cells = [texts.setdefault(id(r), json.dumps(r, sort_keys=True)) for r in records]
    pq.write_table(pa.table({"study_id": [f"s{k}" for k in range(len(records))], "entities": cells}), path)


# peak resident memory (kB) of the current process image, from /proc (Linux)
_HWM = ("int(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))")


def child_run(argv: list[str]) -> dict:
    """One command in a child process: wall time and peak RSS measured by a wrapper that reports
    its own ``ru_maxrss`` (the child's peak), so that runs do not mix."""
    # the peak is VmHWM of this process image: ru_maxrss would carry over the peak of the (large)
    # parent it was forked from
    wrapper = ("import runpy, sys, time; t = time.perf_counter(); sys.argv = sys.argv[1:];"
               "code = 0\n"
               "try:\n    runpy.run_module(sys.argv[0], run_name='__main__')\n"
               "except SystemExit as e:\n    code = e.code or 0\n"
               f"hwm = {_HWM}\n"
               "print(f'@@ {time.perf_counter() - t:.3f} {hwm / 1024:.1f}', file=sys.stderr); sys.exit(code)")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    inner, rss = re.search(r"@@ ([\d.]+) ([\d.]+)", proc.stderr).groups()
    return {"wall_s": wall, "peak_rss_mb": float(rss), "stdout": proc.stdout, "stderr": proc.stderr}


def stages(text: str) -> dict:
    """The stage times a command prints ("read 1.23 s, unique+mine 2.00 s, write 0.40 s")."""
    return {name: float(sec) for name, sec in re.findall(r"([a-z+]+) ([\d.]+) s\b", text)
            if name in ("read", "unique+mine", "unique+rank", "write")}


def baseline_rss_mb() -> float:
    """Peak RSS of a process that imports the package and torch and does nothing."""
    code = f"import torch, medtrim_ext, medtrim_ext.apps.cli; print({_HWM} / 1024)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.strip())


def unfolded_ratio(records: list[dict]) -> dict:
    """The unfolded in-batch kernel against the folded one, same process, same draw."""
    from medtrim_ext import MetaEntities, TripletMiner

    ents = MetaEntities.from_records(records)
    miner = TripletMiner()
    draw = miner.draw(len(ents), torch.Generator().manual_seed(0))
    t = time.perf_counter()
    folded = miner.mine_collection(ents, draw=draw)
    t_folded = time.perf_counter() - t
    t = time.perf_counter()
    unfolded = miner(ents, draw=draw, fold=False)
    t_unfolded = time.perf_counter() - t
    same = (torch.equal(folded.positive[:, 0], unfolded.positive)
            and torch.equal(folded.negative[:, 0], unfolded.negative))
    return {"unfolded_s": t_unfolded, "folded_s": t_folded, "ratio": t_unfolded / t_folded, "equal": same}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 377_000, 1_000_000])
    ap.add_argument("--kinds", nargs="+", default=["iu-mix", "synthetic"], choices=["iu-mix", "synthetic"])
    ap.add_argument("--low-dup-sizes", type=int, nargs="+", default=[100_000, 377_000],
                    help="sizes of the low-duplication (synthetic) runs")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    from medtrim_ext import MetaEntities

    iu = iu_records() if "iu-mix" in args.kinds else None
    base = baseline_rss_mb()
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; baseline process {base:.0f} MB", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            for n in (args.sizes if kind == "iu-mix" else args.low_dup_sizes):
                records = build_collection(n, kind, iu)
                distinct = len(MetaEntities.from_records(records).unique()[0])
                path = Path(tmp) / f"{kind}-{n}.parquet"
                write_records(path, records)
                row = {"kind": kind, "n": n, "distinct": distinct, "distinct_share": distinct / n}
                for command, extra, out in (("mine", [], "triplets.parquet"),
                                            ("neighbors", ["--k", "10"], "neighbors.parquet")):
                    res = child_run(["medtrim_ext.apps.cli", command, str(path), *extra, "-o",
                                     str(Path(tmp) / out), "--no-progress"])
                    row[command] = {"wall_s": res["wall_s"], "stages": stages(res["stdout"] + res["stderr"]),
                                    "peak_rss_mb": res["peak_rss_mb"],
                                    "extra_rss_mb": res["peak_rss_mb"] - base}
                if kind == "iu-mix" and n == 100_000:
                    row["unfolded"] = unfolded_ratio(records)
                rows.append(row)
                print(json.dumps(row), flush=True)
                del records
    print()
    print("| collection | studies | distinct | command | end to end | read | unique+mine/rank | write | peak RSS (extra) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for command in ("mine", "neighbors"):
            c = r[command]
            st = c["stages"]
            work = st.get("unique+mine", st.get("unique+rank", float("nan")))
            print(f"| {r['kind']} | {r['n']:,} | {r['distinct_share']:.1%} ({r['distinct']:,}) | {command}"
                  f"{' --k 10' if command == 'neighbors' else ''} | {c['wall_s']:.2f} s | {st.get('read', float('nan')):.2f} s"
                  f" | {work:.2f} s | {st.get('write', float('nan')):.2f} s | {c['peak_rss_mb']:.0f} MB "
                  f"({c['extra_rss_mb']:+.0f} MB) |")
    for r in rows:
        if "unfolded" in r:
            u = r["unfolded"]
            print(f"\nAt {r['n']:,} ({r['kind']}): unfolded kernel {u['unfolded_s']:.2f} s, folded "
                  f"{u['folded_s']:.2f} s: {u['ratio']:.1f}x, same triplets: {u['equal']}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

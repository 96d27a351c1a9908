#!/usr/bin/env python
"""Times the kernels against the pure-PyTorch reference, in one run.

For each operation (score matrix, fused mining with random ties and with lowest-index ties, triplet
loss forward+backward) and size N
(anchors = candidates = N, synthetic records with realistic chest X-ray statistics; the loss uses
float32 embeddings of --dim dimensions and the triplets the miner finds) it measures the kernel
and the reference, the speed-up, and the extra memory each needs (peak RSS above the pre-call
level on the CPU, each case in its own process; peak allocated CUDA memory on a GPU). On a GPU
the loss row also reports its achieved bandwidth (compulsory bytes: read the embeddings, write
their gradients) against the card's copy bandwidth measured in the same run. A second table gives
the cost of random tie-breaking: the two mining rules' kernel times at each N. Prints the tables
and writes bench.json and bench.md to --out.

    python benchmarks/bench_kernels.py                 # CPU, full sizes
    python benchmarks/bench_kernels.py --quick         # CPU, small sizes (used by `make demo`)
    python benchmarks/bench_kernels.py --device cuda   # GPU sizes up to N = 32768
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# (op, N, run the reference too?) per profile
PROFILES = {
    "cpu-quick": [("score", 512, True), ("score", 2048, True), ("mine", 2048, True),
                  ("mine_first", 2048, True), ("mine", 8192, False), ("loss", 4096, True)],
    "cpu": [("score", 512, True), ("score", 1024, True), ("score", 2048, True),
            ("score", 4096, True), ("mine", 1024, True), ("mine", 4096, True),
            ("mine", 8192, True), ("mine", 16384, False), ("mine_first", 1024, True),
            ("mine_first", 4096, True), ("mine_first", 8192, False), ("mine_first", 16384, False),
            ("loss", 1024, True), ("loss", 4096, True), ("loss", 16384, True)],
    "cuda": [("score", 4096, True), ("score", 16384, True), ("score", 32768, True),
             ("mine", 4096, True), ("mine", 16384, True), ("mine", 32768, True),
             ("mine_first", 4096, False), ("mine_first", 16384, False), ("mine_first", 32768, False),
             ("loss", 4096, True), ("loss", 16384, True), ("loss", 32768, True)],
}
OPS = ("score", "mine", "mine_first", "loss")
OP_NAMES = {"score": "score matrix", "mine": "fused mining (random ties)",
            "mine_first": "fused mining (lowest-index ties)", "loss": "loss fwd+bwd"}
DEFAULT_DIM = {"cpu": 256, "cuda": 768}


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # lifetime peak, KiB


def digest(result):
    """Exact fingerprint of integer/score results; for the loss (float sums in different orders)
    the values themselves, compared with a tolerance by same_result()."""
    import torch

    if isinstance(result, dict):
        return {k: float(v.double().square().sum()) for k, v in result.items()}
    tensors = result if isinstance(result, tuple) else (result,)
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def same_result(a, b) -> bool:
    if isinstance(a, dict):
        return all(abs(a[k] - b[k]) <= 1e-4 * abs(b[k]) + 1e-12 for k in a)
    return a == b


def loss_case(n: int, dim: int, device: str, seed: int, impl: str):
    """A forward+backward closure over float32 embeddings and the triplets mined for N samples."""
    import torch

    from medtrim_ext import MultimodalTripletLoss, TripletMiner, reference
    from medtrim_ext.entities.synthetic import synthetic_entities

    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, dim, generator=g).to(device).requires_grad_()
    txt = torch.randn(n, dim, generator=g).to(device).requires_grad_()
    # Seeded: random tie-breaking and the semi-hard draw would otherwise differ between the
    # kernel's process and the reference's, and so would the triplets.
    triplets = TripletMiner()(synthetic_entities(n, seed=seed, device=device),
                              generator=torch.Generator().manual_seed(seed))
    crit = MultimodalTripletLoss(0.3)

    def run():
        img.grad = txt.grad = None
        if impl == "kernel":
            li, lt = crit(img, txt, triplets)
        else:
            li, lt = reference.multimodal_triplet_loss(img, txt, *triplets, 0.3)
        (li + lt).backward()
        return {"loss_img": li.detach(), "loss_txt": lt.detach(), "grad_img": img.grad, "grad_txt": txt.grad}

    return run


def copy_bandwidth(device: str) -> float:
    """Device copy bandwidth in bytes/s (read + write), 1 GiB buffer."""
    import torch

    x = torch.empty(2**28, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 4 * 10 / (time.perf_counter() - start)


def measure(op: str, impl: str, n: int, device: str, repeats: int, seed: int, dim: int = 256) -> dict:
    """One (op, impl, N) case in this process."""
    import torch

    from medtrim_ext import TripletMiner, reference
    from medtrim_ext.entities.synthetic import synthetic_entities

    ents = synthetic_entities(n, seed=seed, device=device)
    miner = TripletMiner()
    first = TripletMiner(tie_break="first")

    def mine_kernel(m):  # the same random choices (tie seed) every call, so results compare
        # the fused in-batch kernel itself (not the folded path large CPU calls take by default)
        return lambda: tuple(m(ents, generator=torch.Generator().manual_seed(seed), fold=False))

    def mine_reference(m):
        draw = m.draw(n, torch.Generator().manual_seed(seed))
        return lambda: tuple(reference.mine_triplets(
            ents, **m.weights, threshold=m.threshold, upper=m.upper,
            semi_hard=draw.semi_hard.to(ents.device), tie_seed=draw.tie_seed))

    fns = {
        ("score", "kernel"): lambda: miner.score_matrix(ents),
        ("score", "reference"): lambda: reference.score_matrix(ents, **miner.weights),
        ("mine", "kernel"): mine_kernel(miner),
        ("mine", "reference"): mine_reference(miner),
        ("mine_first", "kernel"): mine_kernel(first),
        ("mine_first", "reference"): mine_reference(first),
    }
    fn = loss_case(n, dim, device, seed, impl) if op == "loss" else fns[(op, impl)]
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    small = ents[: min(n, 64)]  # warm up code paths and thread pools without the big buffers
    (miner.score_matrix(small), miner(small), reference.score_matrix(small))
    if op == "loss":
        loss_case(min(n, 64), dim, device, seed, impl)()

    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = current_rss_bytes()
    result = fn()  # first call: the memory high-water mark
    sync()
    extra = (torch.cuda.max_memory_allocated() - base) if cuda else max(0, peak_rss_bytes() - base)
    check = digest(result)
    del result

    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
        del out
    row = {"op": op, "impl": impl, "n": n, "device": device, "median_ms": 1e3 * statistics.median(times),
           "min_ms": 1e3 * min(times), "repeats": repeats, "extra_memory_bytes": int(extra),
           "digest": check}
    if op == "loss":
        row["dim"] = dim
        # compulsory traffic: read both embedding matrices, write both gradients
        row["compulsory_bytes"] = 4 * n * dim * 4
    return row


def run_isolated(op, impl, n, device, repeats, seed, dim) -> dict:
    """Runs measure() in a fresh process so that RSS peaks of one case do not hide another's."""
    spec = json.dumps({"op": op, "impl": impl, "n": n, "device": device, "repeats": repeats,
                       "seed": seed, "dim": dim})
    proc = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {spec}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def repeats_for(op: str, impl: str, n: int, device: str) -> int:
    if device.startswith("cuda"):
        return 10 if impl == "kernel" else 3
    pairs = n * n
    if op == "loss":
        return 7 if impl == "kernel" else 5
    if impl == "reference":
        return 3 if pairs <= 2048**2 else 1
    return 7 if pairs <= 4096**2 else 3


def fmt_bytes(b: int | None) -> str:
    if b is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return str(b)


def machine_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def throughput(r: dict, bandwidth: float | None) -> str:
    ker = r["kernel"]
    if r["op"] != "loss":
        return f"{r['n'] * r['n'] / ker['median_ms'] / 1e3:.0f} Mpairs/s"
    gbs = ker["compulsory_bytes"] / ker["median_ms"] / 1e6
    text = f"D={ker['dim']}: {gbs:.0f} GB/s"
    if bandwidth:
        text += f" ({100 * gbs * 1e9 / bandwidth:.0f}% of copy)"
    return text


def tie_cost_table(rows: list[dict]) -> str:
    """Markdown: kernel time of fused mining with random ties against lowest-index ties, per N."""
    random_ = {r["n"]: r["kernel"]["median_ms"] for r in rows if r["op"] == "mine"}
    first = {r["n"]: r["kernel"]["median_ms"] for r in rows if r["op"] == "mine_first"}
    shared = sorted(set(random_) & set(first))
    if not shared:
        return ""
    lines = ["| N | random ties (ms) | lowest-index ties (ms) | cost of random ties |",
             "|---:|---:|---:|---:|"]
    for n in shared:
        lines.append(f"| {n} | {random_[n]:.2f} | {first[n]:.2f} | {random_[n] / first[n] - 1:+.0%} |")
    return "\n".join(lines)


def to_markdown(rows: list[dict], machine: str, bandwidth: float | None = None) -> str:
    lines = [f"Machine: {machine}"]
    if bandwidth:
        lines.append(f"Device copy bandwidth (read + write, measured in this run): {bandwidth / 1e9:.0f} GB/s")
    lines += ["",
              "| op | N | kernel (ms) | reference (ms) | speed-up | kernel throughput | kernel extra memory | reference extra memory | same result |",
              "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        ref = r.get("reference")
        ker = r["kernel"]
        lines.append("| {op} | {n} | {k:.2f} | {rf} | {sp} | {tp} | {km} | {rm} | {same} |".format(
            op=OP_NAMES[r["op"]], n=r["n"], k=ker["median_ms"],
            rf=f"{ref['median_ms']:.2f}" if ref else ("out of memory" if r.get("reference_oom") else "not run"),
            sp=f"{ref['median_ms'] / ker['median_ms']:.1f}x" if ref else "-",
            tp=throughput(r, bandwidth),
            km=fmt_bytes(ker["extra_memory_bytes"]),
            rm=fmt_bytes(ref["extra_memory_bytes"]) if ref else "-",
            same=("yes" if same_result(ker["digest"], ref["digest"]) else "NO") if ref else "-"))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="small sizes (CPU only)")
    parser.add_argument("--sizes", type=int, nargs="*", help="override the sizes N of every op")
    parser.add_argument("--ops", nargs="*", choices=OPS, default=list(OPS))
    parser.add_argument("--dim", type=int, default=None,
                        help="embedding dimension of the loss (default: 256 on CPU, 768 on a GPU)")
    parser.add_argument("--max-reference-n", type=int, default=None,
                        help="skip the reference above this N (memory/time)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(measure(**spec)))
        return 0

    import torch
    from tqdm import tqdm

    from medtrim_ext.utils.io import atomic_write

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    profile = "cuda" if cuda else ("cpu-quick" if args.quick else "cpu")
    dim = args.dim or DEFAULT_DIM["cuda" if cuda else "cpu"]
    cases = [c for c in PROFILES[profile] if c[0] in args.ops]
    if args.sizes:
        cases = [(op, n, True) for op in args.ops for n in args.sizes]
    if args.max_reference_n is not None:
        cases = [(op, n, ref and n <= args.max_reference_n) for op, n, ref in cases]

    runner = measure if cuda else run_isolated  # GPU memory is measured per call; no need to isolate
    rows = []
    jobs = [(op, n, impl) for op, n, ref in cases for impl in (("kernel", "reference") if ref else ("kernel",))]
    results = {}
    for op, n, impl in tqdm(jobs, desc=f"benchmark ({args.device})", unit="case"):
        try:
            results[(op, n, impl)] = runner(op, impl, n, args.device,
                                            repeats_for(op, impl, n, args.device), args.seed, dim)
        except torch.cuda.OutOfMemoryError:
            # the reference materializes N x N float64 matrices: report, do not abort the suite
            torch.cuda.empty_cache()
            results[(op, n, impl)] = None
            print(f"\n{impl} {op} N={n}: out of GPU memory")
    for op, n, ref in cases:
        if results[(op, n, "kernel")] is None:
            continue
        rows.append({"op": op, "n": n, "kernel": results[(op, n, "kernel")],
                     "reference": results.get((op, n, "reference")),
                     "reference_oom": ref and results.get((op, n, "reference")) is None})

    machine = machine_description(args.device)
    bandwidth = copy_bandwidth(args.device) if cuda else None
    table = to_markdown(rows, machine, bandwidth)
    ties = tie_cost_table(rows)
    if ties:
        table += "\n\nRandom against lowest-index tie-breaking (fused mining kernel, same run):\n\n" + ties
    print(table)
    report = {"machine": machine, "device": args.device, "profile": profile,
              "date": time.strftime("%Y-%m-%d"), "copy_bandwidth_bytes_per_s": bandwidth, "rows": rows}
    with atomic_write(args.out / "bench.json") as f:
        json.dump(report, f, indent=1)
    with atomic_write(args.out / "bench.md") as f:
        f.write(table + "\n")
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    mismatches = [r for r in rows
                  if r["reference"] and not same_result(r["kernel"]["digest"], r["reference"]["digest"])]
    if mismatches:
        print(f"ERROR: kernel and reference disagree for {[(r['op'], r['n']) for r in mismatches]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

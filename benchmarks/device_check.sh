#!/usr/bin/env bash
# Device check for a lent GPU machine (H100/H200), in stages that each fit one 600 s call.
#
#   bash benchmarks/device_check.sh STAGE [STAGE ...]     STAGE: build tests sanitizer bench train
#                                                        suite, or all (the first five, in order)
#
# Most important first; each stage prints its time budget and, at the end, its elapsed time, and
# runs under `timeout` at that budget, so a stage that would overrun the call is cut off with a
# message instead of taking the rest of the call with it. Expected durations on an H200 with 16
# cores (estimates: no stage has run on a GPU yet), budget in brackets:
#   build      pip build against the machine's torch, sm_90 only ........... 60-120 s  [420 s]
#   tests      the CUDA tests (tests/test_cuda.py + the device tests elsewhere) 90-200 s  [480 s]
#   sanitizer  compute-sanitizer memcheck, racecheck, synccheck on
#              benchmarks/sanitize_case.py, caching allocator off .......... 150-300 s  [540 s]
#   bench      benchmarks/bench_kernels.py --device cuda, the pure-PyTorch
#              references only up to N = 16384; whole collections (377k, 1M)
#              folded, with CUDA and CPU tensors ............................ 150-300 s  [480 s]
#   train      phantoms, batch 256, bf16, ViT-S/16 at 128 px (TRAIN_STEPS,
#              default 300), with the step-time breakdown ................... 150-350 s  [540 s]
#   suite      the rest of the test suite (not part of `all`) .............. 150-300 s  [540 s]
# One call per stage, `build` first, then `tests`, and so on. A stage that finds no CUDA build
# installed (the machine was handed back and a fresh one started) builds first, within its budget.
# Logs go to $OUT/<stage>.log ($OUT: the device tool's folder that comes back; default
# benchmarks/out/device). Exit status: 0 when every stage passed, else 1 (2: bad arguments).
set -uo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$REPO/benchmarks/out/device}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 MEDTRIM_CUDA=ON TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-16}"

declare -A BUDGET=([build]=420 [tests]=480 [sanitizer]=540 [bench]=480 [train]=540 [suite]=540)
declare -A EXPECTED=([build]="60-120 s" [tests]="90-200 s" [sanitizer]="150-300 s"
                     [bench]="120-250 s" [train]="150-350 s" [suite]="150-300 s")

# ---- the stages (each runs in its own `bash $SELF --body STAGE` under timeout) ----------------

body_build() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi failed"
  # everything a --no-build-isolation build needs, named one by one when missing
  "$PY" - <<'PYEOF' || return 1
import importlib.util, os, shutil, sys, sysconfig
missing = []
inc = sysconfig.get_paths()["include"]
if not os.path.exists(os.path.join(inc, "Python.h")):
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    missing.append(f"the Python {v} development headers: {inc}/Python.h does not exist, so CMake's "
                   f"FindPython(Development.Module) fails (install python{v}-dev, or build with a "
                   f"Python that has its headers)")
for mod, what in [("torch", "torch"), ("scikit_build_core", "scikit-build-core (build backend)")]:
    if importlib.util.find_spec(mod) is None:
        missing.append(f"the Python package {what} (pip install -c constraints.txt {what.split()[0]})")
for tool in ("cmake", "ninja"):
    if shutil.which(tool) is None and importlib.util.find_spec(tool) is None:
        missing.append(f"{tool} (pip install -c constraints.txt {tool})")
try:
    import torch
    print("python", sys.version.split()[0], "| torch", torch.__version__, "| torch CUDA", torch.version.cuda,
          "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE VISIBLE")
    if not torch.version.cuda:
        missing.append(f"a CUDA build of torch ({torch.__version__} is CPU-only)")
except Exception as e:  # noqa: BLE001
    missing.append(f"an importable torch ({e})")
nvcc = os.environ.get("CUDACXX") or shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
print("nvcc:", nvcc or "not found")
if nvcc is None:
    missing.append("nvcc (put the CUDA toolkit's bin on PATH or set CUDACXX)")
if missing:
    print("BUILD PREREQUISITES MISSING:")
    for m in missing:
        print("  -", m)
    sys.exit(1)
PYEOF
  if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
  local log="$OUT/build_pip.log"
  if ! (cd "$REPO" && "$PY" -m pip install --no-build-isolation --no-deps -v . >"$log" 2>&1); then
    echo "BUILD FAILED; the relevant lines of $log:"
    grep -n -i -E "Could NOT find|Development|Python.h|error|FATAL" "$log" | head -40
    echo "--- last 40 lines:"
    tail -40 "$log"
    return 1
  fi
  grep -E "medtrim_ext: (building|CUDA)" "$log" || true
  # from outside the repository, so that the installed package (with _C) is imported
  (cd /tmp && "$PY" -c "import json, medtrim_ext; i = medtrim_ext.build_info(); print(json.dumps(i)); \
assert 'cuda' in i['backends'], 'built without the CUDA kernels'")
}

# A device machine that sat idle is handed back, and the next call gets a fresh one without the
# build: every stage after `build` builds first when the installed package lacks the CUDA kernels
# (1-2 min of its budget).
ensure_built() {
  if (cd /tmp && "$PY" -c "import medtrim_ext, sys; sys.exit(0 if 'cuda' in medtrim_ext.build_info()['backends'] else 1)") 2>/dev/null; then
    return 0
  fi
  echo "--- medtrim_ext with CUDA kernels is not installed here (a fresh machine?): building first"
  local t0=$SECONDS
  body_build || { echo "build failed: cannot run this stage"; return 1; }
  echo "--- build took $((SECONDS - t0)) s"
}

body_tests() {
  ensure_built || return 1
  cd /tmp || return 1
  "$PY" -m pytest "$REPO/tests/test_cuda.py" "$REPO/tests/test_memory_bank.py::test_bank_follows_the_device" \
      "$REPO/tests/test_ops.py" -q -p no:cacheprovider -o addopts="-ra --import-mode=importlib" \
      --rootdir "$REPO" --junitxml="$OUT/tests_cuda.xml"
}

body_sanitizer() {
  if ! command -v compute-sanitizer >/dev/null; then
    for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do
      [ -x "$d/compute-sanitizer" ] && export PATH="$d:$PATH" && break
    done
  fi
  if ! command -v compute-sanitizer >/dev/null; then
    echo "SANITIZER SKIPPED: compute-sanitizer not found on this machine"
    return 0
  fi
  ensure_built || return 1
  compute-sanitizer --version | tail -1
  # without the caching allocator every tensor is its own cudaMalloc, so an access past a tensor's
  # end is outside any allocation and memcheck sees it
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  cd /tmp || return 1
  # does the sanitizer accept this device and driver at all? (a tiny CUDA program under it)
  if ! timeout 60 compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" -c \
      "import torch; x = torch.ones(8, device='cuda'); torch.cuda.synchronize(); print('probe ok', x.sum().item())" \
      >"$OUT/sanitizer_probe.log" 2>&1; then
    echo "SANITIZER REFUSES THIS DEVICE (or driver): the probe failed; its output:"
    tail -20 "$OUT/sanitizer_probe.log"
    echo "continuing without the sanitizer"
    return 0
  fi
  local rc=0 tool limit
  for tool in memcheck racecheck synccheck; do
    case $tool in memcheck) limit=150 ;; racecheck) limit=180 ;; synccheck) limit=100 ;; esac
    echo "--- $tool (at most $limit s)"
    local extra=()
    [ "$tool" = memcheck ] && extra=(--leak-check no)
    local t0=$SECONDS
    timeout -k 5 "$limit" compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 3 \
        "$PY" "$REPO/benchmarks/sanitize_case.py" >"$OUT/sanitizer_$tool.log" 2>&1
    local r=$?
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitize case|Error:" "$OUT/sanitizer_$tool.log" | tail -5
    case $r in
      0) echo "$tool: clean ($((SECONDS - t0)) s)" ;;
      124|137) echo "$tool: CUT OFF after $limit s (incomplete, not a failure of the code)"; rc=1 ;;
      *) echo "$tool: FAILED (exit $r, $((SECONDS - t0)) s); first reports:"
         grep -m 20 -E "^=========" "$OUT/sanitizer_$tool.log"; rc=1 ;;
    esac
  done
  return $rc
}

body_bench() {
  ensure_built || return 1
  cd /tmp || return 1
  # the references materialize N x N float64 matrices and take seconds each beyond N = 16384
  "$PY" "$REPO/benchmarks/bench_kernels.py" --device cuda --max-reference-n 16384 --out "$OUT" || return 1
  # whole collections (issue 23): MetaEntities.unique on the GPU, the folded kernel (CPU, all
  # cores) with CUDA inputs and outputs, against CPU inputs; 377k and 1M resampled records
  "$PY" - <<'PYEOF'
import time, torch
from medtrim_ext import MetaEntities, TripletMiner
from medtrim_ext.entities.synthetic import synthetic_records
base = MetaEntities.from_records(synthetic_records(40000, seed=1) + [{}] * 60000)
miner = TripletMiner()
print(f"collections: {torch.get_num_threads()} CPU threads, {torch.cuda.get_device_name()}")
for n in (377_000, 1_000_000):
    ents = base[torch.randint(0, len(base), (n,), generator=torch.Generator().manual_seed(0))]
    draw = miner.draw(n, torch.Generator().manual_seed(0))
    for dev in ("cpu", "cuda"):
        e = ents.to(dev)
        torch.cuda.synchronize()
        t = time.perf_counter(); u = e.unique(); torch.cuda.synchronize(); tu = time.perf_counter() - t
        t = time.perf_counter(); got = miner.mine_collection(e, draw=draw); torch.cuda.synchronize()
        tm = time.perf_counter() - t
        t = time.perf_counter(); near = miner.neighbors(e, k=10, draw=draw); torch.cuda.synchronize()
        tn = time.perf_counter() - t
        if dev == "cpu":
            ref = got
        same = torch.equal(got.positive.cpu(), ref.positive) and torch.equal(got.negative.cpu(), ref.negative)
        print(f"  n={n:,} ({len(u[0]):,} distinct) {dev}: unique {tu:.3f} s, mine {tm:.2f} s, "
              f"top-10 {tn:.2f} s, same triplets as CPU: {same}")
PYEOF
}

body_train() {
  ensure_built || return 1
  local dir=/tmp/medtrim-train-gpu rc=0
  rm -rf "$dir"
  # the run folder (checkpoints: hundreds of MB) stays on the machine; its logs come back
  (cd /tmp && "$PY" -m medtrim_ext.train --config phantoms-gpu --no-eval \
      "train.out_dir=$dir" "train.steps=${TRAIN_STEPS:-300}" train.progress=false) || rc=1
  cp "$dir/train_summary.json" "$dir/metrics.csv" "$OUT/" 2>/dev/null || return 1
  "$PY" - "$OUT/train_summary.json" <<'PYEOF' || rc=1
import json, sys
s = json.load(open(sys.argv[1]))
t = s["step_time"]
print(f"{s['steps']} steps on {s['device']} ({s['amp']}), {s['wall_s']:.1f} s; mean per step:")
for k, v in t.items():
    print(f"  {k:18s} {v * 1e3:8.2f} ms  {v / t['total']:6.1%}")
share = sum(t.get(k, 0) for k in ("mining", "loss_forward", "loss_backward")) / t["total"]
print(f"mining + loss (forward and backward): {share:.1%} of a step")
PYEOF
  return $rc
}

body_suite() {
  ensure_built || return 1
  # the GPU machines have no spaCy/medspacy (and maybe no pandas): the tests of entity extraction,
  # of the datasets' extraction path, of the demo and the README blocks (CPU-only, covered by CI)
  # are skipped there. The install tests resolve against PyPI and build a venv with numpy from PyPI: nothing can be
  # fetched there (CI runs them); the integrations' tests skip themselves without their libraries
  local skip=(--ignore="$REPO/tests/test_cuda.py" --ignore="$REPO/tests/test_resolution.py"
              --ignore="$REPO/tests/test_core_install.py")
  if ! "$PY" -c "import spacy, medspacy, yaml, pandas, pyarrow" 2>/dev/null; then
    echo "spaCy/medspacy/pyyaml/pandas/pyarrow missing: skipping the tests that need them"
    for t in test_extraction.py test_extraction_io.py test_datasets.py test_entity_cache.py \
             test_phantoms.py test_train_cli.py test_readme.py; do
      skip+=(--ignore="$REPO/tests/$t")
    done
  fi
  cd /tmp && "$PY" -m pytest "$REPO/tests" -q -p no:cacheprovider -o addopts="-ra --import-mode=importlib" \
      --rootdir "$REPO" "${skip[@]}" --junitxml="$OUT/tests_suite.xml"
}

# ---- driver ------------------------------------------------------------------------------------

if [ "${1:-}" = "--body" ]; then
  "body_$2"
  exit $?
fi

usage() { echo "usage: bash benchmarks/device_check.sh {build|tests|sanitizer|bench|train|suite|all} ..."; }
[ $# -ge 1 ] || { usage; exit 2; }
stages=()
for s in "$@"; do
  case $s in
    all) stages+=(build tests sanitizer bench train) ;;
    build|tests|sanitizer|bench|train|suite) stages+=("$s") ;;
    *) usage; exit 2 ;;
  esac
done

status=0
for s in "${stages[@]}"; do
  budget=${BUDGET[$s]}
  {
    echo
    echo "=== stage $s: budget $budget s, expected ${EXPECTED[$s]} on an H200 (start $(date +%T))"
    t0=$SECONDS
    timeout -k 10 "$budget" bash "$SELF" --body "$s"
    rc=$?
    elapsed=$((SECONDS - t0))
    case $rc in
      0) verdict="passed" ;;
      124|137) verdict="CUT OFF at its budget (raise it, or run the stage's parts by hand)" ;;
      *) verdict="FAILED (exit $rc)" ;;
    esac
    echo "=== stage $s: $verdict; elapsed $elapsed s of $budget s"
    exit $rc
  } 2>&1 | tee "$OUT/$s.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
exit $status

#!/usr/bin/env bash
# Device check for a lent GPU machine (H100/H200), in one short run (target: under 5 minutes):
#   1. build in place against the machine's own torch (pip --no-build-isolation, sm_90 only)
#   2. the whole test suite, CUDA tests included
#   3. compute-sanitizer memcheck on a small case that touches every CUDA kernel (scores, mining,
#      pair scores, the loss's forward and backward with and without candidates, fp32 and bf16)
#   4. the GPU benchmark (every kernel against the pure-PyTorch reference, the loss with the
#      achieved bandwidth against the card's copy bandwidth)
#   5. a short training run on the phantoms at a realistic batch (256, bf16, ViT-S/16 at 128 px,
#      the phantoms-gpu preset) with the step-time breakdown (data, encoders, mining, loss)
# Everything is logged to $OUT (the device tool brings it back), default benchmarks/out/device.
#   run: bash benchmarks/device_check.sh
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$REPO/benchmarks/out/device}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 MEDTRIM_CUDA=ON TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-16}"
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

{
  step "machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"

  step "build"
  (cd "$REPO" && "$PY" -m pip install --no-build-isolation --no-deps --quiet .) || { echo "BUILD FAILED"; exit 1; }
  # run from outside the repository so the installed package (with _C) is imported
  cd /tmp && "$PY" -c "import json, medtrim_ext; print(json.dumps(medtrim_ext.build_info()))"

  step "tests"
  # the GPU machines have no spaCy/medspacy (and maybe no pandas): the tests of entity extraction,
  # of the datasets' extraction path and of the demo (CPU-only, covered by CI) are skipped there
  skip_extraction=()
  if ! "$PY" -c "import spacy, medspacy, yaml, pandas, pyarrow" 2>/dev/null; then
    echo "spaCy/medspacy/pyyaml/pandas/pyarrow missing: skipping the tests that need them"
    for t in test_extraction.py test_extraction_io.py test_datasets.py test_entity_cache.py \
             test_phantoms.py test_train_cli.py; do
      skip_extraction+=(--ignore="$REPO/tests/$t")
    done
  fi
  "$PY" -m pytest "$REPO/tests" -q -p no:cacheprovider -o addopts="-ra --import-mode=importlib" \
      "${skip_extraction[@]}" --junitxml="$OUT/tests.xml" || status=1

  step "compute-sanitizer memcheck"
  if command -v compute-sanitizer >/dev/null; then
    compute-sanitizer --tool memcheck --error-exitcode 3 --leak-check no \
        "$PY" "$REPO/benchmarks/sanitize_case.py" || status=1
  else
    echo "compute-sanitizer not found"; status=1
  fi

  step "benchmark"
  "$PY" "$REPO/benchmarks/bench_kernels.py" --device cuda --out "$OUT" || status=1

  step "training: phantoms, batch 256, bf16"
  # the run folder (checkpoints: hundreds of MB) stays on the machine; its logs come back
  TRAIN_DIR=/tmp/medtrim-train-gpu
  rm -rf "$TRAIN_DIR"
  (cd /tmp && "$PY" -m medtrim_ext.train --config phantoms-gpu --no-eval \
      "train.out_dir=$TRAIN_DIR" train.progress=false) || status=1
  cp "$TRAIN_DIR/train_summary.json" "$TRAIN_DIR/metrics.csv" "$OUT/" 2>/dev/null || status=1
  "$PY" - "$OUT/train_summary.json" <<'PYEOF' || status=1
import json, sys
s = json.load(open(sys.argv[1]))
t = s["step_time"]
print(f"{s['steps']} steps on {s['device']} ({s['amp']}), {s['wall_s']:.1f} s; mean per step:")
for k, v in t.items():
    print(f"  {k:18s} {v * 1e3:8.2f} ms  {v / t['total']:6.1%}")
share = sum(t.get(k, 0) for k in ("mining", "loss_forward", "loss_backward")) / t["total"]
print(f"mining + loss (forward and backward): {share:.1%} of a step")
PYEOF

  step "done: status $status"
  exit "$status"
} 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"

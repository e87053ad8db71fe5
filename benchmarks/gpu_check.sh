#!/usr/bin/env bash
# The GPU check of the fast path, for one unattended run on a CUDA machine (one H200: ~4-6 min,
# at most ~8 min by the per-step time caps below).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Steps (each runs even when an earlier one failed; a summary at the end names what failed):
#   1. environment: nvidia-smi, versions, imports (longtail is used from this checkout via
#      PYTHONPATH, no install needed);
#   2. data: CIFAR-10 from .cache/cifar10/cifar-10-batches-py, or built there from
#      shared/data/cifar10_from_jpeg.py (./shared or ../shared); without either, the benchmark
#      falls back to the synthetic set at CIFAR-10-LT's size (throughput only; said so);
#   3. CUDA unit tests: `pytest -k cuda tests/` (the tests marked `cuda` in tests/test_fast_path.py
#      and the other CUDA-graph tests, whose names all contain "cuda");
#   4. benchmark: benchmarks/bench_cifar.py --device cuda --compile: (a) conventional loop vs
#      (b) the fast path, s/epoch; (c) the 200-epoch GCL two-stage recipe end to end with its top-1;
#      (b') the fast path with torch.compile (last, so a time cap only costs that row).
# Outputs: $OUT/ (the folder that comes back; default .cache/gpu_check-<time>) gets the test
# report, the benchmark JSON + markdown, the run logs and nvidia-smi; the benchmark results also
# go to benchmarks/results/gpu_check-<time>.{json,md}.
# Time caps (seconds, env): DATA_BUDGET=60 TEST_BUDGET=120 BENCH_BUDGET=300.
set -u
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
STAMP=$(date +%Y%m%d-%H%M%S)
OUT="${OUT:-$REPO/.cache/gpu_check-$STAMP}"
mkdir -p "$OUT" "$REPO/benchmarks/results" "$REPO/.cache"
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DATA_BUDGET=${DATA_BUDGET:-60}
TEST_BUDGET=${TEST_BUDGET:-120}
BENCH_BUDGET=${BENCH_BUDGET:-300}
T_START=$SECONDS
declare -a SUMMARY=()
FAILS=0

note() { echo; echo "=== $* (t=$((SECONDS - T_START)) s)"; }
record() {  # record NAME RC [detail]
  local name=$1 rc=$2 detail=${3:-}
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("ok      $name $detail")
  else
    FAILS=$((FAILS + 1))
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then detail="timed out (cap) $detail"; fi
    SUMMARY+=("FAILED  $name (exit $rc) $detail")
  fi
}

# -- 1. environment ------------------------------------------------------------------------------
note "environment"
{ nvidia-smi 2>&1 || echo "nvidia-smi not available"; } | tee "$OUT/nvidia-smi.txt" | head -20
"$PY" - <<'EOF' 2>&1 | tee "$OUT/environment.txt"
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for mod in ("torch", "torchvision", "numpy", "yaml", "tqdm", "PIL", "pytest", "triton"):
    try:
        m = importlib.import_module(mod)
        print(f"{mod:12s} {getattr(m, '__version__', '?')}")
    except Exception as err:  # report and go on
        print(f"{mod:12s} MISSING ({type(err).__name__}: {err})")
import torch
print("cuda available", torch.cuda.is_available(), "| torch.version.cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "| bf16", torch.cuda.is_bf16_supported(),
          "| cudnn", torch.backends.cudnn.version())
import longtail
print("longtail", longtail.__version__, "from", longtail.__file__)
EOF
ENV_RC=${PIPESTATUS[0]}
record "environment" "$ENV_RC"
CUDA_OK=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
[ "$CUDA_OK" = "1" ] || { SUMMARY+=("WARNING no CUDA device visible: the cuda tests skip, the benchmark fails"); }

# -- 2. data -------------------------------------------------------------------------------------
note "data"
CIFAR="$REPO/.cache/cifar10"
complete() {
  for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch batches.meta; do
    [ -f "$1/cifar-10-batches-py/$f" ] || return 1
  done
}
declare -a DATA_ARGS=()
if complete "$CIFAR"; then
  echo "CIFAR-10 found in $CIFAR"
  DATA_ARGS=(--data "$CIFAR")
  record "data (found .cache/cifar10)" 0
else
  SCRIPT=""
  for s in "$REPO/shared/data/cifar10_from_jpeg.py" "$REPO/../shared/data/cifar10_from_jpeg.py"; do
    [ -f "$s" ] && { SCRIPT=$s; break; }
  done
  if [ -n "$SCRIPT" ]; then
    echo "building CIFAR-10 into $CIFAR from $SCRIPT"
    TMP="$REPO/.cache/cifar10.tmp-$$"
    rm -rf "$TMP"
    t0=$SECONDS
    timeout -k 5 "$DATA_BUDGET" "$PY" "$SCRIPT" "$TMP"
    rc=$?
    if [ $rc -eq 0 ] && complete "$TMP"; then
      rm -rf "$CIFAR" && mv "$TMP" "$CIFAR"
      DATA_ARGS=(--data "$CIFAR")
    else
      rc=$(( rc == 0 ? 1 : rc ))
    fi
    rm -rf "$TMP"
    record "data (built from $SCRIPT in $((SECONDS - t0)) s)" "$rc"
  else
    echo "no CIFAR-10 and no cifar10_from_jpeg.py"
    record "data (no CIFAR-10, no shared/data)" 1
  fi
fi
if [ ${#DATA_ARGS[@]} -eq 0 ]; then
  echo "falling back to the synthetic dataset at CIFAR-10-LT size (n_max 5000, rho 100): throughput only"
  DATA_ARGS=(--dataset synthetic --subset 5000)
  SUMMARY+=("NOTE    benchmark on the synthetic set (no CIFAR-10): accuracies are not CIFAR's")
fi

# -- 3. CUDA unit tests --------------------------------------------------------------------------
note "CUDA unit tests: pytest -k cuda tests/ (cap ${TEST_BUDGET} s)"
CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout -k 10 "$TEST_BUDGET" "$PY" -m pytest -q -rfEsxX -p no:cacheprovider \
  -k cuda tests/ --junitxml="$OUT/cuda_tests.xml" 2>&1 | tee "$OUT/cuda_tests.txt" | tail -40
TEST_RC=${PIPESTATUS[0]}
TEST_LINE=$(grep -E "(passed|failed|error|skipped|no tests ran)" "$OUT/cuda_tests.txt" | tail -1)
record "cuda tests" "$TEST_RC" "${TEST_LINE:-}"

# -- 4. benchmark --------------------------------------------------------------------------------
NAME="gpu_check-$STAMP"
note "benchmark: bench_cifar.py --device cuda --compile ${DATA_ARGS[*]} (cap ${BENCH_BUDGET} s)"
WORK="$REPO/.cache/bench_cifar/$STAMP"
timeout -k 15 "$BENCH_BUDGET" "$PY" benchmarks/bench_cifar.py --device cuda --compile "${DATA_ARGS[@]}" \
  --out "benchmarks/results/$NAME" --workdir "$WORK" 2>&1 | tee "$OUT/bench.txt"
BENCH_RC=${PIPESTATUS[0]}
record "benchmark" "$BENCH_RC" "-> benchmarks/results/$NAME.{json,md}"
cp -f "benchmarks/results/$NAME.json" "benchmarks/results/$NAME.md" "$OUT/" 2>/dev/null \
  || SUMMARY+=("WARNING no benchmark result files to copy")
mkdir -p "$OUT/logs"
find "$WORK" -maxdepth 3 \( -name "*.log" -o -name "log.jsonl" -o -name "metrics.json" \) -size -2M 2>/dev/null |
  while read -r f; do cp -f "$f" "$OUT/logs/$(echo "${f#"$WORK"/}" | tr '/' '_')"; done

# -- summary -------------------------------------------------------------------------------------
note "summary"
[ -f "benchmarks/results/$NAME.md" ] && cat "benchmarks/results/$NAME.md"
echo
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
echo "total $((SECONDS - T_START)) s; outputs in $OUT"
exit "$FAILS"

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
#      (b') the fast path with torch.compile (last, so a time cap only costs that row);
#   5. key rows: `longtail reproduce key` at the full schedule, TRAIN_JOBS runs at once on the one
#      GPU, seed 0 first, then seeds 1 2 while time is left; the small files of every finished run
#      go to $OUT/results/<machine> (`longtail results collect`), ready to copy into results/.
#
# STEPS="tests bench train" (default) picks steps; SEED_GROUPS="0;1 2" (default) gives the seed
# groups of step 5, run in turn. A second call with STEPS=train continues the key rows where the
# first stopped (finished runs are skipped, interrupted ones resume).
# DRY_RUN=1: the same steps on the CPU at tiny sizes (synthetic data, 2 epochs), outputs only in
# $OUT; tests/test_gpu_check.py runs it in CI so that a script error never wastes GPU time.
# Outputs: $OUT/ (the folder that comes back; default .cache/gpu_check-<time>) gets the test
# report, the benchmark JSON + markdown, the run logs and nvidia-smi; the benchmark results also
# go to benchmarks/results/gpu_check-<time>.{json,md}.
# Time caps (seconds, env): DATA_BUDGET=60 TEST_BUDGET=120 BENCH_BUDGET=300 TRAIN_BUDGET=900, and
# TOTAL_BUDGET=570 for the whole call (the train step gets what is left of it).
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
TRAIN_BUDGET=${TRAIN_BUDGET:-900}
TOTAL_BUDGET=${TOTAL_BUDGET:-570}
TRAIN_JOBS=${TRAIN_JOBS:-5}
STEPS=${STEPS:-tests bench train}
DRY_RUN=${DRY_RUN:-0}
# seed groups of the key-rows step, run one after the other (seed 0 of every row first)
if [ "$DRY_RUN" = "1" ]; then SEED_GROUPS=${SEED_GROUPS:-0;1}; else SEED_GROUPS=${SEED_GROUPS:-0;1 2}; fi
T_START=$SECONDS
want() { case " $STEPS " in *" $1 "*) return 0;; *) return 1;; esac; }
left() { echo $((TOTAL_BUDGET - (SECONDS - T_START))); }
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
[ "$CUDA_OK" = "1" ] || [ "$DRY_RUN" = "1" ] || {
  SUMMARY+=("WARNING no CUDA device visible: the cuda tests skip, the benchmark fails"); }

# -- 2. data -------------------------------------------------------------------------------------
note "data"
CIFAR="$REPO/.cache/cifar10"
complete() {
  for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch batches.meta; do
    [ -f "$1/cifar-10-batches-py/$f" ] || return 1
  done
}
declare -a DATA_ARGS=()
if [ "$DRY_RUN" = "1" ]; then
  echo "dry run: synthetic data, CPU"
elif complete "$CIFAR"; then
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
if [ ${#DATA_ARGS[@]} -eq 0 ] && [ "$DRY_RUN" != "1" ]; then
  echo "falling back to the synthetic dataset at CIFAR-10-LT size (n_max 5000, rho 100): throughput only"
  DATA_ARGS=(--dataset synthetic --subset 5000)
  SUMMARY+=("NOTE    benchmark on the synthetic set (no CIFAR-10): accuracies are not CIFAR's")
fi

# -- 3. CUDA unit tests --------------------------------------------------------------------------
if want tests; then
note "CUDA unit tests: pytest -k cuda tests/ (cap ${TEST_BUDGET} s)"
CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout -k 10 "$TEST_BUDGET" "$PY" -m pytest -q -rfEsxX -p no:cacheprovider \
  -k cuda tests/ --junitxml="$OUT/cuda_tests.xml" 2>&1 | tee "$OUT/cuda_tests.txt" | tail -40
TEST_RC=${PIPESTATUS[0]}
TEST_LINE=$(grep -E "(passed|failed|error|skipped|no tests ran)" "$OUT/cuda_tests.txt" | tail -1)
record "cuda tests" "$TEST_RC" "${TEST_LINE:-}"
fi

# -- 4. benchmark --------------------------------------------------------------------------------
NAME="gpu_check-$STAMP"
RESULTS_DIR="benchmarks/results"
declare -a BENCH_ARGS=(--device cuda --compile "${DATA_ARGS[@]}")
if [ "$DRY_RUN" = "1" ]; then  # the same parts at tiny sizes; results only in $OUT
  NAME="dry-run"
  RESULTS_DIR="$OUT"
  BENCH_ARGS=(--device cpu --dataset synthetic --subset 100 --epochs 1 --timed-epochs 1 --warmup-epochs 0
              --workers 1 --conventional-epochs 1 --eval-repeats 1 --concurrency off --stage2 off --profile off --ceiling off
              data.params.test_per_class=5)
fi
if want bench; then
note "benchmark: bench_cifar.py ${BENCH_ARGS[*]} (cap ${BENCH_BUDGET} s)"
WORK="$REPO/.cache/bench_cifar/$STAMP"
timeout -k 15 "$BENCH_BUDGET" "$PY" benchmarks/bench_cifar.py "${BENCH_ARGS[@]}" \
  --out "$RESULTS_DIR/$NAME" --workdir "$WORK" 2>&1 | tee "$OUT/bench.txt"
BENCH_RC=${PIPESTATUS[0]}
record "benchmark" "$BENCH_RC" "-> $RESULTS_DIR/$NAME.{json,md}"
if [ "$RESULTS_DIR" != "$OUT" ]; then
  cp -f "$RESULTS_DIR/$NAME.json" "$RESULTS_DIR/$NAME.md" "$OUT/" 2>/dev/null \
    || SUMMARY+=("WARNING no benchmark result files to copy")
fi
mkdir -p "$OUT/logs"
find "$WORK" -maxdepth 3 \( -name "*.log" -o -name "log.jsonl" -o -name "metrics.json" \) -size -2M 2>/dev/null |
  while read -r f; do cp -f "$f" "$OUT/logs/$(echo "${f#"$WORK"/}" | tr '/' '_')"; done
fi

# -- 5. key rows at the full schedule ------------------------------------------------------------
if want train; then
  RUNS="$REPO/.cache/key_runs"
  TAG="h200"
  declare -a TRAIN_ARGS=()
  if [ "$DRY_RUN" = "1" ]; then
    RUNS="$OUT/key_runs"
    TAG="dry-run"
    TRAIN_ARGS=(data.name=synthetic data.params.n_max=100 data.params.test_per_class=3 data.batch_size=32
                data.num_workers=0 optim.epochs=2 stage2.epochs=1 tensorboard=false)
  elif [ "${DATA_ARGS[0]:-}" = "--data" ]; then
    TRAIN_ARGS=(data.root="${DATA_ARGS[1]}")
  fi
  if [ ${#TRAIN_ARGS[@]} -eq 0 ]; then
    record "key rows (no CIFAR-10: not trained)" 1
  else
    IFS=';' read -r -a GROUPS_ <<< "$SEED_GROUPS"
    for SEEDS in "${GROUPS_[@]}"; do
      CAP=$(left)
      [ "$CAP" -gt "$TRAIN_BUDGET" ] && CAP=$TRAIN_BUDGET
      if [ "$CAP" -lt 30 ]; then
        SUMMARY+=("SKIPPED key rows, seeds $SEEDS: no time left (TOTAL_BUDGET=$TOTAL_BUDGET)")
        continue
      fi
      note "key rows: longtail reproduce key --seeds $SEEDS --jobs $TRAIN_JOBS (cap $CAP s)"
      # shellcheck disable=SC2086
      timeout -s INT -k 30 "$CAP" "$PY" -m longtail reproduce key "${TRAIN_ARGS[@]}" --seeds $SEEDS --rho 100 \
        --out "$RUNS" --jobs "$TRAIN_JOBS" 2>&1 | tail -40 | tee "$OUT/key_rows_seeds_${SEEDS// /_}.txt"
      record "key rows, seeds $SEEDS" "${PIPESTATUS[0]}" "-> $RUNS"
    done
    "$PY" -m longtail results collect "$RUNS" --into "$OUT/results/$TAG" 2>&1 | tee "$OUT/collect.txt"
    record "collect run files" "${PIPESTATUS[0]}" "-> $OUT/results/$TAG (copy into results/$TAG, then: longtail results page)"
  fi
fi

# -- summary -------------------------------------------------------------------------------------
note "summary"
[ -f "$RESULTS_DIR/$NAME.md" ] && cat "$RESULTS_DIR/$NAME.md"
echo
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
echo "total $((SECONDS - T_START)) s; outputs in $OUT"
exit "$FAILS"

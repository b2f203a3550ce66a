#!/usr/bin/env bash
# The GPU check, in one call of a lent H200 (10 minutes a command) with time left for a rerun: build fastlstm
# with its CUDA kernels, run only the CUDA tests (CI runs the CPU half) with the persistent CUDA path off and
# on, measure the parity errors, and time FastLSTM against cuDNN. Every stage runs under `timeout`, its limit
# cut to what is left of a whole-run budget (GPU_CHECK_BUDGET_S, default 480 s), and appends its status line
# to OUTDIR/stages.txt the moment it ends, so a run cut short still shows what passed.
#
# Time per stage on an H200 with 16 cores: ESTIMATES, never measured (no GPU has run this yet):
#   env                      ~5 s
#   build                    ~90 s    nvcc for sm_90 only, MAX_JOBS=$(nproc)
#   tests (3 in parallel)    ~120 s   the CUDA tests, default path | the same, persistent path | torch.compile
#                                     on CUDA, then scripts/gpu_parity.py
#   bench-persistent         ~80 s    scripts/gpu_bench_persistent.py, stops starting cases at 75 s
#   bench-grid               ~25 s    python -m fastlstm.bench --grid gpu, 2 short rounds, no cell loop
#   summary                  ~2 s
#   total                    ~5.5 min; at most GPU_CHECK_BUDGET_S (8 min) whatever happens, so a machine
#                            started for it (1-2 min) keeps time in a 15-minute lease for a rerun. On the
#                            still-warm machine the ignored build outputs stay, so a rerun's build is
#                            incremental (or SKIP_BUILD=1 when csrc/ did not change).
#
# OUTDIR gets at most 8 files, as many as the lent machine sends back:
#   stages.txt               one line per stage: name, PASS / FAIL(rc) / TIMEOUT / SKIP, seconds, limit, log
#   summary.md               machine, stages, test counts and failures per run, parity, both benchmarks
#   parity.md                max errors of FastLSTM vs cuDNN and vs the float64 oracle (scripts/gpu_parity.py)
#   bench_persistent.md/.json   cuDNN vs FastLSTM default vs persistent path, T=1024 (gpu_bench_persistent.py)
#   bench_gpu.json           python -m fastlstm.bench --device cuda --grid gpu
#   logs.tar.gz              every log and junit file (rewritten after each stage)
# The logs themselves go to GPU_CHECK_LOGDIR (default OUTDIR/logs; on the lent machine point it outside $OUT).
#
# Needs no package registry. PYTHON (default python3, else python), TORCH_CUDA_ARCH_LIST (default 9.0),
# MAX_JOBS, PYTEST_ARGS (added to every pytest run), SKIP_BUILD=1 (use the build in the tree),
# SKIP_KERNEL_CHECK=1 (go on without CUDA kernels: to dry-run the script itself where there is no GPU).
# Exits non-zero if any stage failed or timed out.
#
# Usage: scripts/gpu_check.sh OUTDIR
# On the lent machine: GPU_CHECK_LOGDIR=/tmp/gpu_check_logs scripts/gpu_check.sh "$OUT"
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
mkdir -p "$1" && OUT=$(cd "$1" && pwd) || exit 2
LOGS=${GPU_CHECK_LOGDIR:-$OUT/logs}
mkdir -p "$LOGS" && LOGS=$(cd "$LOGS" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif command -v python3 >/dev/null 2>&1; then PY=python3
else PY=python
fi
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
RESERVE_S=15  # kept back for the summary and the log archive
STAGES=$OUT/stages.txt
: > "$STAGES"
status=0

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export FASTLSTM_FORCE_CUDA=${FASTLSTM_FORCE_CUDA:-1}  # no nvcc must be a build failure, not a CPU-only build
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

note() { echo "== gpu_check: $* ($(date -u +%H:%M:%S), ${SECONDS}s of ${BUDGET_S}s)"; }

record() {  # NAME RESULT SECONDS LIMIT LOG [WHY]
  printf '%-17s %-9s %4ss  (limit %4ss)  %s%s\n' "$1" "$2" "$3" "$4" "$5" "${6:+  $6}" >> "$STAGES"
}

# stage NAME LIMIT_S LOG CMD...: CMD (stdout and stderr to LOGS/LOG) under `timeout`, the limit cut to the
# budget left; records the outcome; returns CMD's status (124: timed out, 3: no time left to start it).
stage() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$((BUDGET_S - SECONDS - RESERVE_S))
  if [ "$left" -lt 10 ]; then
    record "$name" SKIP 0 0 "$log" "no time left in the ${BUDGET_S}s budget"
    return 3
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS rc res
  timeout -k 10 "$limit" "$@" > "$LOGS/$log" 2>&1
  rc=$?
  case $rc in
    0) res=PASS ;;
    124 | 137) res=TIMEOUT ;;
    *) res="FAIL($rc)" ;;
  esac
  record "$name" "$res" $((SECONDS - t0)) "$limit" "$log"
  echo "   $name: $res ($((SECONDS - t0)) s)"
  return $rc
}

summarize() {  # summary.md and logs.tar.gz from whatever exists now; cheap, so run after every stage
  timeout 20 "$PY" scripts/gpu_check_summary.py "$OUT" "$LOGS" > "$OUT/summary.md" 2> "$LOGS/summary.log" ||
    echo "gpu_check: the summary failed (see summary.log)" >> "$OUT/summary.md"
  tar -czf "$OUT/logs.tar.gz.tmp" -C "$LOGS" . 2> /dev/null && mv -f "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

py_has() { "$PY" -c "import $1" > /dev/null 2>&1; }

# -------------------------------------------------------------------------------------------- environment
note "environment"
env_probe() {
  nvidia-smi 2>&1 || echo "nvidia-smi not available"
  "$PY" - << 'EOF'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")
EOF
  command -v nvcc > /dev/null && nvcc --version | tail -n 2
  echo "nproc $(nproc); TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  echo "git $(git rev-parse --short HEAD 2> /dev/null), $(git status --porcelain 2> /dev/null | wc -l) files changed"
}
export -f env_probe
export PY
stage env 60 env.txt bash -c env_probe
cat "$LOGS/env.txt"

# ------------------------------------------------------------------------------------------------- build
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  note "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
  stage build 240 build.log "$PY" -m pip install --no-build-isolation --no-deps --no-index \
    --disable-pip-version-check -e .
  rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 137 ] && [ $rc -ne 3 ]; then
    # pip can refuse (an externally managed Python, setuptools < 64 for editable installs); an in-place
    # build needs neither, and the tree is on PYTHONPATH.
    stage build-inplace 240 build_inplace.log "$PY" setup.py build_ext --inplace || status=1
  elif [ $rc -ne 0 ]; then
    status=1
  fi
  tail -n 3 "$LOGS"/build*.log
fi
if [ "${SKIP_KERNEL_CHECK:-0}" = 1 ]; then
  record kernels SKIP 0 0 - "SKIP_KERNEL_CHECK=1"
elif ! timeout 60 "$PY" -c "import fastlstm, sys; sys.exit(0 if fastlstm.has_kernels('cuda') else 1)" \
  > "$LOGS/kernels.log" 2>&1; then
  record kernels FAIL 0 0 kernels.log "fastlstm has no CUDA kernels (or does not import): nothing to test"
  status=1
  summarize
  cat "$STAGES"
  exit $status
else
  record kernels PASS 0 0 kernels.log
fi
summarize

# ------------------------------------------------------------------ tests (three processes, one GPU)
# Correctness work only, so the three share the GPU; the benchmarks below run alone. Each process gets a
# third of the cores for the CPU side of the comparisons.
note "CUDA tests: default path | persistent path | torch.compile + parity, in parallel"
threads=$(($(nproc) / 3))
[ "$threads" -ge 1 ] || threads=1
timeout_arg=()
py_has pytest_timeout && timeout_arg=(--timeout 120)  # one hung test fails alone instead of the stage
pytest_cmd() {  # JUNIT_NAME PERSISTENT(0|1) PYTEST_ARGS...: sets CMD, the command `stage` runs
  local junit=$1 persistent=$2
  shift 2
  # shellcheck disable=SC2206  # PYTEST_ARGS is a list of words
  CMD=(env FASTLSTM_CUDA_PERSISTENT="$persistent" OMP_NUM_THREADS="$threads" "$PY" -m pytest -m cuda -q -rs
    -p no:cacheprovider ${timeout_arg[@]+"${timeout_arg[@]}"} --junitxml="$LOGS/junit_$junit.xml"
    ${PYTEST_ARGS:-} "$@")
}
persistent_built=0
timeout 60 "$PY" -c "import sys; sys.path.insert(0, 'tests'); from cuda_paths import built; sys.exit(not built())" \
  2> /dev/null && persistent_built=1

pids=()
pytest_cmd default 0 tests --ignore=tests/test_compile.py
( stage tests-default 240 pytest_default.log "${CMD[@]}" ) &
pids+=($!)
if [ $persistent_built = 1 ]; then
  pytest_cmd persistent 1 tests --ignore=tests/test_compile.py
  ( stage tests-persistent 240 pytest_persistent.log "${CMD[@]}" ) &
  pids+=($!)
else
  record tests-persistent SKIP 0 0 - \
    "persistent path not built (nothing reads FASTLSTM_CUDA_PERSISTENT, no fastlstm._cuda_persistent)"
fi
pytest_cmd compile 0 tests/test_compile.py
(
  s=0
  stage tests-compile 180 pytest_compile.log "${CMD[@]}" || s=1
  stage parity 90 parity.log "$PY" scripts/gpu_parity.py --md "$OUT/parity.md" || s=1
  exit $s
) &
pids+=($!)
for p in "${pids[@]}"; do
  wait "$p" || status=1
done
summarize
tail -n 3 "$LOGS"/pytest_*.log

# ------------------------------------------------------------------------------------------- benchmarks
note "benchmark: cuDNN vs FastLSTM default vs persistent path (T=1024)"
stage bench-persistent 120 bench_persistent.log "$PY" scripts/gpu_bench_persistent.py --out "$OUT" --budget-s 75 ||
  status=1
summarize

note "benchmark: python -m fastlstm.bench --grid gpu"
if [ -f fastlstm/bench.py ] || [ -f fastlstm/bench/__main__.py ]; then
  stage bench-grid 75 bench_grid.log "$PY" -m fastlstm.bench --device cuda --grid gpu --contenders fastlstm,torch \
    --rounds 2 --min-run-time 0.1 --no-progress --json "$OUT/bench_gpu.json" || status=1
else
  record bench-grid SKIP 0 0 - "no fastlstm.bench in this checkout"
fi

note "summary"
summarize
record total "$([ $status = 0 ] && echo PASS || echo FAIL)" "$SECONDS" "$BUDGET_S" summary.md
summarize
cat "$OUT/summary.md"
echo
cat "$STAGES"
note "done, status $status"
exit $status

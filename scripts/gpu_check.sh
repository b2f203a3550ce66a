#!/usr/bin/env bash
# On a GPU machine with a CUDA build of torch: build fastlstm with its CUDA kernels, run the whole test
# suite, measure the CUDA parity errors, run the GPU benchmark, and write everything into OUTDIR:
#   env.txt        GPU, driver, torch / CUDA / nvcc versions
#   build.log      the build
#   pytest.log, junit.xml   the test suite (-rs: every skip with its reason)
#   parity.md      max errors of FastLSTM vs cuDNN and vs the float64 oracle, per dtype (scripts/gpu_parity.py)
#   bench.log, bench_gpu.json   python -m fastlstm.bench --device cuda --grid gpu
#   summary.md     the results table: GPU, versions, test counts per file, parity, benchmark
# Needs no package registry (nothing is downloaded). Steps can be skipped, e.g. to split the work over
# several calls on the same machine: SKIP_BUILD=1 SKIP_TESTS=1 SKIP_PARITY=1 SKIP_BENCH=1.
# PYTEST_ARGS adds pytest arguments. Exits non-zero if the build, a test, the parity run or the benchmark
# failed (after running everything it can and writing the summary).
#
# Usage: scripts/gpu_check.sh OUTDIR
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
status=0
step() { echo "== gpu_check: $* ($(date -u +%H:%M:%S))"; }

step "environment"
{
  nvidia-smi 2>&1 || echo "nvidia-smi not available"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')"
  command -v nvcc >/dev/null && nvcc --version | tail -2
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# The architecture of the GPU at hand unless the caller says otherwise (9.0 on H100/H200, and if unknown).
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))" 2>/dev/null || echo 9.0)
fi
export TORCH_CUDA_ARCH_LIST
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  step "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  if ! "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; then
    # An editable install needs setuptools>=64; an in-place build does not.
    echo "pip install -e failed (see build.log); building in place instead" | tee -a "$OUT/build.log"
    "$PY" setup.py build_ext --inplace >> "$OUT/build.log" 2>&1 || status=1
  fi
  tail -3 "$OUT/build.log"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import fastlstm, sys; sys.exit(0 if fastlstm.has_kernels('cuda') else 1)"; then
  echo "gpu_check: fastlstm has no CUDA kernels in this build (see $OUT/build.log)" | tee -a "$OUT/build.log"
  status=1
fi

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  step "tests"
  # shellcheck disable=SC2086
  "$PY" -m pytest tests -q -rs -p no:cacheprovider --junitxml="$OUT/junit.xml" ${PYTEST_ARGS:-} \
    > "$OUT/pytest.log" 2>&1 || status=1
  tail -5 "$OUT/pytest.log"
fi

if [ "${SKIP_PARITY:-0}" != 1 ]; then
  step "parity errors"
  "$PY" scripts/gpu_parity.py > "$OUT/parity.md" 2> "$OUT/parity.log" || status=1
  cat "$OUT/parity.md"
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  step "benchmark"
  if [ -f fastlstm/bench/__main__.py ] || [ -f fastlstm/bench.py ]; then  # the package, or the old module
    "$PY" -m fastlstm.bench --device cuda --grid gpu --json "$OUT/bench_gpu.json" > "$OUT/bench.log" 2>&1 || status=1
    tail -30 "$OUT/bench.log"
  else
    echo "fastlstm/bench is not in this checkout: no benchmark" | tee "$OUT/bench.log"
    status=1
  fi
fi

step "summary"
"$PY" - "$OUT" <<'EOF' > "$OUT/summary.md"
import json, sys, xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

out = Path(sys.argv[1])
print("# fastlstm GPU check\n")
env = (out / "env.txt").read_text() if (out / "env.txt").exists() else ""
print("## Machine\n")
for line in env.splitlines():
    if line.startswith(("python", "torch", "device", "Cuda compilation", "Build cuda")) or "Driver Version" in line:
        print(f"- {line.strip(' |')}")
print()

junit = out / "junit.xml"
print("## Tests\n")
if junit.exists():
    per = defaultdict(lambda: defaultdict(int))
    failed = []
    for case in ET.parse(junit).iter("testcase"):
        f = case.get("classname", "?").split(".")[-1] if case.get("classname") else "?"
        kind = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                kind = "failed"
                failed.append(f"{case.get('classname')}::{case.get('name')}")
            elif child.tag == "skipped":
                kind = "skipped"
        per[f][kind] += 1
    print("| file | passed | failed | skipped |\n|---|---:|---:|---:|")
    tot = defaultdict(int)
    for f in sorted(per):
        print(f"| {f} | {per[f]['passed']} | {per[f]['failed']} | {per[f]['skipped']} |")
        for k, v in per[f].items():
            tot[k] += v
    print(f"| **total** | {tot['passed']} | {tot['failed']} | {tot['skipped']} |\n")
    if failed:
        print("Failed:\n" + "\n".join(f"- `{n}`" for n in failed) + "\n")
    print("Skip reasons: see pytest.log (-rs).\n")
else:
    print("No junit.xml (tests not run).\n")

print("## Parity (scripts/gpu_parity.py)\n")
p = out / "parity.md"
print(p.read_text() if p.exists() else "Not run.\n")

print("## Benchmark (python -m fastlstm.bench --device cuda --grid gpu)\n")
b = out / "bench_gpu.json"
if b.exists():
    data = json.loads(b.read_text())
    rows = data if isinstance(data, list) else next((v for v in data.values() if isinstance(v, list)), [data])
    rows = [r for r in rows if isinstance(r, dict)]
    if rows:
        keys = [k for k in rows[0] if not isinstance(rows[0][k], (dict, list))]
        print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k)) for k in keys) + " |")
    if isinstance(data, dict):
        meta = {k: v for k, v in data.items() if not isinstance(v, (list, dict))}
        if meta:
            print("\n" + ", ".join(f"{k}: {v}" for k, v in meta.items()))
    print()
else:
    print("No bench_gpu.json (see bench.log).\n")
EOF
cat "$OUT/summary.md"
step "done, status $status"
exit $status

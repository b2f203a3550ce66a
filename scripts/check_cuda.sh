#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu with `nvcc -c` for architectures other than the one the real CUDA build in CI
# links (.ci/run builds and links the whole extension for sm_90; this covers sm_80, the other architecture
# fastlstm supports). Nothing is linked and no GPU is needed. The flags are the build's own: setup.py's nvcc
# flags (so the C++ standard is the one the given Python's torch builds with) and torch's COMMON_NVCC_FLAGS,
# with torch's and the toolkit's include paths. Our code is held to -Werror all-warnings.
# Exits non-zero if any file does not compile (after trying them all).
# Usage: scripts/check_cuda.sh [ARCH...]   (default: 80; PYTHON picks the interpreter whose torch is used)
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || { echo "check_cuda: nvcc not found" >&2; exit 1; }
PY=${PYTHON:-python}
ARCHS=("$@")
[ ${#ARCHS[@]} -gt 0 ] || ARCHS=(80)

# The toolkit root: $CUDA_HOME, else where nvcc says it lives (nvcc may be a wrapper script elsewhere).
CUDA_ROOT=${CUDA_HOME:-${CUDA_PATH:-}}
if [ -z "$CUDA_ROOT" ]; then
  CUDA_ROOT=$("$NVCC" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
fi
[ -f "$CUDA_ROOT/include/cuda_runtime_api.h" ] || { echo "check_cuda: no CUDA headers in $CUDA_ROOT/include" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/fastlstm_check_cuda.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# Everything torch-specific, asked from the installed torch rather than hard-coded.
read -r -d '' PYQ <<'EOF' || true
import sysconfig
from torch.utils import cpp_extension as ce
print(" ".join(ce.COMMON_NVCC_FLAGS))
print(" ".join("-isystem " + p for p in ce.include_paths() + [sysconfig.get_paths()["include"]]))
EOF
mapfile -t Q < <("$PY" -c "$PYQ" 2>/dev/null)
[ ${#Q[@]} -ge 2 ] || { echo "check_cuda: could not ask $PY's torch for its flags" >&2; exit 1; }
TORCH_NVCC_FLAGS=${Q[0]}
TORCH_INCLUDES=${Q[1]}
OUR_NVCC_FLAGS=$("$PY" setup.py --print-nvcc-flags)
# What torch's BuildExtension defines for fastlstm._C.
EXT_DEFINES="-DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C"

status=0
shopt -s nullglob
cus=(csrc/cuda/*.cu)
[ ${#cus[@]} -gt 0 ] || { echo "check_cuda: no csrc/cuda/*.cu found" >&2; exit 1; }
echo "check_cuda: $("$NVCC" --version | tail -1); flags: $OUR_NVCC_FLAGS"
for cu in "${cus[@]}"; do
  for arch in "${ARCHS[@]}"; do
    obj="$TMP/$(basename "$cu" .cu).sm_$arch.o"
    echo "check_cuda: nvcc -c sm_$arch $cu"
    # shellcheck disable=SC2086
    if ! "$NVCC" -c "$cu" -o "$obj" $OUR_NVCC_FLAGS $TORCH_NVCC_FLAGS $EXT_DEFINES $TORCH_INCLUDES \
        -isystem "$CUDA_ROOT/include" -gencode "arch=compute_$arch,code=sm_$arch" --compiler-options -fPIC \
        -Werror all-warnings; then
      echo "check_cuda: FAILED nvcc sm_$arch $cu" >&2
      status=1
    fi
  done
done

[ $status -eq 0 ] && echo "check_cuda: all ${#cus[@]} CUDA sources compile for sm_${ARCHS[*]}"
exit $status

#!/usr/bin/env bash
# Compile-check the CUDA code on a machine with nvcc but no GPU and no CUDA build of torch (CI runs this).
#  1. every csrc/cuda/*.cu: `nvcc -c` for sm_80 and sm_90 with the build's own flags (setup.py's nvcc flags
#     and torch's COMMON_NVCC_FLAGS), into a temporary folder; nothing is linked;
#  2. every csrc/cuda/*.cpp (the ATen adapter): `g++ -fsyntax-only` against torch's headers and the CUDA
#     toolkit's, in C++20 and in the C++ standard setup.py builds with. The CPU wheel of torch ships c10/cuda
#     but not the generated c10/cuda/impl/cuda_cmake_macros.h: a stub of it goes in a temporary include dir.
# Exits non-zero if any file does not compile (after trying them all). Our code is held to -Wall -Werror;
# torch's and CUDA's headers are -isystem. Usage: scripts/check_cuda.sh
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || { echo "check_cuda: nvcc not found" >&2; exit 1; }
PY=${PYTHON:-python}

# The toolkit root: $CUDA_HOME, else where nvcc says it lives (nvcc may be a wrapper script elsewhere).
CUDA_ROOT=${CUDA_HOME:-${CUDA_PATH:-}}
if [ -z "$CUDA_ROOT" ]; then
  CUDA_ROOT=$("$NVCC" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
fi
CUDA_INC="$CUDA_ROOT/include"
[ -f "$CUDA_INC/cuda_runtime_api.h" ] || { echo "check_cuda: no CUDA headers in $CUDA_INC" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/fastlstm_check_cuda.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# Everything torch-specific, asked from the installed torch rather than hard-coded.
read -r -d '' PYQ <<'EOF' || true
import sys, sysconfig, torch
from torch.utils import cpp_extension as ce
print(" ".join(ce.COMMON_NVCC_FLAGS))
print(" ".join("-isystem" + p for p in ce.include_paths() + [sysconfig.get_paths()["include"]]))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
EOF
mapfile -t Q < <("$PY" -c "$PYQ")
TORCH_NVCC_FLAGS=${Q[0]}
TORCH_INCLUDES=${Q[1]}
CXX11_ABI=${Q[2]}
OUR_NVCC_FLAGS=$("$PY" setup.py --print-nvcc-flags)
# What torch's BuildExtension defines for fastlstm._C, in both compilers.
EXT_DEFINES="-DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C"

status=0
shopt -s nullglob

for cu in csrc/cuda/*.cu; do
  for arch in 80 90; do
    obj="$TMP/$(basename "$cu" .cu).sm_$arch.o"
    echo "check_cuda: nvcc sm_$arch $cu"
    # shellcheck disable=SC2086
    if ! "$NVCC" -c "$cu" -o "$obj" $OUR_NVCC_FLAGS $TORCH_NVCC_FLAGS $EXT_DEFINES \
        -gencode "arch=compute_$arch,code=sm_$arch" --compiler-options -fPIC -Werror all-warnings; then
      echo "check_cuda: FAILED nvcc sm_$arch $cu" >&2
      status=1
    fi
  done
done

mkdir -p "$TMP/include/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$TMP/include/c10/cuda/impl/cuda_cmake_macros.h"
for cpp in csrc/cuda/*.cpp; do
  for std in c++20 c++17; do
    echo "check_cuda: g++ -std=$std -fsyntax-only $cpp"
    # shellcheck disable=SC2086
    if ! g++ -std=$std -fsyntax-only -Wall -Werror "$cpp" -isystem"$TMP/include" $TORCH_INCLUDES -isystem"$CUDA_INC" \
        -DUSE_CUDA $EXT_DEFINES -D_GLIBCXX_USE_CXX11_ABI=$CXX11_ABI; then
      echo "check_cuda: FAILED g++ -std=$std $cpp" >&2
      status=1
    fi
  done
done

[ $status -eq 0 ] && echo "check_cuda: all CUDA sources compile"
exit $status

"""Build fastlstm._C: the C++ CPU kernels always, the CUDA kernels when they can be built.

CUDA is built when torch is a CUDA build and a CUDA toolkit is found (not when a GPU happens to be
present, so a GPU-less build host with a CUDA torch still builds the kernels). Overrides:
FASTLSTM_FORCE_CUDA=1, FASTLSTM_SKIP_CUDA=1. torch's own TORCH_CUDA_ARCH_LIST, MAX_JOBS and DEBUG=1 are
honoured. Install with `pip install --no-build-isolation .` so that pip uses the torch already installed.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

import torch

try:
    from packaging.version import Version
except ImportError:  # --no-build-isolation skips pyproject's build requirements; torch vendors packaging
    from torch._vendor.packaging.version import Version
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

MIN_TORCH = Version("2.4")
TORCH = Version(torch.__version__)
if TORCH.release < MIN_TORCH.release:
    raise RuntimeError(f"fastlstm needs torch >= {MIN_TORCH}, found {torch.__version__}")

# The C++ standard, for g++ and nvcc alike: the oldest one the installed torch's headers accept. torch 2.14's
# ATen headers require C++20 (`#error C++20 or later compatible compiler is required`); up to 2.13 they accept
# C++17, which is what the GPU machines' torch 2.11 builds with. Keeping C++17 wherever torch allows it means
# CI's torch 2.13 build (C++17) and torch 2.14 build (C++20) hold the code to both standards. `.release` so
# that a pre-release or local build (2.14.0a0+git..., 2.14.1+cu130) counts as its release.
CXX_STD = "c++20" if TORCH.release[:2] >= (2, 14) else "c++17"

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def want_cuda():
    if _flag("FASTLSTM_SKIP_CUDA"):
        return False
    if _flag("FASTLSTM_FORCE_CUDA"):
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


debug = _flag("DEBUG")
cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
cxx_flags += [f"-std={CXX_STD}"]
# at::parallel_for is a header template over OpenMP: without -fopenmp in OUR compile its `#pragma omp parallel`
# is dropped and every "threaded" pointwise pass runs on one core. torch's CPU wheels link libgomp already.
openmp = sys.platform.startswith("linux") and not _flag("FASTLSTM_NO_OPENMP")
if openmp:
    cxx_flags += ["-fopenmp"]
sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
extra = {"cxx": cxx_flags}
define_macros = []

# Our nvcc flags; torch's BuildExtension adds its COMMON_NVCC_FLAGS and the -gencode arch flags.
nvcc_flags = (["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]) + [
    "--use_fast_math" if _flag("FASTLSTM_FAST_MATH") else "-DFASTLSTM_PRECISE_MATH",
    f"-std={CXX_STD}",
]
if sys.argv[1:] == ["--print-nvcc-flags"]:
    # scripts/check_cuda.sh compiles the .cu files with exactly the flags the build uses.
    print(" ".join(nvcc_flags))
    sys.exit(0)

if want_cuda():
    sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    extra["nvcc"] = nvcc_flags
    ext = CUDAExtension("fastlstm._C", sources, extra_compile_args=extra, define_macros=define_macros,
                        extra_link_args=["-fopenmp"] if openmp else [])
else:
    ext = CppExtension("fastlstm._C", sources, extra_compile_args=extra, define_macros=define_macros,
                        extra_link_args=["-fopenmp"] if openmp else [])

setup(
    name="fastlstm",
    version="0.1.0",
    description="Fused LSTM kernels for PyTorch: a drop-in replacement for torch.nn.LSTM",
    packages=find_packages(include=["fastlstm", "fastlstm.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    # torch is deliberately not in install_requires: a resolver would otherwise be free to pull a different
    # (multi-GB CUDA) build over the one the extension is compiled against. See README.
    install_requires=[],
    # Everything the README's two commands import, so that they work in a fresh virtualenv (CI checks this in
    # fresh virtualenvs of its own): `bench` runs `python -m fastlstm.bench` (progress bar, --plot) and
    # `pytest bench/ --benchmark-only`; `test` runs `pytest tests` (the char-RNN's tqdm and matplotlib, the
    # bench smoke tests, the ONNX export tests' onnx/onnxruntime/onnxscript).
    extras_require={
        "bench": ["matplotlib", "tqdm", "pytest", "pytest-benchmark"],
        "charrnn": ["matplotlib", "tqdm"],
        "test": ["pytest", "matplotlib", "tqdm", "onnx", "onnxruntime", "onnxscript"],
    },
    entry_points={
        "console_scripts": [
            "fastlstm-bench=fastlstm.bench:main",
            "fastlstm-charrnn=fastlstm.charrnn.__main__:main",
        ]
    },
)

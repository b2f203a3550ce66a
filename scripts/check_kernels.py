"""Check that the installed fastlstm._C registers a kernel for every one of its ops on the given devices.

The ops are enumerated from the dispatcher's registry (every operator in the `fastlstm` namespace, i.e. every
schema csrc/ defines), not from a list kept here, so an op added later without, say, a CUDA kernel fails
this check. An op with a CompositeImplicitAutograd/CompositeExplicitAutograd kernel is device-generic and
counts as covered. Needs no GPU: registration is checked, nothing is run.

Usage: python scripts/check_kernels.py cpu [cuda]      (CI: `cpu` after the CPU build, `cpu cuda` after the
CUDA build). Exits 1 if an op lacks a kernel for a device, or if no ops are found at all.
"""
import sys

import torch

import fastlstm

KEYS = {"cpu": "CPU", "cuda": "CUDA"}
GENERIC = ("CompositeImplicitAutograd", "CompositeExplicitAutograd")


def fastlstm_ops():
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastlstm::"))


def has(op, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


def main(argv):
    devices = argv or ["cpu"]
    bad = [d for d in devices if d not in KEYS]
    if bad:
        print(f"check_kernels: unknown device(s) {bad}; choose from {sorted(KEYS)}", file=sys.stderr)
        return 2
    ops = fastlstm_ops()
    print(f"check_kernels: fastlstm {fastlstm.__file__}, torch {torch.__version__}, {len(ops)} ops")
    if not ops:
        print("check_kernels: FAILED: no fastlstm:: ops are registered", file=sys.stderr)
        return 1
    status = 0
    for op in ops:
        cells = []
        for d in devices:
            ok = has(op, KEYS[d]) or any(has(op, k) for k in GENERIC)
            cells.append(f"{d}:{'yes' if ok else 'MISSING'}")
            if not ok:
                status = 1
        print(f"  {op:40s} {'  '.join(cells)}")
    for d in devices:
        if not fastlstm.has_kernels(d):
            print(f"check_kernels: FAILED: fastlstm.has_kernels({d!r}) is False", file=sys.stderr)
            status = 1
    if status:
        print(f"check_kernels: FAILED: some op has no kernel for {devices}", file=sys.stderr)
    else:
        print(f"check_kernels: every op has a kernel for {', '.join(devices)}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

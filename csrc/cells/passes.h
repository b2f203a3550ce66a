// How a cell's fused pass is written once for every device.
//
// A pass is a struct with a typed argument block `Args<S>` (raw pointers into dense row-major buffers, S the
// storage type, acc_of<S> the arithmetic type) and one function
//     template <class S, class E> static void row(const E& e, const Args<S>& a, int64_t b, int64_t H)
// that does the pass's work on batch row b through an executor E:
//     e.for_units(n, f)  calls f(j, lane) for the units j in [0, n) this executor owns, `lane` moving
//                        lane.width consecutive units at a time: L.load(p) reads p[j..] (storage or acc
//                        type) into the lane's arithmetic type L::C, L.store(p, v) writes it back rounded to
//                        p's type; f must work for every lane type (a generic lambda).
//     e.sum(n, f)        the sum over all units j in [0, n) of f(j, lane), as one acc value, in every thread.
//     e.once(f)          f() exactly once per row (per-row scalars such as layer-norm statistics).
// The CPU executor (csrc/cpu/) runs a whole row on one thread with at::vec registers and a scalar tail;
// the CUDA executor (csrc/cuda/) runs a row (or a slice of it, for passes without sums) on one block, a
// lane being a pack of VEC units of one thread; the harness runs the CUDA executor's code on the host. So
// the cell's math, its indexing and its dtype handling are the same code everywhere.
//
// pre: a forward pass's optional A-typed input, the gate pre-activations in float32 where the device keeps
// them so for half types (layer.h, AtenDevice::kAccGates). Null: the pass reads its storage-typed gates
// in place, as before. Either way it writes the activated gates to the storage-typed buffer (what backward
// reads). A pass dispatches on it once per row, so the unit loops stay branch-free.
//
// kRowReduce: the pass sums over a row (layer norm), so a CUDA block must own the whole row.
// ptrs(): every pointer of the block, for the CUDA launch plan's alignment check (null ones are skipped).
#pragma once

#include <array>
#include <cstdint>

#include "math.h"

// Declares C (the lane's arithmetic type) and Act (its activations) for a lane parameter L.
#define FASTLSTM_LANE(L)                   \
  using C = typename decltype(L)::C;       \
  using Act [[maybe_unused]] = typename decltype(L)::Act; \
  (void)sizeof(C)

namespace fastlstm {
namespace cells {
using math::acc_of;

// body(x) with x a forward pass's input pre-activations, `offset` elements in: the float32 ones where the
// layer keeps them (pre, non-null), else the storage-typed gates the pass then overwrites in place. One
// branch per row, so the lanes' loops stay branch-free.
template <typename S, typename A, class F>
FASTLSTM_HOST_DEVICE inline void with_inputs(const A* pre, const S* gates, int64_t offset, const F& body) {
  if (pre != nullptr) {
    body(pre + offset);
  } else {
    body(gates + offset);
  }
}
}  // namespace cells
}  // namespace fastlstm

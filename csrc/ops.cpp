// The op registry: every fastlstm op is defined here from the schemas of csrc/schemas.h, and nowhere
// else. Device implementations live in csrc/cpu/device.cpp and csrc/cuda/device.cpp (TORCH_LIBRARY_IMPL),
// fake (meta) implementations and autograd in fastlstm/ops.py.
#include <Python.h>
#include <torch/library.h>

#include "lean_call.h"
#include "schemas.h"

extern "C" {
// Importing fastlstm._C runs the static registrations below and in the device files; the ops are reached
// through torch.ops.fastlstm. Its only functions are the streaming path's direct op call (lean_call.cpp).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, fastlstm::lean_call_methods()};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastlstm, m) { FASTLSTM_DEFINE_SCHEMAS(m) }

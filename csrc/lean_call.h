// fastlstm._C's Python functions (csrc/lean_call.cpp): the streaming path's direct op call.
#pragma once

#include <Python.h>

namespace fastlstm {
// The method table of fastlstm._C: op_handle(name) and lean_call(handle, n_states, input, *states, *rest).
PyMethodDef* lean_call_methods();
}  // namespace fastlstm

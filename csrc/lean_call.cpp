// The streaming path's op call (fastlstm/rnn.py, RNNEngine._forward_lean): one inference op of the registry,
// called through the dispatcher as torch.ops.fastlstm.<op>.default would call it, without that route's Python
// costs. At batch 1, H = 64 a one-step module call spent about as long around the op as in it: the Python
// OpOverload call (each argument matched against the schema into an IValue), the layer function's checks,
// and the four view ops that take the [1, B, *] states apart and put them back together (~0.65 us each from
// Python). Not an op and not a kernel: the dispatcher still runs the op, with its profiler record, its
// dispatch keys and modes, and the op's own argument checks and messages.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <ATen/PythonTorchFunctionTLS.h>

#include <string>
#include <vector>

#include "lean_call.h"

namespace fastlstm {
namespace {

// The ops looked up so far, by the index op_handle returned, and their names. Read and grown only with the
// GIL held (lean_call copies its handle out before releasing it): one entry per op, however many modules ask.
std::vector<c10::OperatorHandle>& handles() {
  static std::vector<c10::OperatorHandle> h;
  return h;
}
std::vector<std::string>& handle_names() {
  static std::vector<std::string> n;
  return n;
}

// torch.nn.Parameter, whose __torch_function__ is torch's disabled one: a Parameter argument is a plain tensor
// to torch.ops. Looked up at the first op_handle call (the GIL held).
PyObject* parameter_type = nullptr;

// Whether torch.ops would look for __torch_function__ overrides here: a torch function mode is active, or `o`
// is neither a plain Tensor, a Parameter nor a basic Python value. (torch's own check is not exported; this
// one is stricter: any Tensor subclass but Parameter sends the call back to the Python route.)
bool may_override(PyObject* o) {
  if (at::impl::torch_function_mode_enabled()) return true;
  PyTypeObject* tp = Py_TYPE(o);
  if (THPVariable_CheckExact(o) || reinterpret_cast<PyObject*>(tp) == parameter_type) return false;
  return !(o == Py_None || PyBool_Check(o) || PyFloat_CheckExact(o) || PyLong_CheckExact(o));
}

// op_handle(name: str) -> int: the index of the op "fastlstm::<name>" for lean_call.
PyObject* op_handle(PyObject*, PyObject* name) {
  HANDLE_TH_ERRORS
  const char* s = PyUnicode_AsUTF8(name);
  if (s == nullptr) return nullptr;
  if (parameter_type == nullptr) {
    PyObject* mod = PyImport_ImportModule("torch.nn.parameter");
    if (mod == nullptr) return nullptr;
    parameter_type = PyObject_GetAttrString(mod, "Parameter");  // kept for the process's life
    Py_DECREF(mod);
    if (parameter_type == nullptr) return nullptr;
  }
  const std::string full = std::string("fastlstm::") + s;
  auto& names = handle_names();
  for (size_t k = 0; k < names.size(); ++k) {
    if (names[k] == full) return PyLong_FromSsize_t(Py_ssize_t(k));
  }
  handles().push_back(c10::Dispatcher::singleton().findSchemaOrThrow(full.c_str(), ""));
  names.push_back(full);
  return PyLong_FromSsize_t(Py_ssize_t(handles().size()) - 1);
  END_HANDLE_TH_ERRORS
}

// lean_call(handle, n_states, input, *states, *rest) -> (output, *finals), NotImplemented or None.
// The op's arguments are (input, states..., rest...) with each state [1, B, X] here and [B, X] in the op
// (its select(0, 0)); the op returns (output, finals... [B, X]), handed back as [1, B, X] (unsqueeze(0)).
// rest: tensors, None, bools, floats, ints. NotImplemented, having run nothing, where the Python route must
// decide instead: an argument with __torch_function__ or a torch function mode active (torch.ops honours
// both), a gradient needed (the forward op, with its autograd), or an argument of another kind. None where
// the op raised a c10::Error (e.g. its argument checks): the error is dropped, the caller decides.
PyObject* lean_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs < 3) {
    PyErr_SetString(PyExc_TypeError, "fastlstm._C.lean_call(handle, n_states, input, *states, *rest)");
    return nullptr;
  }
  const Py_ssize_t idx = PyLong_AsSsize_t(args[0]);
  const Py_ssize_t n_states = PyLong_AsSsize_t(args[1]);
  if (PyErr_Occurred()) return nullptr;
  if (idx < 0 || idx >= Py_ssize_t(handles().size()) || n_states < 0 || 3 + n_states > nargs) {
    PyErr_SetString(PyExc_ValueError, "fastlstm._C.lean_call: bad handle or state count");
    return nullptr;
  }
  const bool grad = c10::GradMode::is_enabled();
  torch::jit::Stack stack;
  stack.reserve(size_t(nargs - 2));
  for (Py_ssize_t i = 2; i < nargs; ++i) {
    PyObject* o = args[i];
    if (may_override(o)) Py_RETURN_NOTIMPLEMENTED;
    const bool state = i >= 3 && i < 3 + n_states;
    if (THPVariable_Check(o)) {
      const at::Tensor& t = THPVariable_Unpack(o);
      if (grad && t.requires_grad()) Py_RETURN_NOTIMPLEMENTED;
      if (state && (t.dim() == 0 || t.size(0) != 1)) Py_RETURN_NOTIMPLEMENTED;
      stack.emplace_back(state ? t.select(0, 0) : t);
    } else if (state || i == 2) {
      Py_RETURN_NOTIMPLEMENTED;  // the input and the states are tensors
    } else if (o == Py_None) {
      stack.emplace_back();
    } else if (PyBool_Check(o)) {
      stack.emplace_back(o == Py_True);
    } else if (PyFloat_Check(o)) {
      stack.emplace_back(PyFloat_AS_DOUBLE(o));
    } else if (PyLong_CheckExact(o)) {
      const int64_t v = PyLong_AsLongLong(o);
      if (v == -1 && PyErr_Occurred()) return nullptr;
      stack.emplace_back(v);
    } else {
      Py_RETURN_NOTIMPLEMENTED;
    }
  }
  const c10::OperatorHandle op = handles()[size_t(idx)];  // a copy: another thread may grow the table
  try {
    // As the layer functions call the inference op when no gradient is needed: below autograd, whose
    // kernel for these ops (torch.library.register_autograd) is Python.
    pybind11::gil_scoped_release no_gil;
    at::AutoDispatchBelowAutograd below_autograd;
    op.callBoxed(stack);
  } catch (const c10::Error&) {
    // The op refused an argument (its checks run before it touches any memory), or found no kernel for
    // the device: None, and the caller's general path decides (with torch's messages). A Python error
    // raised inside (a dispatch mode's) is not a c10::Error and propagates.
    Py_RETURN_NONE;
  }
  if (stack.size() != size_t(1 + n_states)) {
    PyErr_SetString(PyExc_RuntimeError, "fastlstm._C.lean_call: the op returned an unexpected number of results");
    return nullptr;
  }
  PyObject* out = PyTuple_New(Py_ssize_t(stack.size()));
  if (out == nullptr) return nullptr;
  for (size_t k = 0; k < stack.size(); ++k) {
    at::Tensor t = std::move(stack[k]).toTensor();
    PyObject* w = THPVariable_Wrap(k == 0 ? std::move(t) : t.unsqueeze(0));
    if (w == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyTuple_SET_ITEM(out, Py_ssize_t(k), w);
  }
  return out;
  END_HANDLE_TH_ERRORS
}

PyMethodDef kMethods[] = {
    {"op_handle", op_handle, METH_O, "op_handle(name) -> int: fastlstm::<name> for lean_call"},
    {"lean_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(lean_call)), METH_FASTCALL,
     "lean_call(handle, n_states, input, *states, *rest) -> (output, *finals), NotImplemented or None"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* lean_call_methods() { return kMethods; }

}  // namespace fastlstm

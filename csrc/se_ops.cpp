// The op schemas, in one place. Each device registers the shared entries of
// se_entry.h bound to its back end (csrc/cpu, csrc/cuda); fake kernels, autograd
// and the public function live in se_fused/ops.py.
#include <Python.h>
#include <torch/library.h>

// Importing se_fused._C loads this library, which runs the registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(se_fused, m) {
  // y = out_act(x * gate(W2 act(W1 mean_hw(x) + b1) + b2) + residual); z = mean_hw(x)
  // (float32, float64 for float64 x), kept for the backward.
  // act and gate: the names of se_dispatch.h (kActNames, kGateNames). w2 None is the
  // one-layer form (effective SE):
  // y = x * gate(W1 mean_hw(x) + b1) with w1 (C, C), b2 None too; the activation name is
  // still checked but not applied, and pre's two halves are both a1 (R = C).
  // pre = [a1 | a2], (N, R + C) in z's dtype: the pre-activations of the two small
  // layers, a1 = W1 z + b1 and a2 = W2 act(a1) + b2. The forward computes them anyway;
  // handed to se_backward, they spare it the recomputation of both layers (two of its
  // six matrix products). Back ends that cannot provide them still return the shape.
  m.def(
      "se_forward(Tensor x, Tensor w1, Tensor? b1, Tensor? w2, Tensor? b2, Tensor? residual, "
      "str activation, str gate, str out_activation) -> (Tensor y, Tensor z, Tensor pre)");
  // The same with y written over x (dense NCHW or channels_last), which is returned as
  // it is; only z and pre are new.
  m.def(
      "se_forward_(Tensor(a!) x, Tensor w1, Tensor? b1, Tensor? w2, Tensor? b2, "
      "Tensor? residual, str activation, str gate, str out_activation) -> (Tensor z, Tensor pre)");
  // y is given when out_activation was 'relu' (its sign is the mask). grad_residual is the
  // masked grad_y when y is given and want_grad_residual, else an empty (0,) tensor.
  // Parameter grads come in float32 (float64 for float64 x); in the one-layer form
  // grad_w2 and grad_b2 are empty (0,) tensors.
  // x_is_output: the tensor passed as x is the forward's output y = x * s (the y-only
  // backward of a call without epilogue, so y must be None); the gate's backward then
  // works from sum_hw g * y (see gate_input_grad in se_common.h).
  // pre: se_forward's third output for this z and these parameters. When given (and
  // not empty) the kernels take a1 and a2 from it; None or an empty tensor makes them
  // recompute both layers from z. The results are the same bits either way on the CPU
  // (the forward's products are the ones the backward would recompute).
  m.def(
      "se_backward(Tensor grad_y, Tensor x, Tensor z, Tensor? y, Tensor w1, Tensor? b1, "
      "Tensor? w2, Tensor? b2, str activation, str gate, bool want_grad_residual, "
      "bool x_is_output=False, Tensor? pre=None) -> "
      "(Tensor grad_x, Tensor grad_residual, Tensor grad_w1, Tensor grad_b1, Tensor grad_w2, "
      "Tensor grad_b2)");
}

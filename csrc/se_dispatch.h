// The choices a call makes, as enums, and the one way each becomes a compile-time
// kernel variant. Plain C++ without ATen: the CUDA kernel files, their CPU
// emulation (tests/cuda_emu) and the ATen entry points all include it, so a value
// decided by the checks (se_checks.cpp) travels as the same enum down to a kernel.
//
// Which choices are template parameters and which stay run-time values:
//   dtype: SE_DTYPE_SWITCH, once per call, in each back end;
//   layout, residual, output relu, mask: SE_BOOL_SWITCH, where a kernel is picked;
//   activation, gate: run-time enums read by act_forward / gate_forward
//     (se_common.h) in the small layers, whose cost is the matrix products.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace se_fused {

// x's dtype; the accumulation type is float, double for Double.
enum class DType : int { Float = 0, Half = 1, BFloat16 = 2, Double = 3 };

// The activation between the two small layers. Identity is the one-layer form
// (effective SE: s = gate(W1 z + b1)), set by the checks when w2 is None.
enum class Act : int { ReLU = 0, SiLU = 1, HardSwish = 2, GELU = 3, Identity = 4 };
enum class Gate : int { Sigmoid = 0, HardSigmoid = 1 };

// The op's names of the enum values, in enum order (the checks parse with them;
// Identity has no name: it is never asked for).
constexpr const char* kActNames[] = {"relu", "silu", "hardswish", "gelu"};
constexpr const char* kGateNames[] = {"sigmoid", "hardsigmoid"};

}  // namespace se_fused

// Runs the lambda __VA_ARGS__ with `constexpr bool NAME` equal to COND and returns
// what it returns.
#define SE_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                 \
    if (COND) {                         \
      constexpr bool NAME = true;       \
      return __VA_ARGS__();             \
    } else {                            \
      constexpr bool NAME = false;      \
      return __VA_ARGS__();             \
    }                                   \
  }()

// Runs the lambda __VA_ARGS__ with `using TYPE` the element type of DTYPE (a
// se_fused::DType): float, c10::Half, c10::BFloat16 or double.
#define SE_DTYPE_SWITCH(DTYPE, TYPE, ...)        \
  [&] {                                          \
    switch (DTYPE) {                             \
      case ::se_fused::DType::Half: {            \
        using TYPE = ::c10::Half;                \
        return __VA_ARGS__();                    \
      }                                          \
      case ::se_fused::DType::BFloat16: {        \
        using TYPE = ::c10::BFloat16;            \
        return __VA_ARGS__();                    \
      }                                          \
      case ::se_fused::DType::Double: {          \
        using TYPE = double;                     \
        return __VA_ARGS__();                    \
      }                                          \
      case ::se_fused::DType::Float:             \
      default: {                                 \
        using TYPE = float;                      \
        return __VA_ARGS__();                    \
      }                                          \
    }                                            \
  }()

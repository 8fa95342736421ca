#pragma once
// Argument checks shared by the public ops: each throws the typed error with the op's name.
#include <string>

#include "diffprobe/core/context.hpp"
#include "diffprobe/core/tensor.hpp"

namespace diffprobe::ops::detail {

inline void require_defined(const Tensor& t, const char* where, const char* what) {
  if (!t.defined()) throw ArgumentError(where, std::string(what) + " is undefined");
}

inline void require_f32(const Tensor& t, const char* where, const char* what) {
  require_defined(t, where, what);
  if (t.dtype() != DType::F32)
    throw DTypeError(where, std::string(what) + " must be f32, got " + std::string(dtype_name(t.dtype())));
}

/// An activation operand: f32 or bf16 (whether its backend reads bf16 is checked at dispatch).
inline void require_activation(const Tensor& t, const char* where, const char* what) {
  require_defined(t, where, what);
  if (t.dtype() != DType::F32 && t.dtype() != DType::BF16)
    throw DTypeError(where,
                     std::string(what) + " must be f32 or bf16, got " + std::string(dtype_name(t.dtype())));
}

inline void require_rank(const Tensor& t, int rank, const char* where, const char* what) {
  if (t.rank() != rank)
    throw ShapeError(
        where, std::string(what) + " must have rank " + std::to_string(rank) + ", got " + t.shape().str());
}

inline void require_same_device(const Tensor& a, const Tensor& b, const char* where, const char* what) {
  if (b.defined() && !(a.device() == b.device()))
    throw DeviceError(
        where, std::string(what) + " is on " + b.device().str() + " but the input is on " + a.device().str());
}

inline void require_shape(const Tensor& t, const Shape& want, const char* where, const char* what) {
  if (t.shape() != want)
    throw ShapeError(where,
                     std::string(what) + " must have shape " + want.str() + ", got " + t.shape().str());
}

}  // namespace diffprobe::ops::detail

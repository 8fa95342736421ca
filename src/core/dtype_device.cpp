#include <string>

#include "core/text.hpp"
#include "diffprobe/core/context.hpp"
#include "diffprobe/core/device.hpp"
#include "diffprobe/core/dtype.hpp"
#include "diffprobe/core/error.hpp"

namespace diffprobe {

DType parse_dtype(std::string_view name) {
  if (name == "f32" || name == "fp32" || name == "float32" || name == "F32") return DType::F32;
  if (name == "f16" || name == "fp16" || name == "float16" || name == "half" || name == "F16")
    return DType::F16;
  if (name == "bf16" || name == "bfloat16" || name == "BF16") return DType::BF16;
  if (name == "i32" || name == "int32" || name == "I32") return DType::I32;
  if (name == "i64" || name == "int64" || name == "I64") return DType::I64;
  throw ArgumentError("parse_dtype",
                      "unknown dtype '" + std::string(name) + "' (expected f32, f16, bf16, i32 or i64)");
}

std::string Device::str() const { return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index); }

Device parse_device(std::string_view text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.starts_with("cuda:")) {
    if (const auto idx = detail::parse_integer(text.substr(5), 0, 999))
      return Device::cuda(static_cast<int>(*idx));
  }
  throw ArgumentError("parse_device",
                      "unknown device '" + std::string(text) + "' (expected cpu, cuda or cuda:N)");
}

const char* precision_name(Precision p) noexcept {
  switch (p) {
    case Precision::FP32: return "fp32";
    case Precision::BF16: return "bf16";
    case Precision::FP16: return "fp16";
    case Precision::INT8: return "int8";
  }
  return "?";
}

Precision parse_precision(const char* text) {
  const std::string_view s = text ? text : "";
  if (s == "fp32" || s == "f32") return Precision::FP32;
  if (s == "bf16") return Precision::BF16;
  if (s == "fp16" || s == "f16") return Precision::FP16;
  if (s == "int8") return Precision::INT8;
  throw ArgumentError("parse_precision",
                      "unknown precision '" + std::string(s) + "' (expected fp32, bf16, fp16 or int8)");
}

}  // namespace diffprobe

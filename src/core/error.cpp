#include "diffprobe/core/error.hpp"

#include <fmt/format.h>

namespace diffprobe {

const char* error_kind_name(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::Shape: return "shape error";
    case ErrorKind::DType: return "dtype error";
    case ErrorKind::Device: return "device error";
    case ErrorKind::Io: return "I/O error";
    case ErrorKind::Format: return "format error";
    case ErrorKind::Config: return "config error";
    case ErrorKind::Argument: return "argument error";
    case ErrorKind::Numeric: return "numeric error";
    case ErrorKind::Unsupported: return "unsupported";
    case ErrorKind::Cancelled: return "cancelled";
  }
  return "error";
}

std::string Error::compose(ErrorKind kind, const std::string& where, const std::string& why) {
  // fmt rather than operator+: GCC 12's -Wrestrict misfires on the inlined string concatenation.
  return fmt::format("{} in {}: {}", error_kind_name(kind), where, why);
}

}  // namespace diffprobe

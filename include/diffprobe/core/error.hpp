#pragma once
// The one exception hierarchy of diffprobe. Every error says where it happened
// (the function or file), and what was expected versus what was found.
#include <stdexcept>
#include <string>

namespace diffprobe {

enum class ErrorKind { Shape, DType, Device, Io, Format, Config, Argument, Numeric, Unsupported, Cancelled };

const char* error_kind_name(ErrorKind kind) noexcept;

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string where, std::string why)
      : std::runtime_error(compose(kind, where, why)),
        kind_(kind),
        where_(std::move(where)),
        why_(std::move(why)) {}

  ErrorKind kind() const noexcept { return kind_; }
  const std::string& where() const noexcept { return where_; }
  const std::string& why() const noexcept { return why_; }

 private:
  static std::string compose(ErrorKind kind, const std::string& where, const std::string& why);
  ErrorKind kind_;
  std::string where_;
  std::string why_;
};

#define DIFFPROBE_DEFINE_ERROR(Name, Kind)                                                                 \
  class Name : public Error {                                                                              \
   public:                                                                                                 \
    Name(std::string where, std::string why) : Error(ErrorKind::Kind, std::move(where), std::move(why)) {} \
  };

DIFFPROBE_DEFINE_ERROR(ShapeError, Shape)              // tensor shapes disagree with what an op needs
DIFFPROBE_DEFINE_ERROR(DTypeError, DType)              // unsupported or mismatched element type
DIFFPROBE_DEFINE_ERROR(DeviceError, Device)            // wrong device, no GPU, CUDA failure
DIFFPROBE_DEFINE_ERROR(IoError, Io)                    // file missing, unreadable, short read
DIFFPROBE_DEFINE_ERROR(FormatError, Format)            // a file's content is corrupt or hostile
DIFFPROBE_DEFINE_ERROR(ConfigError, Config)            // invalid model / pipeline configuration
DIFFPROBE_DEFINE_ERROR(ArgumentError, Argument)        // an argument out of its allowed range
DIFFPROBE_DEFINE_ERROR(NumericError, Numeric)          // NaN / Inf where finite values are required
DIFFPROBE_DEFINE_ERROR(UnsupportedError, Unsupported)  // valid request this build cannot serve
DIFFPROBE_DEFINE_ERROR(CancelledError, Cancelled)      // the caller asked a long call to stop

#undef DIFFPROBE_DEFINE_ERROR

}  // namespace diffprobe

#pragma once
#define DIFFPROBE_VERSION_MAJOR 0
#define DIFFPROBE_VERSION_MINOR 1
#define DIFFPROBE_VERSION_PATCH 0
#define DIFFPROBE_VERSION_STRING "0.1.0"

namespace diffprobe {
inline constexpr const char* version() { return DIFFPROBE_VERSION_STRING; }
}  // namespace diffprobe

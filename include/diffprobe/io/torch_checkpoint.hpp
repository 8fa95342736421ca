#pragma once
// PyTorch checkpoints without Python: the zip format (torch >= 1.6) and the legacy format
// (torch < 1.6), read through a restricted unpickler that accepts only the globals a state
// dict needs and refuses everything else.
#include <filesystem>

#include "diffprobe/io/file_access.hpp"
#include "diffprobe/io/named_tensors.hpp"

namespace diffprobe::io {

enum class WeightsFormat { Safetensors, TorchZip, TorchLegacy, Unknown };
const char* weights_format_name(WeightsFormat f) noexcept;

/// Sniffs the format from the file's first bytes (IoError when unreadable).
WeightsFormat detect_weights_format(const std::filesystem::path& path);

/// Loads a torch.save'd state dict (zip or legacy). Honours storage offsets, sizes and strides
/// and several tensors sharing one storage; every tensor comes back dense (Contiguous) with the
/// storage's dtype (f32, f16, bf16, ...). FormatError on anything corrupt or unexpected.
NamedTensors load_torch_checkpoint(const std::filesystem::path& path, FileAccess access = FileAccess::Map);

/// Any supported weights file, by content: safetensors, torch zip or torch legacy. `access`: map
/// the file (the default) or read it whole (file_access.hpp).
NamedTensors load_weights(const std::filesystem::path& path, FileAccess access = FileAccess::Map);

}  // namespace diffprobe::io

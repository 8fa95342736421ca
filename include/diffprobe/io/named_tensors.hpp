#pragma once
// An ordered collection of named tensors plus string metadata: what a weights file, a feature
// file or a saved head holds. Names are the PyTorch state-dict names.
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "diffprobe/core/tensor.hpp"

namespace diffprobe::io {

class NamedTensors {
 public:
  /// Adds or replaces `name` (insertion order is kept for new names).
  void set(const std::string& name, Tensor t);
  /// The tensor called `name`; ArgumentError naming the closest keys when absent.
  const Tensor& at(const std::string& name) const;
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  std::size_t size() const noexcept { return items_.size(); }
  bool empty() const noexcept { return items_.empty(); }
  /// Removes `name` (nothing happens when it is absent); the others keep their order.
  void erase(const std::string& name);
  std::vector<std::string> names() const;

  using Item = std::pair<std::string, Tensor>;
  std::vector<Item>::const_iterator begin() const { return items_.begin(); }
  std::vector<Item>::const_iterator end() const { return items_.end(); }

  /// Free-form string metadata (safetensors "__metadata__").
  std::map<std::string, std::string> metadata;

 private:
  std::vector<Item> items_;
  std::unordered_map<std::string, std::size_t> index_;
};

}  // namespace diffprobe::io

#include "diffprobe/io/named_tensors.hpp"

#include <algorithm>

#include "diffprobe/core/error.hpp"

namespace diffprobe::io {
namespace {

// Edit distance, for "did you mean" suggestions (only computed on the error path).
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

void NamedTensors::set(const std::string& name, Tensor t) {
  const auto it = index_.find(name);
  if (it != index_.end()) {
    items_[it->second].second = std::move(t);
    return;
  }
  index_.emplace(name, items_.size());
  items_.emplace_back(name, std::move(t));
}

const Tensor& NamedTensors::at(const std::string& name) const {
  const auto it = index_.find(name);
  if (it != index_.end()) return items_[it->second].second;
  std::string why = "no tensor named '" + name + "' among " + std::to_string(items_.size());
  if (items_.empty()) throw ArgumentError("NamedTensors::at", why + " (the collection is empty)");
  std::vector<std::pair<std::size_t, std::size_t>> scored;  // (distance, item)
  scored.reserve(items_.size());
  for (std::size_t i = 0; i < items_.size(); ++i)
    scored.emplace_back(edit_distance(name, items_[i].first), i);
  const std::size_t k = std::min<std::size_t>(5, scored.size());
  std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(k), scored.end());
  why += "; closest: ";
  for (std::size_t i = 0; i < k; ++i) why += (i ? ", '" : "'") + items_[scored[i].second].first + "'";
  throw ArgumentError("NamedTensors::at", why);
}

void NamedTensors::erase(const std::string& name) {
  const auto it = index_.find(name);
  if (it == index_.end()) return;
  const std::size_t pos = it->second;
  items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(pos));
  index_.erase(it);
  for (auto& [n, i] : index_)
    if (i > pos) --i;
}

std::vector<std::string> NamedTensors::names() const {
  std::vector<std::string> out;
  out.reserve(items_.size());
  for (const auto& [n, t] : items_) out.push_back(n);
  return out;
}

}  // namespace diffprobe::io

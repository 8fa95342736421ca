#include "model/layers/weight_table.hpp"

namespace diffprobe::detail {
namespace {

// "in_layers.2" + "weight"; a layer that is itself the parameter holder names it "".
std::string leaf(const std::string& name, const char* what) {
  return name.empty() ? what : name + "." + what;
}

// The layer's own name: its prefix without the dot, or prefix + name.
std::string layer_name(const std::string& prefix, const std::string& name) {
  if (!name.empty()) return prefix + name;
  return prefix.empty() ? prefix : prefix.substr(0, prefix.size() - 1);
}

}  // namespace

WeightTable WeightTable::scoped(const std::string& name) const {
  WeightTable t = *this;
  t.prefix_ = prefix_ + name + ".";
  return t;
}

Tensor WeightTable::tensor(const std::string& name, const Shape& shape) {
  const std::string full = prefix_ + name;
  specs_->push_back({full, shape});
  if (!weights_) return {};
  const Tensor& t = weights_->at(full);
  if (t.shape() != shape)  // from_weights checked every shape: this is a bug in a layer type
    throw ShapeError("UNet", "weight '" + full + "' bound as " + shape.str() + " but is " + t.shape().str());
  return t;
}

ops::Conv2d WeightTable::conv(const std::string& name, std::int64_t cin, std::int64_t cout, int k,
                              int stride) {
  Tensor w = tensor(leaf(name, "weight"), {cout, cin, k, k});
  Tensor b = tensor(leaf(name, "bias"), {cout});
  if (!weights_) return {};
  ops::Conv2d c(std::move(w), std::move(b), {.stride = stride, .padding = k / 2});
  if (convs_) convs_->push_back({layer_name(prefix_, name), c});
  return c;
}

ops::Conv2d WeightTable::conv1x1_from_1d(const std::string& name, std::int64_t cin, std::int64_t cout) {
  Tensor w = tensor(leaf(name, "weight"), {cout, cin, 1});
  Tensor b = tensor(leaf(name, "bias"), {cout});
  if (!weights_) return {};
  ops::Conv2d c(w.reshape({cout, cin, 1, 1}), std::move(b), {.stride = 1, .padding = 0});
  if (convs_) convs_->push_back({layer_name(prefix_, name), c});
  return c;
}

ops::Linear WeightTable::linear(const std::string& name, std::int64_t in, std::int64_t out) {
  Tensor w = tensor(leaf(name, "weight"), {out, in});
  Tensor b = tensor(leaf(name, "bias"), {out});
  if (!weights_) return {};
  return ops::Linear(std::move(w), std::move(b));
}

NormWeights WeightTable::norm(const std::string& name, std::int64_t channels) {
  NormWeights n;
  n.gamma = tensor(leaf(name, "weight"), {channels});
  n.beta = tensor(leaf(name, "bias"), {channels});
  return n;
}

}  // namespace diffprobe::detail

#pragma once
// The one call through which a U-Net layer names a weight: it declares the state-dict entry
// (name and shape, in registration order) and, when the table holds weights, binds it. So a
// layer's names, shapes and binding are written once, beside its forward (llama.cpp's
// create_tensor(name, shape) does the same).
#include <cstdint>
#include <string>
#include <vector>

#include "diffprobe/core/tensor.hpp"
#include "diffprobe/io/named_tensors.hpp"
#include "diffprobe/model/unet.hpp"
#include "diffprobe/ops/conv2d.hpp"
#include "diffprobe/ops/linear.hpp"

namespace diffprobe::detail {

/// A bound convolution and its state-dict prefix ("input_blocks.1.0.in_layers.2"); the copy
/// shares the layer's int8 setting and prepared state.
struct NamedConv {
  std::string name;
  ops::Conv2d conv;
};

/// GroupNorm's affine parameters.
struct NormWeights {
  Tensor gamma, beta;
};

class WeightTable {
 public:
  /// Declaration only: every call appends to `specs` and returns undefined tensors and ops.
  explicit WeightTable(std::vector<WeightSpec>& specs) : specs_(&specs) {}
  /// Declaration and binding: `weights` must already hold every declared name with its shape
  /// (UNet::from_weights checks the whole state dict first, so the report lists every problem).
  WeightTable(std::vector<WeightSpec>& specs, const io::NamedTensors& weights,
              std::vector<NamedConv>* convs = nullptr)
      : specs_(&specs), weights_(&weights), convs_(convs) {}

  /// The same table with `name + "."` prepended to every name ("input_blocks.3.0").
  WeightTable scoped(const std::string& name) const;

  Tensor tensor(const std::string& name, const Shape& shape);
  /// `name.weight` [cout, cin, k, k] and `name.bias` [cout]; padding k/2.
  ops::Conv2d conv(const std::string& name, std::int64_t cin, std::int64_t cout, int k, int stride = 1);
  /// A PyTorch Conv1d of kernel 1 (`name.weight` [cout, cin, 1]) run as a 1x1 Conv2d.
  ops::Conv2d conv1x1_from_1d(const std::string& name, std::int64_t cin, std::int64_t cout);
  /// `name.weight` [out, in] and `name.bias` [out].
  ops::Linear linear(const std::string& name, std::int64_t in, std::int64_t out);
  /// `name.weight` and `name.bias`, both [channels].
  NormWeights norm(const std::string& name, std::int64_t channels);

 private:
  std::vector<WeightSpec>* specs_;
  const io::NamedTensors* weights_ = nullptr;
  std::vector<NamedConv>* convs_ = nullptr;  // every convolution bound, in declaration order
  std::string prefix_;
};

}  // namespace diffprobe::detail

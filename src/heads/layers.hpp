#pragma once
// The layers the heads are built from. Each has forward(x, training), which keeps what backward
// needs only when training, and backward(grad_out), which adds parameter gradients into
// Param::grad and returns the gradient with respect to the input. Batches are row-major:
// [N, F], [N, C, H, W] (NCHW) or [N, T, D] (tokens). Explicitly instantiated for float and double.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "heads/buffer.hpp"
#include "heads/rng.hpp"

namespace diffprobe::heads {

/// How reset() initialises a parameter: PyTorch's defaults (kaiming_uniform(a=sqrt(5)) for
/// weights, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for biases, both the same bound).
enum class Init : std::uint8_t { Zeros, Ones, Uniform };

template <class T> struct Param {
  std::vector<std::int64_t> shape;
  std::vector<T> value, grad;
  Init init = Init::Zeros;
  double bound = 0;  // Uniform: U(-bound, bound)

  Param() = default;
  Param(std::vector<std::int64_t> s, Init how, double b = 0)
      : shape(std::move(s)),
        value(static_cast<std::size_t>(numel_of(shape))),
        grad(value.size()),
        init(how),
        bound(b) {}
  std::int64_t numel() const noexcept { return static_cast<std::int64_t>(value.size()); }
  void reset(Rng& rng);
};

template <class T> struct ParamRef {
  std::string name;  // PyTorch-style dotted name, e.g. "blocks.0.attn.qkv.weight"
  Param<T>* param;
};

/// prefix + "." + name, skipping empty parts.
std::string join_name(const std::string& prefix, const std::string& name);

template <class T> class Layer {
 public:
  virtual ~Layer() = default;
  virtual Buf<T> forward(Buf<T> x, bool training) = 0;
  virtual Buf<T> backward(Buf<T> grad_out) = 0;
  /// Appends this layer's parameters (children included) in a fixed order.
  virtual void parameters(const std::string& /*prefix*/, std::vector<ParamRef<T>>& /*out*/) {}
};

/// y = x W^T + b over the last dimension. W [out, in], b [out].
template <class T> class DenseLayer final : public Layer<T> {
 public:
  DenseLayer(std::int64_t in, std::int64_t out, bool bias = true);
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;
  void parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) override;
  Param<T> weight, bias;

 private:
  std::int64_t in_, out_;
  bool has_bias_;
  Buf<T> x_;
};

template <class T> class ReLU final : public Layer<T> {
 public:
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;

 private:
  Buf<T> y_;
};

/// The exact (erf) GELU, PyTorch's default.
template <class T> class GELU final : public Layer<T> {
 public:
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;

 private:
  Buf<T> x_;
};

/// Normalises over the trailing dimensions `normalized_shape` (e.g. [D] or [C, H, W]) with a
/// biased variance, then applies an elementwise affine of that shape.
template <class T> class LayerNorm final : public Layer<T> {
 public:
  explicit LayerNorm(std::vector<std::int64_t> normalized_shape, double eps = 1e-5);
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;
  void parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) override;
  Param<T> weight, bias;

 private:
  std::vector<std::int64_t> norm_shape_;
  std::int64_t d_;
  double eps_;
  Buf<T> xhat_;
  std::vector<T> rstd_;
};

/// Stride-1 convolution with "same" zero padding (kernel 1 or 3), NCHW, by im2col + GEMM.
/// W [out, in, k, k], b [out].
template <class T> class ConvLayer final : public Layer<T> {
 public:
  ConvLayer(std::int64_t in, std::int64_t out, int kernel);
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;
  void parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) override;
  Param<T> weight, bias;

 private:
  std::int64_t in_, out_;
  int k_;
  Buf<T> x_;
};

/// PyTorch's AdaptiveAvgPool2d: output cell i covers [floor(i*H/oh), ceil((i+1)*H/oh)).
template <class T> class AdaptiveAvgPool2d final : public Layer<T> {
 public:
  AdaptiveAvgPool2d(std::int64_t out_h, std::int64_t out_w) : oh_(out_h), ow_(out_w) {}
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;

 private:
  std::int64_t oh_, ow_;
  std::vector<std::int64_t> in_shape_;
};

/// [N, C, H, W] -> [N, C].
template <class T> class GlobalAvgPool final : public Layer<T> {
 public:
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;

 private:
  std::vector<std::int64_t> in_shape_;
};

/// [N, ...] -> [N, prod(...)].
template <class T> class Flatten final : public Layer<T> {
 public:
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;

 private:
  std::vector<std::int64_t> in_shape_;
};

/// [N, C, H, W] -> [N, H*W, C]: one token per position.
template <class T> class ToTokens final : public Layer<T> {
 public:
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;

 private:
  std::vector<std::int64_t> in_shape_;
};

/// Prepends a learned token (zero-initialised, shape [1, 1, D]): [N, T, D] -> [N, T+1, D].
template <class T> class ClsToken final : public Layer<T> {
 public:
  explicit ClsToken(std::int64_t dim);
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;
  void parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) override;
  Param<T> token;

 private:
  std::int64_t dim_;
};

/// [N, T, D] -> [N, D]: token `index` (0, the CLS token).
template <class T> class TakeToken final : public Layer<T> {
 public:
  explicit TakeToken(std::int64_t index = 0) : index_(index) {}
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;

 private:
  std::int64_t index_;
  std::vector<std::int64_t> in_shape_;
};

/// Multi-head self-attention on [N, T, D] (timm's Attention): qkv = Linear(D, 3D, no bias),
/// softmax(q k^T / sqrt(D/heads)) v per head, then proj = Linear(D, D). The attention
/// probabilities are recomputed in backward rather than kept, to save memory.
template <class T> class MultiHeadSelfAttention final : public Layer<T> {
 public:
  MultiHeadSelfAttention(std::int64_t dim, int heads);
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;
  void parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) override;
  DenseLayer<T> qkv, proj;

 private:
  std::int64_t dim_;
  int heads_;
  Buf<T> qkv_out_;
};

/// Pre-norm transformer block: x + attn(norm1(x)), then h + fc2(gelu(fc1(norm2(h)))).
template <class T> class TransformerBlock final : public Layer<T> {
 public:
  TransformerBlock(std::int64_t dim, int heads, int mlp_ratio, double eps = 1e-5);
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;
  void parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) override;
  LayerNorm<T> norm1;
  MultiHeadSelfAttention<T> attn;
  LayerNorm<T> norm2;
  DenseLayer<T> fc1;
  GELU<T> act;
  DenseLayer<T> fc2;
};

/// Named layers applied in order.
template <class T> class Sequential final : public Layer<T> {
 public:
  Sequential& add(std::string name, std::unique_ptr<Layer<T>> layer);
  Buf<T> forward(Buf<T> x, bool training) override;
  Buf<T> backward(Buf<T> grad_out) override;
  void parameters(const std::string& prefix, std::vector<ParamRef<T>>& out) override;
  std::size_t size() const noexcept { return layers_.size(); }

 private:
  std::vector<std::pair<std::string, std::unique_ptr<Layer<T>>>> layers_;
};

}  // namespace diffprobe::heads

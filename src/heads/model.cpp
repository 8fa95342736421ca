#include "heads/model.hpp"

#include <algorithm>
#include <string>

#include "diffprobe/core/error.hpp"

namespace diffprobe::heads {

template <class T> void Model<T>::reset_parameters(std::uint64_t seed) {
  Rng rng(seed);
  for (auto& p : parameters()) p.param->reset(rng);
}

template <class T> void Model<T>::zero_grad() {
  for (auto& p : parameters()) std::fill(p.param->grad.begin(), p.param->grad.end(), T(0));
}

namespace {

// Linear, MLP, CNN and attention heads: one input through one chain of layers.
template <class T> class SequentialModel final : public Model<T> {
 public:
  explicit SequentialModel(Sequential<T> net) : net_(std::move(net)) {}
  Buf<T> forward(std::vector<Buf<T>> inputs, bool training) override {
    if (inputs.size() != 1)
      throw ArgumentError("Model::forward", "this head takes 1 input, got " + std::to_string(inputs.size()));
    return net_.forward(std::move(inputs[0]), training);
  }
  std::vector<Buf<T>> backward(Buf<T> g) override {
    std::vector<Buf<T>> out;
    out.push_back(net_.backward(std::move(g)));
    return out;
  }
  std::vector<ParamRef<T>> parameters() override {
    std::vector<ParamRef<T>> out;
    net_.parameters("", out);
    return out;
  }

 private:
  Sequential<T> net_;
};

// Pool to <= max_pool, LayerNorm over [C, h, w], 1x1 conv to `dim`, one token per position.
template <class T> void add_tokenizer(Sequential<T>& s, const Shape& in, const AttentionHeadConfig& cfg) {
  const std::int64_t c = in[0], h = in[1], w = in[2];
  const std::int64_t ph = pooled_side(h, cfg.max_pool), pw = pooled_side(w, cfg.max_pool);
  if (ph != h || pw != w) s.add("pool", std::make_unique<AdaptiveAvgPool2d<T>>(ph, pw));
  s.add("norm", std::make_unique<LayerNorm<T>>(std::vector<std::int64_t>{c, ph, pw}, cfg.norm_eps));
  s.add("proj", std::make_unique<ConvLayer<T>>(c, cfg.dim, 1));
  s.add("tokens", std::make_unique<ToTokens<T>>());
}

template <class T> void add_blocks(Sequential<T>& s, const AttentionHeadConfig& cfg) {
  for (int i = 0; i < cfg.depth; ++i)
    s.add("blocks." + std::to_string(i),
          std::make_unique<TransformerBlock<T>>(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.norm_eps));
}

// DifFormer: tokenizer b (shared by every t) turns block b's map into tokens; the tokens of all
// blocks of one t, after a CLS token, go through the shared transformer; the CLS outputs of all
// t are concatenated and classified. All t run as one batch of nt * N sequences.
template <class T> class FusionModel final : public Model<T> {
 public:
  explicit FusionModel(const HeadSpec& spec)
      : nt_(spec.num_timesteps),
        nb_(static_cast<int>(spec.inputs.size()) / spec.num_timesteps),
        dim_(spec.attention.dim),
        cls_(spec.attention.dim),
        head_(nt_ * dim_, spec.num_classes) {
    for (int b = 0; b < nb_; ++b) {
      tokenizers_.emplace_back();
      add_tokenizer(tokenizers_.back(), spec.inputs[static_cast<std::size_t>(b)], spec.attention);
    }
    add_blocks(blocks_, spec.attention);
  }

  Buf<T> forward(std::vector<Buf<T>> inputs, bool training) override {
    if (inputs.size() != static_cast<std::size_t>(nt_ * nb_))
      throw ArgumentError("Model::forward", "this head takes " + std::to_string(nt_ * nb_) + " inputs, got " +
                                                std::to_string(inputs.size()));
    const std::int64_t n = inputs[0].dim(0), rows = nt_ * n;
    std::vector<Buf<T>> tokens;
    std::int64_t total = 0;
    for (int b = 0; b < nb_; ++b) {
      // Stack block b of every t along the batch: row t * N + i is sample i at timestep t.
      auto shape = inputs[static_cast<std::size_t>(b)].shape;
      const std::int64_t per = numel_of(shape) / std::max<std::int64_t>(n, 1);
      shape[0] = rows;
      Buf<T> x(shape);
      for (int t = 0; t < nt_; ++t) {
        const auto& in = inputs[static_cast<std::size_t>(t * nb_ + b)];
        if (in.shape[0] != n) throw ShapeError("Model::forward", "inputs disagree on the batch size");
        std::copy(in.v.begin(), in.v.end(), x.v.begin() + t * n * per);
      }
      tokens.push_back(tokenizers_[static_cast<std::size_t>(b)].forward(std::move(x), training));
      total += tokens.back().dim(1);
    }
    Buf<T> z({rows, total, dim_});
    std::int64_t at = 0;
    if (training) token_counts_.clear();  // inference leaves the model untouched (thread safety)
    for (auto& tk : tokens) {
      const std::int64_t tb = tk.dim(1);
      for (std::int64_t r = 0; r < rows; ++r)
        std::copy_n(tk.data() + r * tb * dim_, tb * dim_, z.data() + (r * total + at) * dim_);
      at += tb;
      if (training) token_counts_.push_back(tb);
    }
    Buf<T> c = take_.forward(blocks_.forward(cls_.forward(std::move(z), training), training), training);
    Buf<T> f({n, nt_ * dim_});
    for (int t = 0; t < nt_; ++t)
      for (std::int64_t i = 0; i < n; ++i)
        std::copy_n(c.data() + (t * n + i) * dim_, dim_, f.data() + (i * nt_ + t) * dim_);
    if (training) {
      batch_ = n;
      in_shapes_.clear();
      for (auto& in : inputs) in_shapes_.push_back(in.shape);
    }
    return head_.forward(std::move(f), training);
  }

  std::vector<Buf<T>> backward(Buf<T> g) override {
    if (in_shapes_.empty())
      throw ArgumentError("Model::backward", "backward() called without a preceding training forward");
    const std::int64_t n = batch_, rows = nt_ * n;
    Buf<T> df = head_.backward(std::move(g));
    Buf<T> dc({rows, dim_});
    for (int t = 0; t < nt_; ++t)
      for (std::int64_t i = 0; i < n; ++i)
        std::copy_n(df.data() + (i * nt_ + t) * dim_, dim_, dc.data() + (t * n + i) * dim_);
    Buf<T> dz = cls_.backward(blocks_.backward(take_.backward(std::move(dc))));
    const std::int64_t total = dz.dim(1);
    std::vector<Buf<T>> out(in_shapes_.size());
    std::int64_t at = 0;
    for (int b = 0; b < nb_; ++b) {
      const std::int64_t tb = token_counts_[static_cast<std::size_t>(b)];
      Buf<T> dtk({rows, tb, dim_});
      for (std::int64_t r = 0; r < rows; ++r)
        std::copy_n(dz.data() + (r * total + at) * dim_, tb * dim_, dtk.data() + r * tb * dim_);
      at += tb;
      Buf<T> dx = tokenizers_[static_cast<std::size_t>(b)].backward(std::move(dtk));
      const std::int64_t per = dx.numel() / std::max<std::int64_t>(rows, 1);
      for (int t = 0; t < nt_; ++t) {
        auto& o = out[static_cast<std::size_t>(t * nb_ + b)];
        o = Buf<T>(in_shapes_[static_cast<std::size_t>(t * nb_ + b)]);
        std::copy_n(dx.data() + t * n * per, n * per, o.data());
      }
    }
    in_shapes_.clear();
    return out;
  }

  std::vector<ParamRef<T>> parameters() override {
    std::vector<ParamRef<T>> out;
    for (int b = 0; b < nb_; ++b)
      tokenizers_[static_cast<std::size_t>(b)].parameters("tokenizers." + std::to_string(b), out);
    cls_.parameters("cls_token", out);
    blocks_.parameters("", out);
    head_.parameters("head", out);
    return out;
  }

 private:
  int nt_, nb_;
  std::int64_t dim_;
  std::vector<Sequential<T>> tokenizers_;
  ClsToken<T> cls_;
  Sequential<T> blocks_;
  TakeToken<T> take_;
  DenseLayer<T> head_;
  std::vector<std::int64_t> token_counts_;
  std::int64_t batch_ = 0;
  std::vector<std::vector<std::int64_t>> in_shapes_;
};

}  // namespace

template <class T> std::unique_ptr<Model<T>> build_model(const HeadSpec& spec) {
  const std::int64_t k = spec.num_classes;
  Sequential<T> s;
  switch (spec.kind) {
    case HeadKind::Linear: {
      s.add("flatten", std::make_unique<Flatten<T>>());
      s.add("fc", std::make_unique<DenseLayer<T>>(spec.inputs[0].numel(), k));
      break;
    }
    case HeadKind::MLP: {
      s.add("flatten", std::make_unique<Flatten<T>>());
      std::int64_t prev = spec.inputs[0].numel();
      for (std::size_t i = 0; i < spec.hidden.size(); ++i) {
        s.add("fc" + std::to_string(i), std::make_unique<DenseLayer<T>>(prev, spec.hidden[i]));
        s.add("relu" + std::to_string(i), std::make_unique<ReLU<T>>());
        prev = spec.hidden[i];
      }
      s.add("fc" + std::to_string(spec.hidden.size()), std::make_unique<DenseLayer<T>>(prev, k));
      break;
    }
    case HeadKind::CNN: {
      const Shape& in = spec.inputs[0];
      const auto& cfg = spec.cnn;
      const std::int64_t ph = pooled_side(in[1], cfg.max_pool), pw = pooled_side(in[2], cfg.max_pool);
      if (ph != in[1] || pw != in[2]) s.add("pool", std::make_unique<AdaptiveAvgPool2d<T>>(ph, pw));
      if (cfg.input_norm)
        s.add("norm", std::make_unique<LayerNorm<T>>(std::vector<std::int64_t>{in[0], ph, pw}, cfg.norm_eps));
      std::int64_t prev = in[0];
      for (std::size_t i = 0; i < cfg.channels.size(); ++i) {
        s.add("conv" + std::to_string(i), std::make_unique<ConvLayer<T>>(prev, cfg.channels[i], 3));
        s.add("relu" + std::to_string(i), std::make_unique<ReLU<T>>());
        prev = cfg.channels[i];
      }
      s.add("gap", std::make_unique<GlobalAvgPool<T>>());
      s.add("head", std::make_unique<DenseLayer<T>>(prev, k));
      break;
    }
    case HeadKind::Attention: {
      add_tokenizer(s, spec.inputs[0], spec.attention);
      s.add("cls_token", std::make_unique<ClsToken<T>>(spec.attention.dim));
      add_blocks(s, spec.attention);
      s.add("take_cls", std::make_unique<TakeToken<T>>(0));
      s.add("head", std::make_unique<DenseLayer<T>>(spec.attention.dim, k));
      break;
    }
    case HeadKind::Fusion: return std::make_unique<FusionModel<T>>(spec);
  }
  return std::make_unique<SequentialModel<T>>(std::move(s));
}

template class Model<float>;
template class Model<double>;
template std::unique_ptr<Model<float>> build_model<float>(const HeadSpec&);
template std::unique_ptr<Model<double>> build_model<double>(const HeadSpec&);

}  // namespace diffprobe::heads

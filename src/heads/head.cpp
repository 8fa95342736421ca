#include "diffprobe/heads/head.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "diffprobe/core/threads.hpp"
#include "diffprobe/features/feature_rows.hpp"
#include "heads/head_impl.hpp"
#include "heads/loss.hpp"
#include "heads/optimizer.hpp"

namespace diffprobe {

using heads::Buf;

// ---- Labels --------------------------------------------------------------------------------

Labels::Labels(const Tensor& t) {
  const char* where = "Labels";
  if (!t.defined()) throw ArgumentError(where, "the labels tensor is undefined");
  if (t.rank() != 1) throw ShapeError(where, "labels must be a rank-1 tensor [N], got " + t.shape().str());
  if (t.dtype() != DType::I64 && t.dtype() != DType::I32)
    throw DTypeError(where, "labels must be i64 or i32, got " + std::string(dtype_name(t.dtype())));
  const Tensor c = t.device().is_cpu() ? t : t.to_device(Device::cpu());
  values_.resize(static_cast<std::size_t>(c.numel()));
  for (std::int64_t i = 0; i < c.numel(); ++i) {
    const std::int64_t v =
        c.dtype() == DType::I64 ? c.data<const std::int64_t>()[i] : c.data<const std::int32_t>()[i];
    if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
      throw ArgumentError(
          where, "label " + std::to_string(v) + " of sample " + std::to_string(i) + " is out of range");
    values_[static_cast<std::size_t>(i)] = static_cast<int>(v);
  }
}

namespace {

// ---- Input checking and batching -----------------------------------------------------------

struct Input {
  Tensor keep;  // f32, contiguous, CPU: the memory `data` points into
  const float* data = nullptr;
  const FeatureRows* rows = nullptr;  // instead of `data`: read from disk on demand
  std::int64_t per_sample = 0;
  std::vector<std::int64_t> sample_shape;  // the spec's per-sample shape
};

bool takes_maps(HeadKind k) {
  return k == HeadKind::CNN || k == HeadKind::Attention || k == HeadKind::Fusion;
}

std::vector<Input> prepare_inputs(const HeadSpec& spec, const std::vector<Tensor>& xs,
                                  const std::string& where, std::int64_t* n_out) {
  if (xs.size() != spec.inputs.size())
    throw ArgumentError(where, std::string(head_kind_name(spec.kind)) + " head expects " +
                                   std::to_string(spec.inputs.size()) + " feature tensor(s), got " +
                                   std::to_string(xs.size()));
  std::vector<Input> out;
  std::int64_t n = -1;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    const Shape& want = spec.inputs[i];
    const std::string which = xs.size() > 1 ? " (input " + std::to_string(i) + ")" : "";
    if (!x.defined()) throw ArgumentError(where, "the features tensor is undefined" + which);
    if (!is_floating(x.dtype()))
      throw DTypeError(
          where, "features must be f32, f16 or bf16, got " + std::string(dtype_name(x.dtype())) + which);
    if (x.rank() < 2)
      throw ShapeError(where, "features need a batch dimension, got " + x.shape().str() + which);
    bool ok;
    if (takes_maps(spec.kind)) {
      ok = x.rank() == 4 && x.dim(1) == want[0] && x.dim(2) == want[1] && x.dim(3) == want[2];
    } else {
      ok = x.numel() == x.dim(0) * want.numel() || (x.dim(0) == 0 && x.rank() >= 2);
    }
    if (!ok)
      throw ShapeError(where, "features " + x.shape().str() + which +
                                  " do not match the head's per-sample shape " + want.str() +
                                  (takes_maps(spec.kind) ? " (expected [N, C, H, W])" : ""));
    if (n >= 0 && x.dim(0) != n)
      throw ShapeError(where, "feature tensors disagree on the number of samples: " + std::to_string(n) +
                                  " vs " + std::to_string(x.dim(0)) + which);
    n = x.dim(0);
    Input in;
    Tensor c = x.device().is_cpu() ? x : x.to_device(Device::cpu());
    if (c.layout() != Layout::Contiguous) c = c.to_layout(Layout::Contiguous);
    if (c.dtype() != DType::F32) c = c.to_dtype(DType::F32);
    in.keep = c;
    in.data = c.data<const float>();
    in.per_sample = want.numel();
    in.sample_shape = want.vec();
    out.push_back(std::move(in));
  }
  if (n <= 0) throw ArgumentError(where, "no samples: the feature tensors are empty");
  for (std::size_t i = 0; i < out.size(); ++i) {
    const float* p = out[i].data;
    const std::int64_t total = n * out[i].per_sample;
    std::int64_t bad = total;
#pragma omp parallel for schedule(static) reduction(min : bad)
    for (std::int64_t j = 0; j < total; ++j)
      if (!std::isfinite(p[j])) bad = std::min(bad, j);
    if (bad < total)
      throw NumericError(where, "non-finite feature value in sample " +
                                    std::to_string(bad / out[i].per_sample) +
                                    (out.size() > 1 ? " of input " + std::to_string(i) : std::string()));
  }
  *n_out = n;
  return out;
}

// The same checks for features read from disk; the finiteness check reads them once, in blocks.
std::vector<Input> prepare_rows(const HeadSpec& spec, const std::vector<const FeatureRows*>& xs,
                                const std::string& where, std::int64_t* n_out) {
  if (xs.size() != spec.inputs.size())
    throw ArgumentError(where, "the head takes " + std::to_string(spec.inputs.size()) +
                                   " feature inputs, got " + std::to_string(xs.size()));
  std::vector<Input> out;
  std::int64_t n = -1;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const std::string which = xs.size() > 1 ? " (input " + std::to_string(i) + ")" : "";
    if (!xs[i]) throw ArgumentError(where, "null features" + which);
    const FeatureRows& x = *xs[i];
    const Shape& want = spec.inputs[i];
    const Shape& got = x.sample_shape();
    const bool ok = takes_maps(spec.kind) ? got == want : got.numel() == want.numel();
    if (!ok)
      throw ShapeError(where, "features of per-row shape " + got.str() + which +
                                  " do not match the head's per-sample shape " + want.str());
    if (n >= 0 && x.rows() != n)
      throw ShapeError(where, "feature inputs disagree on the number of samples: " + std::to_string(n) +
                                  " vs " + std::to_string(x.rows()) + which);
    n = x.rows();
    Input in;
    in.rows = &x;
    in.per_sample = want.numel();
    in.sample_shape = want.vec();
    out.push_back(std::move(in));
  }
  if (n <= 0) throw ArgumentError(where, "no samples: the features are empty");
  for (std::size_t i = 0; i < out.size(); ++i) {
    const std::int64_t f = out[i].per_sample, block = std::max<std::int64_t>(1, (8 << 20) / (4 * f));
    std::vector<float> buf(static_cast<std::size_t>(block * f));
    for (std::int64_t r0 = 0; r0 < n; r0 += block) {
      const std::int64_t r1 = std::min(n, r0 + block);
      out[i].rows->read_range(r0, r1, buf.data());
      for (std::int64_t j = 0; j < (r1 - r0) * f; ++j)
        if (!std::isfinite(buf[static_cast<std::size_t>(j)]))
          throw NumericError(where, "non-finite feature value in sample " + std::to_string(r0 + j / f) +
                                        (out.size() > 1 ? " of input " + std::to_string(i) : std::string()));
    }
  }
  *n_out = n;
  return out;
}

void check_labels(const std::vector<int>& labels, std::int64_t n, int classes, const std::string& where) {
  if (static_cast<std::int64_t>(labels.size()) != n)
    throw ShapeError(where, std::to_string(labels.size()) + " labels for " + std::to_string(n) + " samples");
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= classes)
      throw ArgumentError(where, "label " + std::to_string(labels[i]) + " of sample " + std::to_string(i) +
                                     " outside [0, " + std::to_string(classes) + ")");
}

// Rows idx[b0, b1) of one input, standardised if `st` is given.
Buf<float> gather(const Input& in, const std::vector<std::int64_t>& idx, std::size_t b0, std::size_t b1,
                  const Standardizer* st) {
  std::vector<std::int64_t> shape{static_cast<std::int64_t>(b1 - b0)};
  shape.insert(shape.end(), in.sample_shape.begin(), in.sample_shape.end());
  Buf<float> b(shape);
  const std::int64_t f = in.per_sample, rows = static_cast<std::int64_t>(b1 - b0);
  if (in.rows) {
    in.rows->read(std::span<const std::int64_t>(idx.data() + b0, b1 - b0), b.data());
    if (st)
#pragma omp parallel for schedule(static) if (rows * f >= (1 << 16))
      for (std::int64_t r = 0; r < rows; ++r) {
        float* dst = b.data() + r * f;
        for (std::int64_t j = 0; j < f; ++j)
          dst[j] = (dst[j] - st->mean[static_cast<std::size_t>(j)]) / st->std[static_cast<std::size_t>(j)];
      }
    return b;
  }
#pragma omp parallel for schedule(static) if (rows * f >= (1 << 16))
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* src = in.data + idx[b0 + static_cast<std::size_t>(r)] * f;
    float* dst = b.data() + r * f;
    if (st) {
      for (std::int64_t j = 0; j < f; ++j)
        dst[j] = (src[j] - st->mean[static_cast<std::size_t>(j)]) / st->std[static_cast<std::size_t>(j)];
    } else {
      std::copy_n(src, f, dst);
    }
  }
  return b;
}

std::vector<Buf<float>> gather_all(const std::vector<Input>& ins, const std::vector<Standardizer>& st,
                                   const std::vector<std::int64_t>& idx, std::size_t b0, std::size_t b1) {
  std::vector<Buf<float>> out;
  for (std::size_t i = 0; i < ins.size(); ++i)
    out.push_back(gather(ins[i], idx, b0, b1, st.empty() ? nullptr : &st[i]));
  return out;
}

// The same statistics from rows read block by block (one pass for the means, one for the
// deviations), each feature's sums taken over the rows in the same order: identical results.
Standardizer fit_standardizer_streaming(const Input& in, const std::vector<std::int64_t>& rows) {
  const std::int64_t f = in.per_sample;
  const std::size_t block = static_cast<std::size_t>(std::max<std::int64_t>(1, (8 << 20) / (4 * f)));
  std::vector<double> sum(static_cast<std::size_t>(f)), sq(static_cast<std::size_t>(f));
  std::vector<float> buf(block * static_cast<std::size_t>(f));
  for (int pass = 0; pass < 2; ++pass) {
    for (std::size_t r0 = 0; r0 < rows.size(); r0 += block) {
      const std::size_t r1 = std::min(rows.size(), r0 + block);
      in.rows->read(std::span<const std::int64_t>(rows.data() + r0, r1 - r0), buf.data());
#pragma omp parallel for schedule(static)
      for (std::int64_t j = 0; j < f; ++j) {
        const std::size_t jj = static_cast<std::size_t>(j);
        for (std::size_t r = 0; r < r1 - r0; ++r) {
          const float v = buf[r * static_cast<std::size_t>(f) + jj];
          if (pass == 0)
            sum[jj] += v;
          else
            sq[jj] += (v - sum[jj]) * (v - sum[jj]);
        }
      }
    }
    if (pass == 0)
      for (auto& v : sum) v /= static_cast<double>(rows.size());
  }
  Standardizer s;
  s.mean.resize(static_cast<std::size_t>(f));
  s.std.resize(static_cast<std::size_t>(f));
  for (std::size_t j = 0; j < static_cast<std::size_t>(f); ++j) {
    const double sd = std::sqrt(sq[j] / static_cast<double>(rows.size()));
    s.mean[j] = static_cast<float>(sum[j]);
    s.std[j] = sd > 1e-6 ? static_cast<float>(sd) : 1.0f;
  }
  return s;
}

Standardizer fit_standardizer(const Input& in, const std::vector<std::int64_t>& rows) {
  if (in.rows) return fit_standardizer_streaming(in, rows);
  const std::int64_t f = in.per_sample;
  Standardizer s;
  s.mean.resize(static_cast<std::size_t>(f));
  s.std.resize(static_cast<std::size_t>(f));
  constexpr std::int64_t kBlock = 256;
  const std::int64_t nblocks = (f + kBlock - 1) / kBlock;
  const double count = static_cast<double>(rows.size());
#pragma omp parallel for schedule(static)
  for (std::int64_t jb = 0; jb < nblocks; ++jb) {
    const std::int64_t j0 = jb * kBlock, j1 = std::min(f, j0 + kBlock);
    double sum[kBlock] = {}, sq[kBlock] = {};
    for (std::int64_t r : rows) {
      const float* src = in.data + r * f;
      for (std::int64_t j = j0; j < j1; ++j) sum[j - j0] += src[j];
    }
    for (std::int64_t j = j0; j < j1; ++j) sum[j - j0] /= count;
    for (std::int64_t r : rows) {
      const float* src = in.data + r * f;
      for (std::int64_t j = j0; j < j1; ++j) sq[j - j0] += (src[j] - sum[j - j0]) * (src[j] - sum[j - j0]);
    }
    for (std::int64_t j = j0; j < j1; ++j) {
      const double sd = std::sqrt(sq[j - j0] / count);
      s.mean[static_cast<std::size_t>(j)] = static_cast<float>(sum[j - j0]);
      // A constant feature carries no information; dividing by ~0 would only amplify noise.
      s.std[static_cast<std::size_t>(j)] = sd > 1e-6 ? static_cast<float>(sd) : 1.0f;
    }
  }
  return s;
}

// Stratified split: from each class, round(fraction * count) samples (in seeded random order)
// go to validation, keeping at least one sample of the class for training.
void split(const std::vector<int>& labels, int classes, const TrainConfig& cfg,
           std::vector<std::int64_t>& train, std::vector<std::int64_t>& val) {
  train.clear();
  val.clear();
  if (cfg.val_fraction <= 0) {
    train.resize(labels.size());
    std::iota(train.begin(), train.end(), 0);
    return;
  }
  std::vector<std::vector<std::int64_t>> by_class(static_cast<std::size_t>(classes));
  for (std::size_t i = 0; i < labels.size(); ++i)
    by_class[static_cast<std::size_t>(labels[i])].push_back(static_cast<std::int64_t>(i));
  heads::Rng rng(cfg.seed ^ 0x9e3779b97f4a7c15ull);  // a stream apart from the batch order
  for (auto& members : by_class) {
    rng.shuffle(members);
    const auto count = static_cast<std::int64_t>(members.size());
    const std::int64_t nv =
        std::min(count - 1, static_cast<std::int64_t>(std::llround(cfg.val_fraction * count)));
    for (std::int64_t i = 0; i < count; ++i)
      (i < nv ? val : train).push_back(members[static_cast<std::size_t>(i)]);
  }
  std::sort(train.begin(), train.end());
  std::sort(val.begin(), val.end());
}

std::vector<std::vector<float>> snapshot(const std::vector<heads::ParamRef<float>>& params) {
  std::vector<std::vector<float>> s;
  for (const auto& p : params) s.push_back(p.param->value);
  return s;
}

void restore(const std::vector<heads::ParamRef<float>>& params, const std::vector<std::vector<float>>& s) {
  for (std::size_t i = 0; i < params.size(); ++i) params[i].param->value = s[i];
}

Shape sample_shape_flat(const Shape& s) {
  if (s.rank() <= 1) return s;
  return Shape(std::vector<std::int64_t>(s.dims().begin() + 1, s.dims().end()));
}

Shape sample_shape_map(const Shape& s, const char* where) {
  if (s.rank() == 3) return s;
  if (s.rank() == 4) return sample_shape_flat(s);
  throw ShapeError(where, "expects a feature-map shape [N, C, H, W] or [C, H, W], got " + s.str());
}

}  // namespace

// ---- Construction --------------------------------------------------------------------------

Head::Head(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Head::Head(Head&&) noexcept = default;
Head& Head::operator=(Head&&) noexcept = default;
Head::~Head() = default;

Head Head::from_spec(const HeadSpec& spec, std::uint64_t init_seed) {
  spec.validate();
  auto impl = std::make_unique<Impl>();
  impl->spec = spec;
  impl->model = heads::build_model<float>(spec);
  impl->params = impl->model->parameters();
  impl->model->reset_parameters(init_seed);
  return Head(std::move(impl));
}

Head Head::linear(const Shape& feature_shape, int num_classes) {
  HeadSpec s;
  s.kind = HeadKind::Linear;
  s.inputs = {sample_shape_flat(feature_shape)};
  s.num_classes = num_classes;
  return from_spec(s);
}

Head Head::linear(std::int64_t in_features, int num_classes) {
  return linear(Shape{in_features}, num_classes);
}

Head Head::mlp(const Shape& feature_shape, std::string_view hidden, int num_classes) {
  return mlp(feature_shape, parse_hidden_sizes(hidden), num_classes);
}

Head Head::mlp(const Shape& feature_shape, std::vector<int> hidden, int num_classes) {
  HeadSpec s;
  s.kind = HeadKind::MLP;
  s.inputs = {sample_shape_flat(feature_shape)};
  s.hidden = std::move(hidden);
  s.num_classes = num_classes;
  return from_spec(s);
}

Head Head::cnn(const Shape& feature_shape, int num_classes, const CnnHeadConfig& config) {
  HeadSpec s;
  s.kind = HeadKind::CNN;
  s.inputs = {sample_shape_map(feature_shape, "Head::cnn")};
  s.cnn = config;
  s.num_classes = num_classes;
  return from_spec(s);
}

Head Head::attention(const Shape& feature_shape, int num_classes, const AttentionHeadConfig& config) {
  HeadSpec s;
  s.kind = HeadKind::Attention;
  s.inputs = {sample_shape_map(feature_shape, "Head::attention")};
  s.attention = config;
  s.num_classes = num_classes;
  return from_spec(s);
}

Head Head::fusion(const std::vector<std::vector<Shape>>& shapes, int num_classes,
                  const AttentionHeadConfig& config) {
  HeadSpec s;
  s.kind = HeadKind::Fusion;
  if (shapes.empty() || shapes[0].empty())
    throw ConfigError("Head::fusion", "needs feature shapes for at least one timestep and one block");
  for (std::size_t t = 0; t < shapes.size(); ++t) {
    if (shapes[t].size() != shapes[0].size())
      throw ConfigError("Head::fusion", "timestep " + std::to_string(t) + " has " +
                                            std::to_string(shapes[t].size()) + " blocks, timestep 0 has " +
                                            std::to_string(shapes[0].size()));
    for (const auto& sh : shapes[t]) s.inputs.push_back(sample_shape_map(sh, "Head::fusion"));
  }
  s.num_timesteps = static_cast<int>(shapes.size());
  s.attention = config;
  s.num_classes = num_classes;
  return from_spec(s);
}

const HeadSpec& Head::spec() const noexcept { return impl_->spec; }
int Head::num_classes() const noexcept { return impl_->spec.num_classes; }

std::int64_t Head::num_parameters() const noexcept {
  std::int64_t n = 0;
  for (const auto& p : impl_->params) n += p.param->numel();
  return n;
}

void Head::reset_parameters(std::uint64_t seed) { impl_->model->reset_parameters(seed); }

void Head::set_threads(int threads) noexcept { impl_->threads = threads; }
int Head::threads() const noexcept { return impl_->threads; }

std::map<std::string, std::string>& Head::metadata() noexcept { return impl_->metadata; }
const std::map<std::string, std::string>& Head::metadata() const noexcept { return impl_->metadata; }

// ---- Training ------------------------------------------------------------------------------

TrainHistory Head::fit(const Tensor& features, const Labels& labels, const TrainConfig& config) {
  return fit(std::vector<Tensor>{features}, labels, config);
}

namespace {

struct EvalResult {
  double loss = 0, accuracy = 0;
};

EvalResult eval_subset(heads::Model<float>& model, const std::vector<Input>& ins,
                       const std::vector<Standardizer>& st, const std::vector<int>& labels,
                       const std::vector<std::int64_t>& idx, std::size_t batch) {
  double loss = 0;
  std::int64_t correct = 0;
  std::vector<int> yb;
  for (std::size_t b0 = 0; b0 < idx.size(); b0 += batch) {
    const std::size_t b1 = std::min(idx.size(), b0 + batch);
    yb.clear();
    for (std::size_t i = b0; i < b1; ++i) yb.push_back(labels[static_cast<std::size_t>(idx[i])]);
    const Buf<float> z = model.forward(gather_all(ins, st, idx, b0, b1), false);
    const auto r = heads::cross_entropy<float>(z, yb.data(), nullptr);
    loss += r.loss * static_cast<double>(b1 - b0);
    correct += r.correct;
  }
  const double n = static_cast<double>(idx.size());
  return {loss / n, static_cast<double>(correct) / n};
}

}  // namespace

namespace detail {
struct HeadAccess {
  static TrainHistory fit(Head& head, const std::vector<Input>& ins, std::int64_t rows, const Labels& labels,
                          const TrainConfig& cfg);
  static Tensor logits(const Head& head, const std::vector<Input>& ins, std::int64_t n);
};
}  // namespace detail

TrainHistory Head::fit(const std::vector<Tensor>& features, const Labels& labels, const TrainConfig& cfg) {
  cfg.validate();
  ThreadScope threads(cfg.threads);
  std::int64_t rows = 0;
  const auto ins = prepare_inputs(impl_->spec, features, "Head::fit", &rows);
  return detail::HeadAccess::fit(*this, ins, rows, labels, cfg);
}

TrainHistory Head::fit(const FeatureRows& features, const Labels& labels, const TrainConfig& config) {
  return fit(std::vector<const FeatureRows*>{&features}, labels, config);
}

TrainHistory Head::fit(const std::vector<const FeatureRows*>& features, const Labels& labels,
                       const TrainConfig& cfg) {
  cfg.validate();
  ThreadScope threads(cfg.threads);
  std::int64_t rows = 0;
  const auto ins = prepare_rows(impl_->spec, features, "Head::fit", &rows);
  return detail::HeadAccess::fit(*this, ins, rows, labels, cfg);
}

TrainHistory detail::HeadAccess::fit(Head& head, const std::vector<Input>& ins, std::int64_t rows,
                                     const Labels& labels, const TrainConfig& cfg) {
  const std::string where = "Head::fit";
  auto& impl_ = head.impl_;
  const int classes = impl_->spec.num_classes;
  const auto& y = labels.values();
  check_labels(y, rows, classes, where);
  // With augmented copies the N samples are rows [0, N) of every copy; labels must repeat.
  const std::int64_t copies = cfg.copies;
  if (rows % copies != 0)
    throw ShapeError(where, fmt::format("{} rows are not {} copies of the same samples", rows, copies));
  const std::int64_t n = rows / copies;
  for (std::int64_t r = n; r < rows; ++r)
    if (y[static_cast<std::size_t>(r)] != y[static_cast<std::size_t>(r % n)])
      throw ArgumentError(
          where, fmt::format("row {} (copy {} of sample {}) has label {}, its sample has {}", r, r / n, r % n,
                             y[static_cast<std::size_t>(r)], y[static_cast<std::size_t>(r % n)]));
  const std::vector<int> y_base(y.begin(), y.begin() + n);

  std::vector<std::int64_t> train, val;
  split(y_base, classes, cfg, train, val);
  impl_->standardize.clear();
  if (cfg.standardize) {
    std::vector<std::int64_t> all_copies;
    for (std::int64_t k = 0; k < copies; ++k)
      for (const std::int64_t i : train) all_copies.push_back(k * n + i);
    for (const auto& in : ins) impl_->standardize.push_back(fit_standardizer(in, all_copies));
  }

  auto& model = *impl_->model;
  const auto& params = impl_->params;
  std::vector<heads::Param<float>*> raw;
  for (const auto& p : params) raw.push_back(p.param);
  heads::Optimizer opt(cfg, raw);
  heads::Rng rng(cfg.seed);
  const auto start = snapshot(params);

  const std::size_t bs = static_cast<std::size_t>(cfg.batch_size);
  const int spe = static_cast<int>((train.size() + bs - 1) / bs);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  TrainHistory h;
  h.train_samples = static_cast<std::int64_t>(train.size());
  h.val_samples = static_cast<std::int64_t>(val.size());
  double best_acc = -1, best_loss = std::numeric_limits<double>::infinity();
  std::vector<std::vector<float>> best;
  int since_best = 0;
  std::vector<std::int64_t> order = train, rows_of_epoch;
  std::vector<int> yb;
  for (int epoch = 0; epoch < cfg.epochs; ++epoch) {
    rng.shuffle(order);
    // The rows of this epoch's copy (the samples themselves without copies).
    const std::int64_t offset = (epoch % copies) * n;
    rows_of_epoch.resize(order.size());
    for (std::size_t i = 0; i < order.size(); ++i) rows_of_epoch[i] = order[i] + offset;
    EpochStats st;
    st.epoch = epoch;
    st.lr = learning_rate_at(cfg, epoch, 0, spe);
    double loss_sum = 0;
    std::int64_t correct = 0;
    for (int s = 0; s < spe; ++s) {
      const std::size_t b0 = static_cast<std::size_t>(s) * bs, b1 = std::min(order.size(), b0 + bs);
      yb.clear();
      for (std::size_t i = b0; i < b1; ++i) yb.push_back(y[static_cast<std::size_t>(order[i])]);
      model.zero_grad();
      const Buf<float> z = model.forward(gather_all(ins, impl_->standardize, rows_of_epoch, b0, b1), true);
      Buf<float> dz;
      const auto r = heads::cross_entropy(z, yb.data(), &dz);
      if (!std::isfinite(r.loss)) {
        restore(params, start);  // leave the head as it was rather than half-diverged
        throw NumericError(where, "the training loss became non-finite at epoch " + std::to_string(epoch) +
                                      ", step " + std::to_string(s) + " (is the learning rate " +
                                      std::to_string(cfg.lr) + " too high? features unscaled?)");
      }
      model.backward(std::move(dz));
      opt.step(learning_rate_at(cfg, epoch, s, spe));
      loss_sum += r.loss * static_cast<double>(b1 - b0);
      correct += r.correct;
    }
    st.train_loss = loss_sum / static_cast<double>(train.size());
    st.train_accuracy = static_cast<double>(correct) / static_cast<double>(train.size());
    st.val_loss = st.val_accuracy = nan;
    if (!val.empty()) {
      const auto e = eval_subset(model, ins, impl_->standardize, y, val, bs);
      st.val_loss = e.loss;
      st.val_accuracy = e.accuracy;
    }
    h.epochs.push_back(st);
    if (cfg.on_epoch) cfg.on_epoch(st);
    if (val.empty()) {
      h.best_epoch = epoch;
      continue;
    }
    if (st.val_accuracy > best_acc || (st.val_accuracy == best_acc && st.val_loss < best_loss)) {
      best_acc = st.val_accuracy;
      best_loss = st.val_loss;
      h.best_epoch = epoch;
      since_best = 0;
      if (cfg.restore_best) best = snapshot(params);
    } else if (cfg.patience > 0 && ++since_best >= cfg.patience) {
      h.stopped_early = true;
      break;
    }
  }
  if (!val.empty() && cfg.restore_best && h.best_epoch != h.epochs.back().epoch) restore(params, best);
  return h;
}

// ---- Inference -----------------------------------------------------------------------------

Tensor Head::logits(const Tensor& features) const { return logits(std::vector<Tensor>{features}); }

Tensor Head::logits(const std::vector<Tensor>& features) const {
  ThreadScope threads(impl_->threads);
  std::int64_t n = 0;
  const auto ins = prepare_inputs(impl_->spec, features, "Head::logits", &n);
  return detail::HeadAccess::logits(*this, ins, n);
}

Tensor Head::logits(const FeatureRows& features) const {
  return logits(std::vector<const FeatureRows*>{&features});
}

Tensor Head::logits(const std::vector<const FeatureRows*>& features) const {
  ThreadScope threads(impl_->threads);
  std::int64_t n = 0;
  const auto ins = prepare_rows(impl_->spec, features, "Head::logits", &n);
  return detail::HeadAccess::logits(*this, ins, n);
}

Report Head::evaluate(const FeatureRows& features, const Labels& labels) const {
  return evaluate(std::vector<const FeatureRows*>{&features}, labels);
}

Report Head::evaluate(const std::vector<const FeatureRows*>& features, const Labels& labels) const {
  const Tensor z = logits(features);
  check_labels(labels.values(), z.dim(0), impl_->spec.num_classes, "Head::evaluate");
  return classification_report(z, labels.values());
}

Tensor detail::HeadAccess::logits(const Head& head, const std::vector<Input>& ins, std::int64_t n) {
  const auto& impl_ = head.impl_;
  const std::int64_t k = impl_->spec.num_classes;
  std::vector<float> out(static_cast<std::size_t>(n * k));
  std::vector<std::int64_t> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  constexpr std::size_t kBatch = 256;  // bounds the activation memory of big heads
  for (std::size_t b0 = 0; b0 < idx.size(); b0 += kBatch) {
    const std::size_t b1 = std::min(idx.size(), b0 + kBatch);
    const Buf<float> z = impl_->model->forward(gather_all(ins, impl_->standardize, idx, b0, b1), false);
    std::copy(z.v.begin(), z.v.end(), out.begin() + static_cast<std::ptrdiff_t>(b0) * k);
  }
  return Tensor::from_vector(Shape{n, k}, out);
}

std::vector<int> Head::predict(const Tensor& features) const {
  return predict(std::vector<Tensor>{features});
}

std::vector<int> Head::predict(const std::vector<Tensor>& features) const {
  const Tensor z = logits(features);
  const std::int64_t n = z.dim(0), k = z.dim(1);
  const float* p = z.data<const float>();
  std::vector<int> out(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    out[static_cast<std::size_t>(i)] =
        static_cast<int>(std::max_element(p + i * k, p + (i + 1) * k) - (p + i * k));
  return out;
}

Report Head::evaluate(const Tensor& features, const Labels& labels) const {
  return evaluate(std::vector<Tensor>{features}, labels);
}

Report Head::evaluate(const std::vector<Tensor>& features, const Labels& labels) const {
  const Tensor z = logits(features);
  check_labels(labels.values(), z.dim(0), impl_->spec.num_classes, "Head::evaluate");
  return classification_report(z, labels.values());
}

}  // namespace diffprobe

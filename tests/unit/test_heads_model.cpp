// Whole heads as networks: parity of the attention head with PyTorch, input and parameter
// gradients of every head kind against finite differences, float against double; and the
// training machinery: optimisers against hand/PyTorch steps, schedules, metrics.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <string>

#include "diffprobe/core/error.hpp"
#include "diffprobe/heads/head_spec.hpp"
#include "diffprobe/heads/metrics.hpp"
#include "diffprobe/heads/train_config.hpp"
#include "heads/loss.hpp"
#include "heads/model.hpp"
#include "heads/optimizer.hpp"

using namespace diffprobe;
using namespace diffprobe::heads;

namespace {

template <class T>
Buf<T> random_buf(std::vector<std::int64_t> shape, std::uint64_t seed, double lo = -1, double hi = 1) {
  Buf<T> b(std::move(shape));
  Rng rng(seed);
  for (auto& v : b.v) v = static_cast<T>(rng.uniform(lo, hi));
  return b;
}

HeadSpec spec_of(HeadKind kind, std::vector<Shape> inputs, int classes) {
  HeadSpec s;
  s.kind = kind;
  s.inputs = std::move(inputs);
  s.num_classes = classes;
  return s;
}

std::vector<Buf<double>> inputs_for(const HeadSpec& s, std::int64_t n, std::uint64_t seed) {
  std::vector<Buf<double>> xs;
  for (const auto& in : s.inputs) {
    std::vector<std::int64_t> shape{n};
    for (auto d : in.dims()) shape.push_back(d);
    xs.push_back(random_buf<double>(shape, seed++, -2, 2));
  }
  return xs;
}

struct GradErrors {
  double input = 0, param = 0;
  std::size_t probed = 0;
};

// loss = cross-entropy(model(xs), labels). Compares backward() with central differences for
// every input element and every parameter element.
GradErrors full_grad_check(Model<double>& m, std::vector<Buf<double>> xs, const std::vector<int>& labels) {
  m.zero_grad();
  const auto z = m.forward(xs, true);
  Buf<double> dz;
  cross_entropy(z, labels.data(), &dz);
  const auto dxs = m.backward(dz);
  EXPECT_EQ(dxs.size(), xs.size());
  auto loss = [&] { return cross_entropy<double>(m.forward(xs, false), labels.data(), nullptr).loss; };
  const double eps = 1e-6;
  GradErrors e;
  double ref_in = 0, ref_p = 0;
  auto fd = [&](double& v) {
    const double keep = v;
    v = keep + eps;
    const double lp = loss();
    v = keep - eps;
    const double lm = loss();
    v = keep;
    ++e.probed;
    return (lp - lm) / (2 * eps);
  };
  for (std::size_t k = 0; k < xs.size(); ++k)
    for (std::size_t i = 0; i < xs[k].v.size(); ++i) {
      const double g = fd(xs[k].v[i]);
      e.input = std::max(e.input, std::abs(g - dxs[k].v[i]));
      ref_in = std::max(ref_in, std::abs(g));
    }
  for (auto& p : m.parameters())
    for (std::size_t i = 0; i < p.param->value.size(); ++i) {
      const double g = fd(p.param->value[i]);
      e.param = std::max(e.param, std::abs(g - p.param->grad[i]));
      ref_p = std::max(ref_p, std::abs(g));
    }
  e.input /= std::max(1e-3, ref_in);
  e.param /= std::max(1e-3, ref_p);
  return e;
}

// The same head in float and double from the same seed: worst relative difference of the logits
// and of all parameter gradients.
double float_vs_double(const HeadSpec& s, std::int64_t n) {
  auto md = build_model<double>(s);
  auto mf = build_model<float>(s);
  md->reset_parameters(3);
  mf->reset_parameters(3);
  const auto xd = inputs_for(s, n, 90);
  std::vector<Buf<float>> xf;
  for (const auto& x : xd) {
    Buf<float> b(x.shape);
    for (std::size_t i = 0; i < x.v.size(); ++i) b.v[i] = static_cast<float>(x.v[i]);
    xf.push_back(std::move(b));
  }
  std::vector<int> labels;
  for (std::int64_t i = 0; i < n; ++i) labels.push_back(static_cast<int>(i % s.num_classes));
  md->zero_grad();
  mf->zero_grad();
  const auto zd = md->forward(xd, true);
  const auto zf = mf->forward(xf, true);
  Buf<double> gd;
  Buf<float> gf;
  cross_entropy(zd, labels.data(), &gd);
  cross_entropy(zf, labels.data(), &gf);
  md->backward(gd);
  mf->backward(gf);
  double worst = 0;
  auto cmp = [&](const auto& a, const auto& b) {
    double scale = 1e-3;
    for (auto v : a) scale = std::max(scale, std::abs(static_cast<double>(v)));
    for (std::size_t i = 0; i < a.size(); ++i)
      worst = std::max(worst, std::abs(a[i] - static_cast<double>(b[i])) / scale);
  };
  cmp(zd.v, zf.v);
  auto pd = md->parameters();
  auto pf = mf->parameters();
  for (std::size_t k = 0; k < pd.size(); ++k) cmp(pd[k].param->grad, pf[k].param->grad);
  return worst;
}

void check_head(const HeadSpec& s, std::int64_t n, const char* what) {
  auto m = build_model<double>(s);
  m->reset_parameters(1);
  // Non-zero CLS token and LayerNorm affine so that their gradients are exercised in general position.
  Rng rng(2);
  for (auto& p : m->parameters())
    if (p.param->init != Init::Uniform)
      for (auto& v : p.param->value) v += rng.uniform(-0.3, 0.3);
  std::vector<int> labels;
  for (std::int64_t i = 0; i < n; ++i) labels.push_back(static_cast<int>((i * 7 + 1) % s.num_classes));
  const auto e = full_grad_check(*m, inputs_for(s, n, 5), labels);
  EXPECT_LT(e.input, 1e-6) << what << " input gradient";
  EXPECT_LT(e.param, 1e-6) << what << " parameter gradients";
  EXPECT_GT(e.probed, 10u);
  EXPECT_LT(float_vs_double(s, n), 5e-5) << what << " float vs double";
}

}  // namespace

// ---- Whole heads -------------------------------------------------------------------------------

TEST(HeadsModel, AttentionHeadMatchesPyTorch) {
  // A PyTorch (float64) transcription of the paper's head (timm-style pre-norm blocks), with
  // every parameter p[i] = 0.9 sin(0.61 i + 0.13 len(name)) and input x[i] = sin(0.3 i) +
  // 0.5 cos(0.11 i^2), C=3, H=W=5 pooled to 3x3, dim 8, 2 heads, depth 2, MLP ratio 2, 4 classes.
  const double want[] = {5.251049901204595, -9.285532984539595, -7.199754600639215, 7.685647900241894,
                         5.294206580998977, -9.319578705875356, -7.254270793727771, 7.701504040160657};
  HeadSpec s = spec_of(HeadKind::Attention, {Shape{3, 5, 5}}, 4);
  s.attention = {.dim = 8, .depth = 2, .heads = 2, .mlp_ratio = 2, .max_pool = 3};
  auto m = build_model<double>(s);
  std::vector<std::string> names;
  for (auto& p : m->parameters()) {
    names.push_back(p.name);
    for (std::size_t i = 0; i < p.param->value.size(); ++i)
      p.param->value[i] =
          0.9 * std::sin(0.61 * static_cast<double>(i) + 0.13 * static_cast<double>(p.name.size()));
  }
  EXPECT_EQ(names.front(), "norm.weight");
  EXPECT_EQ(names[4], "cls_token");
  EXPECT_EQ(names.back(), "head.bias");
  EXPECT_EQ(names.size(), 29u);  // as PyTorch's named_parameters()
  Buf<double> x({2, 3, 5, 5});
  for (std::size_t i = 0; i < x.v.size(); ++i) {
    const double d = static_cast<double>(i);
    x.v[i] = std::sin(0.3 * d) + 0.5 * std::cos(0.11 * d * d);
  }
  const auto z = m->forward({x}, false);
  ASSERT_EQ(z.shape, (std::vector<std::int64_t>{2, 4}));
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(z.v[static_cast<std::size_t>(i)], want[i], 1e-10) << i;
}

TEST(HeadsModel, LinearHeadGradients) {
  check_head(spec_of(HeadKind::Linear, {Shape{3, 2, 2}}, 3), 4, "linear");
}

TEST(HeadsModel, MlpHeadGradients) {
  HeadSpec s = spec_of(HeadKind::MLP, {Shape{6}}, 3);
  s.hidden = {5, 4};
  check_head(s, 4, "mlp");
}

TEST(HeadsModel, CnnHeadGradients) {
  HeadSpec s = spec_of(HeadKind::CNN, {Shape{3, 4, 4}}, 3);
  s.cnn = {.channels = {4, 3}, .max_pool = 3};  // pools 4x4 -> 3x3 first
  check_head(s, 3, "cnn");
}

TEST(HeadsModel, AttentionHeadGradients) {
  HeadSpec s = spec_of(HeadKind::Attention, {Shape{3, 3, 3}}, 3);
  s.attention = {.dim = 8, .depth = 2, .heads = 2, .mlp_ratio = 2, .max_pool = 2};
  check_head(s, 2, "attention");
}

TEST(HeadsModel, FusionHeadGradients) {
  HeadSpec s = spec_of(HeadKind::Fusion, {Shape{3, 3, 3}, Shape{2, 2, 2}, Shape{3, 3, 3}, Shape{2, 2, 2}}, 3);
  s.num_timesteps = 2;
  s.attention = {.dim = 8, .depth = 1, .heads = 2, .mlp_ratio = 2, .max_pool = 2};
  check_head(s, 2, "fusion");
}

TEST(HeadsModel, FusionHeadStructure) {
  HeadSpec s = spec_of(
      HeadKind::Fusion,
      {Shape{3, 4, 4}, Shape{2, 2, 2}, Shape{3, 4, 4}, Shape{2, 2, 2}, Shape{3, 4, 4}, Shape{2, 2, 2}}, 5);
  s.num_timesteps = 3;
  s.attention = {.dim = 8, .depth = 2, .heads = 2, .mlp_ratio = 2, .max_pool = 16};
  auto m = build_model<double>(s);
  bool tok0 = false, tok1 = false, tok2 = false;
  std::vector<std::int64_t> head_shape;
  for (auto& p : m->parameters()) {
    tok0 |= p.name == "tokenizers.0.proj.weight";
    tok1 |= p.name == "tokenizers.1.norm.weight";
    tok2 |= p.name.rfind("tokenizers.2", 0) == 0;
    if (p.name == "head.weight") head_shape = p.param->shape;
  }
  EXPECT_TRUE(tok0 && tok1);
  EXPECT_FALSE(tok2);  // one tokenizer per block, shared by the timesteps
  EXPECT_EQ(head_shape, (std::vector<std::int64_t>{5, 24}));  // CLS outputs of 3 timesteps concatenated
  // Each timestep is classified from its own sequence: changing timestep 2's maps moves only the
  // part of the logits that comes from timestep 2 (linear in its CLS output).
  m->reset_parameters(4);
  auto xs = inputs_for(s, 2, 8);
  const auto z0 = m->forward(xs, false);
  xs[0].v[0] += 1.0;  // timestep 0, block 0, sample 0
  const auto z1 = m->forward(xs, false);
  EXPECT_NE(z0.v[0], z1.v[0]);
  for (std::size_t i = 5; i < 10; ++i) EXPECT_EQ(z0.v[i], z1.v[i]);  // sample 1 untouched
}

TEST(HeadsModel, ResetIsSeededAndClsTokenZero) {
  HeadSpec s = spec_of(HeadKind::Attention, {Shape{4, 2, 2}}, 3);
  s.attention = {.dim = 8, .depth = 1, .heads = 2, .mlp_ratio = 2};
  auto a = build_model<float>(s), b = build_model<float>(s), c = build_model<float>(s);
  a->reset_parameters(7);
  b->reset_parameters(7);
  c->reset_parameters(8);
  const auto pa = a->parameters(), pb = b->parameters(), pc = c->parameters();
  bool differs = false;
  for (std::size_t k = 0; k < pa.size(); ++k) {
    EXPECT_EQ(pa[k].param->value, pb[k].param->value) << pa[k].name;
    differs |= pa[k].param->value != pc[k].param->value;
    if (pa[k].name == "cls_token") {
      for (float v : pa[k].param->value) EXPECT_EQ(v, 0.0f);
    }
    if (pa[k].name == "norm.weight") {
      for (float v : pa[k].param->value) EXPECT_EQ(v, 1.0f);
    }
  }
  EXPECT_TRUE(differs);
}

// ---- Specs -------------------------------------------------------------------------------------

TEST(HeadsModel, SpecValidationAndJsonRoundTrip) {
  HeadSpec s =
      spec_of(HeadKind::Fusion, {Shape{8, 4, 4}, Shape{4, 2, 2}, Shape{8, 4, 4}, Shape{4, 2, 2}}, 10);
  s.num_timesteps = 2;
  s.attention.dim = 64;
  s.attention.norm_eps = 1e-6;
  EXPECT_NO_THROW(s.validate());
  const HeadSpec r = HeadSpec::from_json(s.to_json());
  EXPECT_EQ(r.to_json(), s.to_json());
  EXPECT_EQ(r.inputs[1], (Shape{4, 2, 2}));
  EXPECT_EQ(r.attention.norm_eps, 1e-6);

  HeadSpec bad = s;
  bad.inputs[2] = Shape{8, 2, 2};  // block 0 changes shape across t
  EXPECT_THROW(bad.validate(), ConfigError);
  bad = s;
  bad.attention.heads = 5;
  EXPECT_THROW(bad.validate(), ConfigError);
  bad = s;
  bad.num_classes = 1;
  EXPECT_THROW(bad.validate(), ConfigError);
  bad = spec_of(HeadKind::Attention, {Shape{16}}, 3);
  EXPECT_THROW(bad.validate(), ConfigError);
  bad = spec_of(HeadKind::MLP, {Shape{16}}, 3);
  EXPECT_THROW(bad.validate(), ConfigError);  // no hidden sizes
  EXPECT_THROW(HeadSpec::from_json("{\"kind\": \"linear\"}"), FormatError);
  EXPECT_THROW(HeadSpec::from_json("not json"), FormatError);
  EXPECT_THROW(parse_head_kind("transformer"), ConfigError);

  EXPECT_EQ(parse_hidden_sizes("2048_1024"), (std::vector<int>{2048, 1024}));
  EXPECT_EQ(parse_hidden_sizes("512"), (std::vector<int>{512}));
  for (const char* t : {"", "2048_", "_1024", "2048__1024", "20x8", "0", "-5", "2048 1024"})
    EXPECT_THROW(parse_hidden_sizes(t), ConfigError) << t;
}

// ---- Optimisers --------------------------------------------------------------------------------

namespace {
std::vector<float> run_optimizer(const TrainConfig& c, double lr) {
  Param<float> p({3}, Init::Zeros);
  p.value = {1.0f, -2.0f, 0.5f};
  Optimizer opt(c, {&p});
  const float grads[3][3] = {{0.5f, 0.25f, -1.0f}, {0.1f, -0.3f, 0.2f}, {-0.4f, 0.0f, 0.7f}};
  for (const auto& g : grads) {
    p.grad.assign(g, g + 3);
    opt.step(lr);
  }
  return p.value;
}
}  // namespace

TEST(HeadsModel, PlainSgdStep) {
  TrainConfig c;
  const auto w = run_optimizer(c, 0.1);
  // w - 0.1 * (sum of the three gradients)
  EXPECT_FLOAT_EQ(w[0], 1.0f - 0.1f * 0.2f);
  EXPECT_FLOAT_EQ(w[1], -2.0f - 0.1f * -0.05f);
  EXPECT_FLOAT_EQ(w[2], 0.5f - 0.1f * -0.1f);
}

TEST(HeadsModel, SgdMomentumWeightDecayMatchesTorch) {
  TrainConfig c;
  c.momentum = 0.9;
  c.weight_decay = 0.01;
  const auto w = run_optimizer(c, 0.1);
  // torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01), same three gradients, float32.
  const float want[] = {0.8800947666168213f, -1.9994746446609497f, 0.6598374843597412f};
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(w[static_cast<std::size_t>(i)], want[i], 2e-7f) << i;
  // The same by hand, in double, for the first coordinate.
  double p = 1.0, buf = 0.0;
  for (double g : {0.5, 0.1, -0.4}) {
    const double d = g + 0.01 * p;
    buf = 0.9 * buf + d;
    p -= 0.1 * buf;
  }
  EXPECT_NEAR(w[0], p, 1e-6);
}

TEST(HeadsModel, AdamWMatchesTorch) {
  TrainConfig c;
  c.optimizer = OptimizerKind::AdamW;
  c.weight_decay = 0.05;
  const auto w = run_optimizer(c, 0.01);
  // torch.optim.AdamW(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05), float32.
  const float want[] = {0.9795473217964172f, -2.004457712173462f, 0.513986349105835f};
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(w[static_cast<std::size_t>(i)], want[i], 2e-7f) << i;
  // By hand for the first coordinate.
  double p = 1.0, m = 0, v = 0;
  int t = 0;
  for (double g : {0.5, 0.1, -0.4}) {
    ++t;
    p *= 1 - 0.01 * 0.05;
    m = 0.9 * m + 0.1 * g;
    v = 0.999 * v + 0.001 * g * g;
    p -= 0.01 * (m / (1 - std::pow(0.9, t))) / (std::sqrt(v / (1 - std::pow(0.999, t))) + 1e-8);
  }
  EXPECT_NEAR(w[0], p, 1e-6);
}

// ---- Schedules and configs ---------------------------------------------------------------------

TEST(HeadsModel, PaperRecipesAreTheDefaults) {
  const TrainConfig d, l = TrainConfig::paper_linear(), a = TrainConfig::paper_attention();
  for (const TrainConfig* c : {&d, &l, &a}) {
    EXPECT_EQ(c->optimizer, OptimizerKind::SGD);
    EXPECT_EQ(c->momentum, 0.0);
    EXPECT_EQ(c->weight_decay, 0.0);
    EXPECT_EQ(c->epochs, 28);
    EXPECT_EQ(c->batch_size, 128);
    EXPECT_EQ(c->schedule, ScheduleKind::Step);
    EXPECT_EQ(c->step_epochs, 7);
    EXPECT_EQ(c->step_gamma, 0.1);
  }
  EXPECT_EQ(d.lr, 1e-2);
  EXPECT_EQ(l.lr, 1e-2);
  EXPECT_EQ(a.lr, 5e-2);
}

TEST(HeadsModel, StepSchedule) {
  const TrainConfig c = TrainConfig::paper_linear();
  const int epochs[] = {0, 6, 7, 13, 14, 20, 21, 27};
  const double want[] = {1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5};
  for (int i = 0; i < 8; ++i)
    EXPECT_NEAR(learning_rate_at(c, epochs[i], 3, 10), want[i], want[i] * 1e-12) << epochs[i];
}

TEST(HeadsModel, CosineScheduleWithWarmup) {
  TrainConfig c;
  c.schedule = ScheduleKind::Cosine;
  c.lr = 1.0;
  c.min_lr = 0.1;
  c.epochs = 10;
  EXPECT_DOUBLE_EQ(learning_rate_at(c, 0, 0, 4), 1.0);
  EXPECT_NEAR(learning_rate_at(c, 5, 0, 4), 0.55, 1e-12);  // halfway: (lr + min) / 2
  EXPECT_NEAR(learning_rate_at(c, 2, 2, 4), 0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi * 10 / 40)),
              1e-12);
  EXPECT_GT(learning_rate_at(c, 9, 3, 4), 0.1);
  EXPECT_LT(learning_rate_at(c, 9, 3, 4), 0.11);
  c.warmup_epochs = 2;  // 8 warm-up steps: lr * (step + 1) / 8
  EXPECT_NEAR(learning_rate_at(c, 0, 0, 4), 1.0 / 8, 1e-12);
  EXPECT_NEAR(learning_rate_at(c, 1, 3, 4), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate_at(c, 2, 0, 4), 1.0, 1e-12);  // cosine starts after the warm-up
  EXPECT_NEAR(learning_rate_at(c, 6, 0, 4), 0.55, 1e-12);
  c.schedule = ScheduleKind::Constant;
  EXPECT_NEAR(learning_rate_at(c, 0, 1, 4), 2.0 / 8, 1e-12);
  EXPECT_EQ(learning_rate_at(c, 7, 1, 4), 1.0);
  EXPECT_THROW(learning_rate_at(c, 0, 4, 4), ArgumentError);
}

TEST(HeadsModel, TrainConfigValidation) {
  auto bad = [](auto edit) {
    TrainConfig c;
    edit(c);
    EXPECT_THROW(c.validate(), ConfigError);
  };
  bad([](TrainConfig& c) { c.lr = 0; });
  bad([](TrainConfig& c) { c.lr = std::nan(""); });
  bad([](TrainConfig& c) { c.epochs = 0; });
  bad([](TrainConfig& c) { c.batch_size = 0; });
  bad([](TrainConfig& c) { c.momentum = 1.0; });
  bad([](TrainConfig& c) { c.val_fraction = 1.0; });
  bad([](TrainConfig& c) { c.patience = 3; });  // early stopping without validation
  bad([](TrainConfig& c) { c.warmup_epochs = 28; });
  EXPECT_NO_THROW(TrainConfig{}.validate());
  EXPECT_EQ(parse_optimizer("adamw"), OptimizerKind::AdamW);
  EXPECT_EQ(parse_schedule("cosine"), ScheduleKind::Cosine);
  EXPECT_THROW(parse_optimizer("adam"), ConfigError);
  EXPECT_THROW(parse_schedule("linear"), ConfigError);
}

// ---- Metrics -----------------------------------------------------------------------------------

TEST(HeadsModel, ClassificationReport) {
  // 7 classes so that top-5 is not trivial.
  std::vector<float> z(4 * 7, 0.0f);
  auto set = [&](int row, std::vector<float> v) { std::copy(v.begin(), v.end(), z.begin() + row * 7); };
  set(0, {5, 1, 0, 0, 0, 0, 0});  // label 0: top-1
  set(1, {0, 1, 2, 3, 4, 5, 6});  // label 2: rank 4 -> top-5 only
  set(2, {0, 1, 2, 3, 4, 5, 6});  // label 0: rank 6 -> wrong
  set(3, {1, 1, 0, 0, 0, 0, 0});  // label 1: tie with class 0, which ranks first -> top-5 only
  const Tensor logits = Tensor::from_vector(Shape{4, 7}, z);
  const Report r = classification_report(logits, {0, 2, 0, 1});
  EXPECT_EQ(r.count, 4);
  EXPECT_DOUBLE_EQ(r.top1, 0.25);
  EXPECT_DOUBLE_EQ(r.top5, 0.75);
  EXPECT_EQ(r.confusion_at(0, 0), 1);
  EXPECT_EQ(r.confusion_at(0, 6), 1);
  EXPECT_EQ(r.confusion_at(2, 6), 1);
  EXPECT_EQ(r.confusion_at(1, 0), 1);
  std::int64_t total = 0;
  for (auto c : r.confusion) total += c;
  EXPECT_EQ(total, 4);
  EXPECT_DOUBLE_EQ(r.per_class_accuracy[0], 0.5);
  EXPECT_DOUBLE_EQ(r.per_class_accuracy[1], 0.0);
  EXPECT_TRUE(std::isnan(r.per_class_accuracy[3]));  // no samples of class 3
  double ce = 0;
  for (int i = 0; i < 4; ++i) {
    const int y[] = {0, 2, 0, 1};
    double s = 0;
    for (int j = 0; j < 7; ++j) s += std::exp(static_cast<double>(z[static_cast<std::size_t>(i * 7 + j)]));
    ce += std::log(s) - z[static_cast<std::size_t>(i * 7 + y[i])];
  }
  EXPECT_NEAR(r.loss, ce / 4, 1e-12);

  EXPECT_THROW(classification_report(logits, {0, 1}), ShapeError);
  EXPECT_THROW(classification_report(logits, {0, 1, 7, 0}), ArgumentError);
  EXPECT_THROW(classification_report(Tensor::from_vector(Shape{7}, std::vector<float>(7)), {0}), ShapeError);
  z[3] = std::nanf("");
  EXPECT_THROW(classification_report(Tensor::from_vector(Shape{4, 7}, z), {0, 2, 0, 1}), NumericError);
}

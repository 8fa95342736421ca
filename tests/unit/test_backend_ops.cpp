// One table of op cases, run on every backend registered in this build (the CPU always, CUDA when
// linked and a GPU is present) and in every precision the op has, against plain double-precision
// references, and, off the CPU, against the CPU's result too (llama.cpp's test-backend-ops). A new
// op or an awkward shape is one more row; a new backend gets all rows by registering.
//
// The per-op test files keep what a table cannot say (in-place residuals, caches, bitwise
// repeatability, error messages); this file is the cross-backend numerics.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../support/relative_error.hpp"
#include "cpu/simd.hpp"
#include "diffprobe/core/device.hpp"
#include "diffprobe/ops/attention.hpp"
#include "diffprobe/ops/conv2d.hpp"
#include "diffprobe/ops/elementwise.hpp"
#include "diffprobe/ops/group_norm.hpp"
#include "diffprobe/ops/linear.hpp"
#include "ops/backend.hpp"

namespace diffprobe {
namespace {

using ops::detail::OpKind;
using test_support::worst_relative_error;
using Values = std::vector<double>;

// ---- double-precision references (logical row-major order, NCHW for images) ----------------

struct Dims {
  std::int64_t N, C, H, W;
  explicit Dims(const Shape& s) : N(s[0]), C(s[1]), H(s[2]), W(s[3]) {}
  std::int64_t at(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) const {
    return ((n * C + c) * H + h) * W + w;
  }
};

double silu(double v) { return v / (1.0 + std::exp(-v)); }

Values ref_conv(const Values& x, const Shape& xs, const Values& w, const Shape& ws, const Values& b,
                int stride, const Values* residual) {
  const Dims d(xs);
  const std::int64_t O = ws[0], k = ws[2], pad = k / 2;
  const std::int64_t Ho = (d.H + 2 * pad - k) / stride + 1, Wo = (d.W + 2 * pad - k) / stride + 1;
  Values y(static_cast<std::size_t>(d.N * O * Ho * Wo));
  for (std::int64_t n = 0; n < d.N; ++n)
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t i = 0; i < Ho; ++i)
        for (std::int64_t j = 0; j < Wo; ++j) {
          double s = b[static_cast<std::size_t>(o)];
          for (std::int64_t c = 0; c < d.C; ++c)
            for (std::int64_t u = 0; u < k; ++u)
              for (std::int64_t v = 0; v < k; ++v) {
                const std::int64_t h = i * stride - pad + u, ww = j * stride - pad + v;
                if (h < 0 || h >= d.H || ww < 0 || ww >= d.W) continue;
                s += w[static_cast<std::size_t>(((o * d.C + c) * k + u) * k + v)] *
                     x[static_cast<std::size_t>(d.at(n, c, h, ww))];
              }
          const std::size_t at = static_cast<std::size_t>(((n * O + o) * Ho + i) * Wo + j);
          y[at] = s + (residual ? (*residual)[at] : 0.0);
        }
  return y;
}

Values ref_linear(const Values& x, std::int64_t N, std::int64_t I, const Values& w, std::int64_t O,
                  const Values& b, bool silu_input) {
  Values y(static_cast<std::size_t>(N * O));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < O; ++o) {
      double s = b[static_cast<std::size_t>(o)];
      for (std::int64_t i = 0; i < I; ++i) {
        const double v = x[static_cast<std::size_t>(n * I + i)];
        s += w[static_cast<std::size_t>(o * I + i)] * (silu_input ? silu(v) : v);
      }
      y[static_cast<std::size_t>(n * O + o)] = s;
    }
  return y;
}

// ADM: GN(x + pre_bias) or GN(x) * (1 + scale) + shift; then SiLU; then the 2x2 average pool.
Values ref_group_norm(const Values& x, const Shape& xs, const Values& gamma, const Values& beta, int groups,
                      const Values* pre_bias, const Values* scale_shift, bool act, bool pool) {
  const Dims d(xs);
  const std::int64_t cg = d.C / groups;
  Values in = x;
  if (pre_bias)
    for (std::int64_t n = 0; n < d.N; ++n)
      for (std::int64_t c = 0; c < d.C; ++c)
        for (std::int64_t h = 0; h < d.H; ++h)
          for (std::int64_t w = 0; w < d.W; ++w)
            in[static_cast<std::size_t>(d.at(n, c, h, w))] +=
                (*pre_bias)[static_cast<std::size_t>(n * d.C + c)];
  Values y(in.size());
  for (std::int64_t n = 0; n < d.N; ++n)
    for (std::int64_t g = 0; g < groups; ++g) {
      double mean = 0, var = 0;
      const double count = static_cast<double>(cg * d.H * d.W);
      for (std::int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (std::int64_t h = 0; h < d.H; ++h)
          for (std::int64_t w = 0; w < d.W; ++w) mean += in[static_cast<std::size_t>(d.at(n, c, h, w))];
      mean /= count;
      for (std::int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (std::int64_t h = 0; h < d.H; ++h)
          for (std::int64_t w = 0; w < d.W; ++w) {
            const double e = in[static_cast<std::size_t>(d.at(n, c, h, w))] - mean;
            var += e * e;
          }
      var /= count;
      const double inv = 1.0 / std::sqrt(var + 1e-5);
      for (std::int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (std::int64_t h = 0; h < d.H; ++h)
          for (std::int64_t w = 0; w < d.W; ++w) {
            const auto at = static_cast<std::size_t>(d.at(n, c, h, w));
            double v = (in[at] - mean) * inv * gamma[static_cast<std::size_t>(c)] +
                       beta[static_cast<std::size_t>(c)];
            if (scale_shift) {
              const double scale = (*scale_shift)[static_cast<std::size_t>(n * 2 * d.C + c)];
              const double shift = (*scale_shift)[static_cast<std::size_t>(n * 2 * d.C + d.C + c)];
              v = v * (1.0 + scale) + shift;
            }
            y[at] = act ? silu(v) : v;
          }
    }
  if (!pool) return y;
  Values p(static_cast<std::size_t>(d.N * d.C * (d.H / 2) * (d.W / 2)));
  for (std::int64_t n = 0; n < d.N; ++n)
    for (std::int64_t c = 0; c < d.C; ++c)
      for (std::int64_t h = 0; h < d.H / 2; ++h)
        for (std::int64_t w = 0; w < d.W / 2; ++w)
          p[static_cast<std::size_t>(((n * d.C + c) * (d.H / 2) + h) * (d.W / 2) + w)] =
              0.25 * (y[static_cast<std::size_t>(d.at(n, c, 2 * h, 2 * w))] +
                      y[static_cast<std::size_t>(d.at(n, c, 2 * h, 2 * w + 1))] +
                      y[static_cast<std::size_t>(d.at(n, c, 2 * h + 1, 2 * w))] +
                      y[static_cast<std::size_t>(d.at(n, c, 2 * h + 1, 2 * w + 1))]);
  return p;
}

// ADM's QKVAttentionLegacy (heads' q, k, v interleaved per head) and QKVAttention (q | k | v).
Values ref_attention(const Values& qkv, const Shape& s, int heads, ops::QkvOrder order) {
  const Dims d(s);
  const std::int64_t C = d.C / 3, ch = C / heads, T = d.H * d.W;
  const double scale = 1.0 / std::sqrt(std::sqrt(static_cast<double>(ch)));
  Values y(static_cast<std::size_t>(d.N * C * T));
  auto channel = [&](int part, std::int64_t head, std::int64_t c) {  // part 0 q, 1 k, 2 v
    return order == ops::QkvOrder::Legacy ? head * 3 * ch + part * ch + c : part * C + head * ch + c;
  };
  auto val = [&](std::int64_t n, std::int64_t c, std::int64_t t) {
    return qkv[static_cast<std::size_t>((n * d.C + c) * T + t)];
  };
  for (std::int64_t n = 0; n < d.N; ++n)
    for (std::int64_t hd = 0; hd < heads; ++hd)
      for (std::int64_t t = 0; t < T; ++t) {
        std::vector<double> wts(static_cast<std::size_t>(T));
        double mx = -1e300;
        for (std::int64_t u = 0; u < T; ++u) {
          double dot = 0;
          for (std::int64_t c = 0; c < ch; ++c)
            dot += val(n, channel(0, hd, c), t) * scale * val(n, channel(1, hd, c), u) * scale;
          wts[static_cast<std::size_t>(u)] = dot;
          mx = std::max(mx, dot);
        }
        double sum = 0;
        for (auto& v : wts) sum += (v = std::exp(v - mx));
        for (std::int64_t c = 0; c < ch; ++c) {
          double a = 0;
          for (std::int64_t u = 0; u < T; ++u)
            a += wts[static_cast<std::size_t>(u)] * val(n, channel(2, hd, c), u);
          y[static_cast<std::size_t>((n * C + hd * ch + c) * T + t)] = a / sum;
        }
      }
  return y;
}

Values ref_adaptive_pool(const Values& x, const Shape& s, int oh, int ow, bool max) {
  const Dims d(s);
  Values y(static_cast<std::size_t>(d.N * d.C * oh * ow));
  for (std::int64_t n = 0; n < d.N; ++n)
    for (std::int64_t c = 0; c < d.C; ++c)
      for (std::int64_t i = 0; i < oh; ++i)
        for (std::int64_t j = 0; j < ow; ++j) {
          const std::int64_t h0 = i * d.H / oh, h1 = ((i + 1) * d.H + oh - 1) / oh;
          const std::int64_t w0 = j * d.W / ow, w1 = ((j + 1) * d.W + ow - 1) / ow;
          double acc = max ? -1e300 : 0.0;
          for (std::int64_t h = h0; h < h1; ++h)
            for (std::int64_t w = w0; w < w1; ++w) {
              const double v = x[static_cast<std::size_t>(d.at(n, c, h, w))];
              acc = max ? std::max(acc, v) : acc + v;
            }
          y[static_cast<std::size_t>(((n * d.C + c) * oh + i) * ow + j)] =
              max ? acc : acc / static_cast<double>((h1 - h0) * (w1 - w0));
        }
  return y;
}

Values ref_timestep_embedding(const Values& t, int dim) {
  const int half = dim / 2;
  Values y(t.size() * static_cast<std::size_t>(dim), 0.0);
  for (std::size_t n = 0; n < t.size(); ++n)
    for (int i = 0; i < half; ++i) {
      const double f = std::exp(-std::log(10000.0) * i / half);
      y[n * static_cast<std::size_t>(dim) + static_cast<std::size_t>(i)] = std::cos(t[n] * f);
      y[n * static_cast<std::size_t>(dim) + static_cast<std::size_t>(half + i)] = std::sin(t[n] * f);
    }
  return y;
}

Values ref_resample(const Values& x, const Shape& s, bool up) {
  const Dims d(s);
  const std::int64_t Ho = up ? 2 * d.H : d.H / 2, Wo = up ? 2 * d.W : d.W / 2;
  Values y(static_cast<std::size_t>(d.N * d.C * Ho * Wo));
  for (std::int64_t n = 0; n < d.N; ++n)
    for (std::int64_t c = 0; c < d.C; ++c)
      for (std::int64_t i = 0; i < Ho; ++i)
        for (std::int64_t j = 0; j < Wo; ++j) {
          double v;
          if (up) {
            v = x[static_cast<std::size_t>(d.at(n, c, i / 2, j / 2))];
          } else {
            v = 0.25 * (x[static_cast<std::size_t>(d.at(n, c, 2 * i, 2 * j))] +
                        x[static_cast<std::size_t>(d.at(n, c, 2 * i, 2 * j + 1))] +
                        x[static_cast<std::size_t>(d.at(n, c, 2 * i + 1, 2 * j))] +
                        x[static_cast<std::size_t>(d.at(n, c, 2 * i + 1, 2 * j + 1))]);
          }
          y[static_cast<std::size_t>(((n * d.C + c) * Ho + i) * Wo + j)] = v;
        }
  return y;
}

// ---- the table ----------------------------------------------------------------------------------

// The int8 rows' input quantisation: per image (false, the default) or one calibrated scale.
bool g_int8_calibrated = false;

enum class Gen { Signed, Weight, Gamma, Small, Timestep };

struct Input {
  Shape shape;
  Gen gen = Gen::Signed;
  bool image = false;  // an activation: stored in the case's layout
};

struct OpCase {
  std::string name;
  OpKind op;
  bool reduced_precision = false;  // also run in bf16 and fp16 (the ops whose ctx.precision matters)
  Layout layout = Layout::NHWC;
  std::vector<Input> inputs;
  std::function<Tensor(const std::vector<Tensor>&, const ExecContext&)> run;
  std::function<Values(const std::vector<Values>&)> reference;
};

std::string shape_name(const Shape& s) {
  std::string out;
  for (int i = 0; i < s.rank(); ++i) {
    if (i) out += 'x';
    out += std::to_string(s[i]);
  }
  return out;
}

std::vector<OpCase> make_cases() {
  std::vector<OpCase> cases;
  // Convolutions: 3x3 stride 1 and 2, 1x1; channel counts that are not multiples of any vector
  // width, odd and tiny maps, both layouts, with and without a residual.
  struct ConvRow {
    Shape x;
    int O, k, stride;
    bool residual;
    Layout layout;
  };
  for (const ConvRow& r : std::vector<ConvRow>{{{2, 5, 9, 7}, 6, 3, 1, false, Layout::NHWC},
                                               {{1, 3, 1, 1}, 4, 3, 1, false, Layout::NHWC},
                                               {{2, 8, 7, 9}, 8, 3, 2, false, Layout::Contiguous},
                                               {{1, 16, 6, 6}, 16, 3, 2, false, Layout::NHWC},
                                               {{2, 12, 5, 5}, 7, 1, 1, true, Layout::NHWC},
                                               {{1, 32, 4, 4}, 48, 3, 1, true, Layout::NHWC},
                                               {{3, 6, 8, 8}, 6, 3, 1, true, Layout::Contiguous},
                                               {{1, 64, 2, 2}, 96, 3, 1, false, Layout::NHWC}}) {
    const int C = static_cast<int>(r.x[1]);
    const int pad = r.k / 2;
    const Shape y{r.x[0], r.O, (r.x[2] + 2 * pad - r.k) / r.stride + 1,
                  (r.x[3] + 2 * pad - r.k) / r.stride + 1};
    OpCase c;
    c.name = "conv2d_" + std::to_string(r.k) + "x" + std::to_string(r.k) + "_s" + std::to_string(r.stride) +
             "_" + shape_name(r.x) + "_to" + std::to_string(r.O) + (r.residual ? "_res" : "") +
             (r.layout == Layout::NHWC ? "_nhwc" : "_nchw");
    c.op = OpKind::Conv2d;
    c.reduced_precision = true;
    c.layout = r.layout;
    c.inputs = {{r.x, Gen::Signed, true}, {{r.O, C, r.k, r.k}, Gen::Weight}, {{r.O}, Gen::Small}};
    if (r.residual) c.inputs.push_back({y, Gen::Signed, true});
    const int stride = r.stride;
    const bool residual = r.residual;
    const Shape xs = r.x, ws{r.O, C, r.k, r.k};
    c.run = [stride, residual](const std::vector<Tensor>& in, const ExecContext& ctx) {
      const ops::Conv2d conv(in[1], in[2], {.stride = stride, .padding = static_cast<int>(in[1].dim(2) / 2)});
      if (g_int8_calibrated) {  // one scale for the whole batch: its largest |x| / 127
        float m = 0;
        for (const float v : in[0].to_vector()) m = std::max(m, std::fabs(v));
        conv.set_int8_input({ops::Int8Input::Mode::Calibrated, m / 127.0f});
      }
      return residual ? conv.forward_add(in[0], in[3], ctx) : conv.forward(in[0], ctx);
    };
    c.reference = [stride, residual, xs, ws](const std::vector<Values>& v) {
      return ref_conv(v[0], xs, v[1], ws, v[2], stride, residual ? &v[3] : nullptr);
    };
    cases.push_back(std::move(c));
  }
  // Linear: the timestep-embedding MLP's and ResBlocks' emb projection shapes, odd sizes.
  for (const auto& row : std::vector<std::tuple<int, int, int, bool>>{
           {1, 7, 5, false}, {3, 128, 512, true}, {2, 33, 65, false}, {5, 64, 1, true}}) {
    // Plain copies: the lambdas below capture them (clang 14 cannot capture structured bindings).
    const int N = std::get<0>(row), I = std::get<1>(row), O = std::get<2>(row);
    const bool act = std::get<3>(row);
    OpCase c;
    c.name = "linear_" + std::to_string(N) + "x" + std::to_string(I) + "_to" + std::to_string(O) +
             (act ? "_silu" : "");
    c.op = OpKind::Linear;
    c.reduced_precision = true;
    c.inputs = {{{N, I}}, {{O, I}, Gen::Weight}, {{O}, Gen::Small}};
    c.run = [act](const std::vector<Tensor>& in, const ExecContext& ctx) {
      return ops::Linear(in[1], in[2]).forward(in[0], ctx, act);
    };
    c.reference = [N, I, O, act](const std::vector<Values>& v) {
      return ref_linear(v[0], N, I, v[1], O, v[2], act);
    };
    cases.push_back(std::move(c));
  }
  // GroupNorm in every form the U-Net uses.
  struct GnRow {
    Shape x;
    int groups;
    bool silu, pre_bias, scale_shift, pool;
    Layout layout;
  };
  for (const GnRow& r :
       std::vector<GnRow>{{{2, 64, 5, 7}, 32, false, false, false, false, Layout::NHWC},
                          {{1, 96, 8, 8}, 32, true, false, false, false, Layout::Contiguous},
                          {{2, 64, 4, 6}, 32, true, true, false, false, Layout::NHWC},
                          {{3, 32, 3, 3}, 32, true, false, true, false, Layout::NHWC},
                          {{2, 64, 8, 6}, 32, true, false, false, true, Layout::NHWC},
                          {{1, 12, 4, 4}, 4, false, false, false, true, Layout::Contiguous}}) {
    const std::int64_t N = r.x[0], C = r.x[1];
    OpCase c;
    c.name = "group_norm_" + shape_name(r.x) + "_g" + std::to_string(r.groups) + (r.silu ? "_silu" : "") +
             (r.pre_bias ? "_prebias" : "") + (r.scale_shift ? "_scaleshift" : "") +
             (r.pool ? "_avgpool" : "") + (r.layout == Layout::NHWC ? "_nhwc" : "_nchw");
    c.op = r.pool ? OpKind::GroupNormAvgPool : OpKind::GroupNorm;
    c.layout = r.layout;
    c.inputs = {{r.x, Gen::Signed, true}, {{C}, Gen::Gamma}, {{C}, Gen::Small}};
    if (r.pre_bias) c.inputs.push_back({{N, C}});
    if (r.scale_shift) c.inputs.push_back({{N, 2 * C}, Gen::Small});
    c.run = [r](const std::vector<Tensor>& in, const ExecContext& ctx) {
      ops::GroupNormArgs a;
      a.groups = r.groups;
      a.silu = r.silu;
      a.avg_pool2x2 = r.pool;
      if (r.pre_bias) a.pre_bias = in[3];
      if (r.scale_shift) a.scale_shift = in[3];
      return ops::group_norm(in[0], in[1], in[2], a, ctx);
    };
    c.reference = [r](const std::vector<Values>& v) {
      return ref_group_norm(v[0], r.x, v[1], v[2], r.groups, r.pre_bias ? &v[3] : nullptr,
                            r.scale_shift ? &v[3] : nullptr, r.silu, r.pool);
    };
    cases.push_back(std::move(c));
  }
  // Attention: both channel orders, 1 to 4 heads, head sizes off the kernels' tile sizes, a map of
  // one position.
  struct AttRow {
    Shape qkv;
    int heads;
    ops::QkvOrder order;
    Layout layout;
  };
  for (const AttRow& r :
       std::vector<AttRow>{{{2, 3 * 64, 4, 4}, 4, ops::QkvOrder::Legacy, Layout::NHWC},
                           {{1, 3 * 48, 3, 5}, 2, ops::QkvOrder::Split, Layout::NHWC},
                           {{2, 3 * 20, 2, 3}, 1, ops::QkvOrder::Legacy, Layout::Contiguous},
                           {{1, 3 * 96, 1, 1}, 3, ops::QkvOrder::Split, Layout::NHWC},
                           {{1, 3 * 128, 8, 8}, 2, ops::QkvOrder::Split, Layout::Contiguous},
                           {{2, 3 * 42, 3, 3}, 2, ops::QkvOrder::Legacy, Layout::NHWC}}) {  // odd d, T
    OpCase c;
    c.name = std::string("attention_") + shape_name(r.qkv) + "_h" + std::to_string(r.heads) +
             (r.order == ops::QkvOrder::Legacy ? "_legacy" : "_split") +
             (r.layout == Layout::NHWC ? "_nhwc" : "_nchw");
    c.op = OpKind::Attention;
    c.reduced_precision = true;  // QK^T and PV in bf16 with the bf16 precision
    c.layout = r.layout;
    c.inputs = {{r.qkv, Gen::Signed, true}};
    c.run = [r](const std::vector<Tensor>& in, const ExecContext& ctx) {
      return ops::attention(in[0], r.heads, r.order, ctx);
    };
    c.reference = [r](const std::vector<Values>& v) { return ref_attention(v[0], r.qkv, r.heads, r.order); };
    cases.push_back(std::move(c));
  }
  // Elementwise and resampling ops, both layouts.
  for (const Layout layout : {Layout::NHWC, Layout::Contiguous}) {
    const std::string suffix = layout == Layout::NHWC ? "_nhwc" : "_nchw";
    const Shape s{2, 5, 6, 4};
    auto add_case = [&](std::string name, OpKind op, std::vector<Input> inputs,
                        std::function<Tensor(const std::vector<Tensor>&, const ExecContext&)> run,
                        std::function<Values(const std::vector<Values>&)> ref) {
      OpCase c;
      c.name = std::move(name) + suffix;
      c.op = op;
      c.layout = layout;
      c.inputs = std::move(inputs);
      c.run = std::move(run);
      c.reference = std::move(ref);
      cases.push_back(std::move(c));
    };
    add_case(
        "silu_" + shape_name(s), OpKind::Silu, {{s, Gen::Signed, true}},
        [](const std::vector<Tensor>& in, const ExecContext& ctx) { return ops::silu(in[0], ctx); },
        [](const std::vector<Values>& v) {
          Values y = v[0];
          for (auto& e : y) e = silu(e);
          return y;
        });
    add_case(
        "add_" + shape_name(s), OpKind::Add, {{s, Gen::Signed, true}, {s, Gen::Signed, true}},
        [](const std::vector<Tensor>& in, const ExecContext& ctx) { return ops::add(in[0], in[1], ctx); },
        [](const std::vector<Values>& v) {
          Values y = v[0];
          for (std::size_t i = 0; i < y.size(); ++i) y[i] += v[1][i];
          return y;
        });
    add_case(
        "avg_pool2x2_" + shape_name(s), OpKind::AvgPool2x2, {{s, Gen::Signed, true}},
        [](const std::vector<Tensor>& in, const ExecContext& ctx) { return ops::avg_pool2x2(in[0], ctx); },
        [s](const std::vector<Values>& v) { return ref_resample(v[0], s, false); });
    add_case(
        "upsample_nearest2x_" + shape_name(s), OpKind::UpsampleNearest2x, {{s, Gen::Signed, true}},
        [](const std::vector<Tensor>& in, const ExecContext& ctx) {
          return ops::upsample_nearest2x(in[0], ctx);
        },
        [s](const std::vector<Values>& v) { return ref_resample(v[0], s, true); });
    const Shape s2{2, 3, 6, 4};
    add_case(
        "concat_channels_" + shape_name(s) + "_" + shape_name(s2), OpKind::ConcatChannels,
        {{s, Gen::Signed, true}, {s2, Gen::Signed, true}},
        [](const std::vector<Tensor>& in, const ExecContext& ctx) {
          return ops::concat_channels(in[0], in[1], ctx);
        },
        [s, s2](const std::vector<Values>& v) {
          const Dims a(s), b(s2);
          Values y;
          for (std::int64_t n = 0; n < a.N; ++n) {
            y.insert(y.end(), v[0].begin() + n * a.C * a.H * a.W, v[0].begin() + (n + 1) * a.C * a.H * a.W);
            y.insert(y.end(), v[1].begin() + n * b.C * b.H * b.W, v[1].begin() + (n + 1) * b.C * b.H * b.W);
          }
          return y;
        });
    for (const auto& size : std::vector<std::pair<int, int>>{{1, 1}, {4, 3}, {5, 7}}) {
      const int oh = size.first, ow = size.second;
      const Shape p{2, 6, 10, 7};
      for (const bool max : {false, true})
        add_case(
            std::string(max ? "adaptive_max_pool2d_" : "adaptive_avg_pool2d_") + shape_name(p) + "_to" +
                std::to_string(oh) + "x" + std::to_string(ow),
            OpKind::AdaptivePool2d, {{p, Gen::Signed, true}},
            [oh, ow, max](const std::vector<Tensor>& in, const ExecContext& ctx) {
              return max ? ops::adaptive_max_pool2d(in[0], oh, ow, ctx)
                         : ops::adaptive_avg_pool2d(in[0], oh, ow, ctx);
            },
            [p, oh, ow, max](const std::vector<Values>& v) {
              return ref_adaptive_pool(v[0], p, oh, ow, max);
            });
    }
  }
  for (const int dim : {128, 7}) {
    OpCase c;
    c.name = "timestep_embedding_4_dim" + std::to_string(dim);
    c.op = OpKind::TimestepEmbedding;
    c.inputs = {{{4}, Gen::Timestep}};
    c.run = [dim](const std::vector<Tensor>& in, const ExecContext& ctx) {
      return ops::timestep_embedding(in[0], dim, ctx);
    };
    c.reference = [dim](const std::vector<Values>& v) { return ref_timestep_embedding(v[0], dim); };
    cases.push_back(std::move(c));
  }
  return cases;
}

const std::vector<OpCase>& cases() {
  static const std::vector<OpCase> all = make_cases();
  return all;
}

// ---- the driver ---------------------------------------------------------------------------------

// The worst relative error (relative_error.hpp) accepted per precision. fp32 differs from double
// by summation order only; bf16 and fp16 round the convolution's/matmul's operands.
double tolerance(Precision p) {
  switch (p) {
    case Precision::FP32: return 1e-4;
    case Precision::BF16: return 3e-2;
    case Precision::FP16: return 5e-3;
    case Precision::INT8: return 2e-2;  // s8 inputs and weights: steps of max / 127 each
  }
  return 0;
}

// With bf16 activations (ExecContext::activations) the image operands are bf16 and so is every
// activation an op writes: the reference is computed from the bf16 inputs' exact values, so what
// is measured is the op's own rounding (its output to bf16: 2^-9 relative) and its arithmetic.
double tolerance(Precision p, DType activations) {
  if (activations == DType::BF16) return p == Precision::FP32 ? 8e-3 : p == Precision::INT8 ? 2e-2 : 3e-2;
  return tolerance(p);
}

struct Row {
  std::size_t case_index;
  DeviceType device;
  Precision precision;
  DType activations = DType::F32;
  bool int8_calibrated = false;
};

// Ops whose operands include an activation (every op but linear and the timestep embedding).
bool reads_activations(const OpCase& c) {
  for (const Input& in : c.inputs)
    if (in.image) return true;
  return false;
}

std::vector<Row> rows() {
  std::vector<Row> out;
  for (std::size_t i = 0; i < cases().size(); ++i)
    for (const DeviceType d : {DeviceType::CPU, DeviceType::CUDA}) {
      for (const Precision p : {Precision::FP32, Precision::BF16, Precision::FP16})
        if (p == Precision::FP32 || cases()[i].reduced_precision) out.push_back({i, d, p});
      if (!reads_activations(cases()[i])) continue;
      // bf16 activations: convolutions compute in bf16 (oneDNN's fp32 ones write f32 only), the
      // others in fp32, attention in both.
      const OpKind op = cases()[i].op;
      if (op != OpKind::Conv2d) out.push_back({i, d, Precision::FP32, DType::BF16});
      if (op == OpKind::Conv2d || op == OpKind::Attention)
        out.push_back({i, d, Precision::BF16, DType::BF16});
      if (op == OpKind::Conv2d)  // int8: per-image and calibrated input scales, f32 and bf16 out
        for (const DType a : {DType::F32, DType::BF16})
          for (const bool calibrated : {false, true}) out.push_back({i, d, Precision::INT8, a, calibrated});
    }
  return out;
}

std::vector<Tensor> make_inputs(const OpCase& c, DType activations, std::vector<Values>& as_double) {
  std::mt19937 rng(static_cast<unsigned>(std::hash<std::string>{}(c.name) & 0xffffffffu));
  std::vector<Tensor> host;
  for (const Input& in : c.inputs) {
    const std::int64_t n = in.shape.numel();
    double fan_in = 1;
    for (int i = 1; i < in.shape.rank(); ++i) fan_in *= static_cast<double>(in.shape[i]);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& e : v) {
      const float r = u(rng);
      switch (in.gen) {
        case Gen::Signed: e = 2.0f * r; break;
        case Gen::Weight: e = r * static_cast<float>(std::sqrt(3.0 / fan_in)); break;
        case Gen::Gamma: e = 1.0f + 0.3f * r; break;
        case Gen::Small: e = 0.3f * r; break;
        case Gen::Timestep: e = 500.0f * (r + 1.0f); break;
      }
    }
    const bool bf16 = in.image && activations == DType::BF16;
    if (bf16)  // the reference sees exactly the values the op reads
      for (auto& e : v) e = bf16_to_float(float_to_bf16(e));
    as_double.emplace_back(v.begin(), v.end());
    Tensor t = Tensor::from_vector(in.shape, v);
    if (in.image && c.layout == Layout::NHWC) t = t.to_layout(Layout::NHWC);
    host.push_back(bf16 ? t.to_dtype(DType::BF16) : t);
  }
  return host;
}

std::vector<Tensor> on_device(const std::vector<Tensor>& host, Device device) {
  std::vector<Tensor> out;
  for (const Tensor& t : host) out.push_back(device.is_cpu() ? t : t.to_device(device));
  return out;
}

Tensor to_host(const Tensor& t) { return t.device().is_cpu() ? t : t.to_device(Device::cpu()); }

class BackendOps : public ::testing::TestWithParam<Row> {};

TEST_P(BackendOps, MatchesDoubleReferenceAndCpu) {
  const Row row = GetParam();
  const OpCase& c = cases()[row.case_index];
  const Device device = row.device == DeviceType::CPU ? Device::cpu() : Device::cuda(0);
  ops::detail::Backend* backend = ops::detail::registry_slot(row.device);
  if (!backend) GTEST_SKIP() << "no backend for " << device.str() << " in this build";
  if (backend->device_count() < 1) GTEST_SKIP() << "the " << backend->name() << " backend sees no device";

  std::vector<Values> in_double;
  const std::vector<Tensor> host = make_inputs(c, row.activations, in_double);
  const Values ref = c.reference(in_double);

  ExecContext ctx;
  ctx.device = device;
  ctx.precision = row.precision;
  ctx.activations = row.activations;
  g_int8_calibrated = row.int8_calibrated;
  Tensor y;
  try {
    y = to_host(c.run(on_device(host, device), ctx));
  } catch (const UnsupportedError& e) {
    // A precision the hardware lacks (bf16 on a CPU without AVX512-BF16, fp16 on any CPU) is
    // refused with this typed error; that is the documented behaviour, not a pass.
    GTEST_SKIP() << backend->name() << " refuses " << precision_name(row.precision) << " with "
                 << dtype_name(row.activations) << " activations here: " << e.what();
  }
  ASSERT_EQ(y.layout(), c.inputs[0].image ? c.layout : y.layout()) << "the output keeps the input's layout";
  // Activations come out in the context's dtype; pooled features and the others in f32.
  const bool writes_activation = reads_activations(c) && c.op != OpKind::AdaptivePool2d;
  EXPECT_EQ(y.dtype(), writes_activation ? row.activations : DType::F32);
  const double tol = tolerance(row.precision, row.activations);
  const double err = worst_relative_error(y, ref);
  EXPECT_LE(err, tol) << c.name << " on " << backend->name() << " in " << precision_name(row.precision);
  if (row.precision == Precision::INT8) {
    EXPECT_GT(err, 0.0) << "int8 rounding must show";
  }
  RecordProperty("worst_relative_error", std::to_string(err));

  if (device.is_cpu() && cpu::simd::use_avx512()) {  // the portable kernels too (CPUs without AVX-512)
    const bool was = cpu::simd::set_avx512_allowed(false);
    const Tensor portable = c.run(host, ctx);
    cpu::simd::set_avx512_allowed(was);
    EXPECT_EQ(portable.dtype(), y.dtype());
    EXPECT_LE(worst_relative_error(portable, ref), tol) << c.name << ": the portable kernels";
  }
  if (!device.is_cpu()) {  // the same case on the CPU: the two backends agree
    ExecContext cpu_ctx;
    cpu_ctx.activations = row.activations;
    cpu_ctx.precision = row.activations == DType::F32 ? Precision::FP32 : row.precision;
    const Tensor cpu = c.run(host, cpu_ctx);
    EXPECT_LE(worst_relative_error(y, cpu), tol) << c.name << ": " << backend->name() << " vs cpu";
  }
}

std::string row_name(const ::testing::TestParamInfo<Row>& info) {
  const Row& r = info.param;
  return cases()[r.case_index].name + "_" + (r.device == DeviceType::CPU ? "cpu" : "cuda") + "_" +
         precision_name(r.precision) + (r.activations == DType::BF16 ? "_bf16act" : "") +
         (r.precision == Precision::INT8 ? (r.int8_calibrated ? "_calibrated" : "_perimage") : "");
}

INSTANTIATE_TEST_SUITE_P(Table, BackendOps, ::testing::ValuesIn(rows()), row_name);

// ---- the registry -------------------------------------------------------------------------------

TEST(BackendRegistry, CpuIsAlwaysRegisteredAndSupportsEveryOp) {
  ops::detail::Backend* cpu = ops::detail::registry_slot(DeviceType::CPU);
  ASSERT_NE(cpu, nullptr);
  EXPECT_STREQ(cpu->name(), "cpu");
  EXPECT_EQ(cpu->device_count(), 1);
  EXPECT_EQ(&ops::detail::backend_for(Device::cpu(), "test"), cpu);
  for (int op = 0; op <= static_cast<int>(OpKind::TimestepEmbedding); ++op)
    EXPECT_TRUE(cpu->supports(static_cast<OpKind>(op))) << ops::detail::op_name(static_cast<OpKind>(op));
  // Registering it again is a no-op; replacing it is refused.
  EXPECT_NO_THROW(ops::detail::register_backend(DeviceType::CPU, *cpu));
  ops::detail::Backend* cuda = ops::detail::registry_slot(DeviceType::CUDA);
  if (cuda) {
    EXPECT_THROW(ops::detail::register_backend(DeviceType::CPU, *cuda), ArgumentError);
  }
}

TEST(BackendRegistry, CudaIsRegisteredExactlyWhenLinked) {
  ops::detail::Backend* cuda = ops::detail::registry_slot(DeviceType::CUDA);
#ifdef DIFFPROBE_HAVE_CUDA_BACKEND
  // Linking diffprobe::cuda registers it, with or without a GPU (no CUDA call is made).
  ASSERT_NE(cuda, nullptr);
  EXPECT_STREQ(cuda->name(), "cuda");
  EXPECT_EQ(cuda->device_count(), cuda_device_count());
  EXPECT_FALSE(cuda->supports(OpKind::GroupNormAvgPool));  // run as group_norm, then avg_pool2x2
  EXPECT_TRUE(cuda->supports(OpKind::Conv2d));
  EXPECT_NO_THROW(ops::detail::register_backend(DeviceType::CUDA, *cuda));
  EXPECT_THROW(ops::detail::register_backend(DeviceType::CUDA, *ops::detail::registry_slot(DeviceType::CPU)),
               ArgumentError);
#else
  EXPECT_EQ(cuda, nullptr);
  EXPECT_THROW(ops::detail::backend_for(Device::cuda(0), "test"), DeviceError);
  EXPECT_THROW((void)Tensor::zeros(Shape{2}).to_device(Device::cuda(0)), DeviceError);
#endif
}

}  // namespace
}  // namespace diffprobe

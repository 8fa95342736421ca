#include "diffprobe/features/pooler.hpp"

#include "core/text.hpp"
#include "diffprobe/ops/elementwise.hpp"

namespace diffprobe {

PoolSpec PoolSpec::parse(const std::string& text) {
  PoolSpec s;
  if (text == "none") return {PoolKind::None, 0};
  if (text == "gap" || text == "global") return {PoolKind::GlobalAverage, 1};
  const auto colon = text.find(':');
  const std::string kind = text.substr(0, colon);
  if (colon == std::string::npos || (kind != "avg" && kind != "max"))
    throw ArgumentError("PoolSpec::parse",
                        "'" + text + "' is not a pooling (expected avg:P, max:P, gap or none)");
  const std::string p = text.substr(colon + 1);
  const auto size = detail::parse_integer(p, 1, 9999);
  if (!size) throw ArgumentError("PoolSpec::parse", "pool size '" + p + "' must be a positive integer");
  s.kind = kind == "avg" ? PoolKind::Average : PoolKind::Max;
  s.size = static_cast<int>(*size);
  return s;
}

std::string PoolSpec::str() const {
  switch (kind) {
    case PoolKind::Average: return "avg:" + std::to_string(size);
    case PoolKind::Max: return "max:" + std::to_string(size);
    case PoolKind::GlobalAverage: return "gap";
    case PoolKind::None: return "none";
  }
  return "?";
}

Pooler::Pooler(PoolSpec spec) : spec_(spec) {
  if ((spec.kind == PoolKind::Average || spec.kind == PoolKind::Max) && spec.size < 1)
    throw ArgumentError("Pooler", "pool size must be >= 1, got " + std::to_string(spec.size));
}

Shape Pooler::pooled_shape(const Shape& s) const {
  if (s.rank() != 4) throw ShapeError("Pooler", "features must be [N, C, H, W], got " + s.str());
  switch (spec_.kind) {
    case PoolKind::Average:
    case PoolKind::Max:
      if (spec_.size > s[2] || spec_.size > s[3])
        throw ArgumentError("Pooler", "pool size " + std::to_string(spec_.size) +
                                          " exceeds the feature map " + std::to_string(s[2]) + "x" +
                                          std::to_string(s[3]));
      return {s[0], s[1], spec_.size, spec_.size};
    case PoolKind::GlobalAverage: return {s[0], s[1], 1, 1};
    case PoolKind::None: return s;
  }
  return s;
}

Tensor Pooler::pool(const Tensor& x, const ExecContext& ctx) const {
  if (!x.defined()) throw ArgumentError("Pooler", "features are undefined");
  const Shape out = pooled_shape(x.shape());
  ExecContext c = ctx;
  c.device = x.device();  // pool where the features are
  Tensor p;
  switch (spec_.kind) {
    case PoolKind::Average: p = ops::adaptive_avg_pool2d(x, spec_.size, spec_.size, c); break;
    case PoolKind::Max: p = ops::adaptive_max_pool2d(x, spec_.size, spec_.size, c); break;
    case PoolKind::GlobalAverage: p = ops::adaptive_avg_pool2d(x, 1, 1, c); break;
    case PoolKind::None: p = x; break;
  }
  if (!p.device().is_cpu()) p = p.to_device(Device::cpu());
  if (p.layout() != Layout::Contiguous) p = p.to_layout(Layout::Contiguous);
  if (p.shape() != out)
    throw ShapeError("Pooler", "internal: pooled shape " + p.shape().str() + " != " + out.str());
  return p;
}

Tensor Pooler::operator()(const Tensor& x, const ExecContext& ctx) const {
  Tensor p = pool(x, ctx);
  const Shape s = p.shape();
  return p.reshape({s[0], s[1] * s[2] * s[3]});
}

}  // namespace diffprobe

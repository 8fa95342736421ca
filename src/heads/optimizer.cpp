#include "heads/optimizer.hpp"

#include <cmath>

namespace diffprobe::heads {

Optimizer::Optimizer(const TrainConfig& c, std::vector<Param<float>*> params)
    : kind_(c.optimizer),
      momentum_(c.momentum),
      wd_(c.weight_decay),
      beta1_(c.beta1),
      beta2_(c.beta2),
      eps_(c.adam_eps),
      params_(std::move(params)) {
  const bool need_m = kind_ == OptimizerKind::AdamW || momentum_ > 0;
  for (auto* p : params_) {
    m_.emplace_back(need_m ? p->value.size() : 0, 0.0f);
    v_.emplace_back(kind_ == OptimizerKind::AdamW ? p->value.size() : 0, 0.0f);
  }
}

void Optimizer::step(double lr) {
  ++t_;
  for (std::size_t k = 0; k < params_.size(); ++k) {
    float* w = params_[k]->value.data();
    const float* g = params_[k]->grad.data();
    float* m = m_[k].data();
    float* v = v_[k].data();
    const std::int64_t n = params_[k]->numel();
    if (kind_ == OptimizerKind::SGD) {
      // PyTorch: d = g + wd * w; buf = momentum * buf + d (buf = d at the first step); w -= lr * buf.
      const float wd = static_cast<float>(wd_), mom = static_cast<float>(momentum_),
                  a = static_cast<float>(lr);
      const bool use_m = momentum_ > 0;
#pragma omp parallel for schedule(static) if (n >= (1 << 15))
      for (std::int64_t i = 0; i < n; ++i) {
        float d = g[i] + wd * w[i];
        if (use_m) {
          m[i] = mom * m[i] + d;
          d = m[i];
        }
        w[i] -= a * d;
      }
    } else {
      // PyTorch AdamW: w *= 1 - lr * wd; moments; w -= lr * mhat / (sqrt(vhat) + eps).
      const double bc1 = 1.0 - std::pow(beta1_, static_cast<double>(t_));
      const double bc2 = 1.0 - std::pow(beta2_, static_cast<double>(t_));
      const float decay = static_cast<float>(1.0 - lr * wd_), b1 = static_cast<float>(beta1_),
                  b2 = static_cast<float>(beta2_), step = static_cast<float>(lr / bc1),
                  sq2 = static_cast<float>(std::sqrt(bc2)), eps = static_cast<float>(eps_);
#pragma omp parallel for schedule(static) if (n >= (1 << 15))
      for (std::int64_t i = 0; i < n; ++i) {
        w[i] *= decay;
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        w[i] -= step * m[i] / (std::sqrt(v[i]) / sq2 + eps);
      }
    }
  }
}

}  // namespace diffprobe::heads

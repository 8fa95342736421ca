#pragma once
// SGD (momentum, weight decay) and AdamW with PyTorch's update rules, over float parameters.
#include <vector>

#include "diffprobe/heads/train_config.hpp"
#include "heads/layers.hpp"

namespace diffprobe::heads {

class Optimizer {
 public:
  /// Uses the optimiser fields of `config` (kind, momentum, weight_decay, betas, eps).
  Optimizer(const TrainConfig& config, std::vector<Param<float>*> params);
  /// One update with learning rate `lr` from the gradients now in the parameters.
  void step(double lr);
  long steps() const noexcept { return t_; }

 private:
  OptimizerKind kind_;
  double momentum_, wd_, beta1_, beta2_, eps_;
  std::vector<Param<float>*> params_;
  std::vector<std::vector<float>> m_, v_;  // SGD: momentum buffer in m_; AdamW: both moments
  long t_ = 0;
};

}  // namespace diffprobe::heads

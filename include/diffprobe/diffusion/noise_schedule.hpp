#pragma once
// The diffusion noise schedule of ADM.md §4, computed in float64 exactly as the official code
// does, with the q_sample coefficients cast to fp32 at the end.
#include <string>
#include <vector>

#include "diffprobe/core/tensor.hpp"
#include "diffprobe/model/unet_config.hpp"

namespace diffprobe {

class NoiseSchedule {
 public:
  /// kind: "linear" or "cosine"; steps T >= 1. ArgumentError otherwise.
  NoiseSchedule(const std::string& kind, int steps, bool rescale_timesteps = false);
  /// The schedule a model was trained with (noise_schedule, diffusion_steps, rescale_timesteps).
  static NoiseSchedule for_model(const UNetConfig& config);

  int steps() const noexcept { return static_cast<int>(betas_.size()); }
  const std::string& kind() const noexcept { return kind_; }
  const std::vector<double>& betas() const noexcept { return betas_; }
  const std::vector<double>& alphas_cumprod() const noexcept { return alphas_cumprod_; }
  /// sqrt(abar_t) and sqrt(1 - abar_t) as fp32 (the values the official q_sample multiplies by).
  float sqrt_alpha_bar(int t) const;
  float sqrt_one_minus_alpha_bar(int t) const;
  /// The timestep value the network receives: t, or t * 1000 / T with rescale_timesteps.
  float model_timestep(int t) const;

  /// x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, per sample (t: one step per sample).
  /// x0, eps: f32 [N, ...] of equal shape and layout.
  Tensor q_sample(const Tensor& x0, const std::vector<int>& t, const Tensor& eps) const;
  /// The same for one sample of n values at step t (what the extractor calls per sample).
  void q_sample(int t, const float* x0, const float* eps, float* out, std::int64_t n) const;

 private:
  void check_t(int t, const char* where) const;
  std::string kind_;
  bool rescale_;
  std::vector<double> betas_, alphas_cumprod_;
};

}  // namespace diffprobe

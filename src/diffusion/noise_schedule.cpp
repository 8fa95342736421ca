#include "diffprobe/diffusion/noise_schedule.hpp"

#include <cmath>
#include <numbers>

#include "diffprobe/core/error.hpp"

namespace diffprobe {

NoiseSchedule::NoiseSchedule(const std::string& kind, int steps, bool rescale_timesteps)
    : kind_(kind), rescale_(rescale_timesteps) {
  if (steps < 1) throw ArgumentError("NoiseSchedule", "steps must be >= 1, got " + std::to_string(steps));
  const auto T = static_cast<std::size_t>(steps);
  betas_.resize(T);
  if (kind == "linear") {
    // numpy.linspace(start, stop, T): start + i * step, the last element set to stop exactly.
    const double scale = 1000.0 / steps;
    const double start = scale * 0.0001, stop = scale * 0.02;
    if (T == 1) {
      betas_[0] = start;
    } else {
      const double step = (stop - start) / static_cast<double>(T - 1);
      for (std::size_t i = 0; i < T; ++i) betas_[i] = static_cast<double>(i) * step + start;
      betas_[T - 1] = stop;
    }
  } else if (kind == "cosine") {
    auto abar = [](double s) {
      const double c = std::cos((s + 0.008) / 1.008 * std::numbers::pi / 2);
      return c * c;
    };
    for (std::size_t i = 0; i < T; ++i) {
      const double t1 = static_cast<double>(i) / steps, t2 = static_cast<double>(i + 1) / steps;
      betas_[i] = std::min(1 - abar(t2) / abar(t1), 0.999);
    }
  } else {
    throw ArgumentError("NoiseSchedule", "unknown schedule '" + kind + "' (expected linear or cosine)");
  }
  alphas_cumprod_.resize(T);
  double acc = 1.0;
  for (std::size_t i = 0; i < T; ++i) {
    acc *= 1.0 - betas_[i];
    alphas_cumprod_[i] = acc;
  }
}

NoiseSchedule NoiseSchedule::for_model(const UNetConfig& c) {
  return NoiseSchedule(c.noise_schedule, c.diffusion_steps, c.rescale_timesteps);
}

void NoiseSchedule::check_t(int t, const char* where) const {
  if (t < 0 || t >= steps())
    throw ArgumentError(where,
                        "timestep " + std::to_string(t) + " outside [0, " + std::to_string(steps()) + ")");
}

float NoiseSchedule::sqrt_alpha_bar(int t) const {
  check_t(t, "NoiseSchedule::sqrt_alpha_bar");
  return static_cast<float>(std::sqrt(alphas_cumprod_[static_cast<std::size_t>(t)]));
}

float NoiseSchedule::sqrt_one_minus_alpha_bar(int t) const {
  check_t(t, "NoiseSchedule::sqrt_one_minus_alpha_bar");
  return static_cast<float>(std::sqrt(1.0 - alphas_cumprod_[static_cast<std::size_t>(t)]));
}

float NoiseSchedule::model_timestep(int t) const {
  check_t(t, "NoiseSchedule::model_timestep");
  // improved-diffusion: t.float() * (1000.0 / num_timesteps), in fp32.
  return rescale_ ? static_cast<float>(t) * static_cast<float>(1000.0 / steps()) : static_cast<float>(t);
}

Tensor NoiseSchedule::q_sample(const Tensor& x0, const std::vector<int>& t, const Tensor& eps) const {
  constexpr const char* where = "NoiseSchedule::q_sample";
  if (!x0.defined() || !eps.defined()) throw ArgumentError(where, "x0 and eps must be defined");
  if (x0.dtype() != DType::F32 || eps.dtype() != DType::F32)
    throw DTypeError(where, "x0 and eps must be f32");
  if (x0.shape() != eps.shape() || x0.layout() != eps.layout())
    throw ShapeError(where, "x0 " + x0.str() + " and eps " + eps.str() + " differ");
  if (!x0.device().is_cpu() || !eps.device().is_cpu()) throw DeviceError(where, "q_sample runs on the CPU");
  if (x0.rank() < 1 || static_cast<std::int64_t>(t.size()) != x0.dim(0))
    throw ShapeError(where, std::to_string(t.size()) + " timesteps for a batch of " + x0.shape().str());
  Tensor out = Tensor::empty(x0.shape(), DType::F32, x0.layout());
  const std::int64_t N = x0.dim(0), per = N ? x0.numel() / N : 0;
  const float* a = x0.data<float>();
  const float* e = eps.data<float>();
  float* o = out.data<float>();
  for (std::int64_t n = 0; n < N; ++n)
    q_sample(t[static_cast<std::size_t>(n)], a + n * per, e + n * per, o + n * per, per);
  return out;
}

void NoiseSchedule::q_sample(int t, const float* x0, const float* eps, float* out, std::int64_t n) const {
  const float ca = sqrt_alpha_bar(t), cb = sqrt_one_minus_alpha_bar(t);
  // Same association as torch: (ca * x0) + (cb * eps), each product rounded to fp32.
  for (std::int64_t i = 0; i < n; ++i) out[i] = ca * x0[i] + cb * eps[i];
}

}  // namespace diffprobe

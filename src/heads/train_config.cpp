#include "diffprobe/heads/train_config.hpp"

#include <cmath>
#include <numbers>
#include <string>
#include <string_view>

#include "diffprobe/core/error.hpp"

namespace diffprobe {

const char* optimizer_name(OptimizerKind k) noexcept { return k == OptimizerKind::SGD ? "sgd" : "adamw"; }

const char* schedule_name(ScheduleKind k) noexcept {
  switch (k) {
    case ScheduleKind::Constant: return "constant";
    case ScheduleKind::Step: return "step";
    case ScheduleKind::Cosine: return "cosine";
  }
  return "?";
}

OptimizerKind parse_optimizer(const char* name) {
  const std::string_view n = name ? name : "";
  if (n == "sgd") return OptimizerKind::SGD;
  if (n == "adamw") return OptimizerKind::AdamW;
  throw ConfigError("parse_optimizer", "unknown optimizer '" + std::string(n) + "' (sgd, adamw)");
}

ScheduleKind parse_schedule(const char* name) {
  const std::string_view n = name ? name : "";
  for (ScheduleKind k : {ScheduleKind::Constant, ScheduleKind::Step, ScheduleKind::Cosine})
    if (n == schedule_name(k)) return k;
  throw ConfigError("parse_schedule", "unknown schedule '" + std::string(n) + "' (constant, step, cosine)");
}

TrainConfig TrainConfig::paper_linear() {
  TrainConfig c;  // the defaults are this recipe; spelled out so they cannot drift apart
  c.optimizer = OptimizerKind::SGD;
  c.lr = 1e-2;
  c.momentum = 0.0;
  c.weight_decay = 0.0;
  c.epochs = 28;
  c.batch_size = 128;  // 32 per GPU x 4 GPUs
  c.schedule = ScheduleKind::Step;
  c.step_epochs = 7;
  c.step_gamma = 0.1;
  return c;
}

TrainConfig TrainConfig::paper_attention() {
  TrainConfig c = paper_linear();
  c.lr = 5e-2;
  return c;
}

void TrainConfig::validate() const {
  auto require = [](bool ok, const std::string& why) {
    if (!ok) throw ConfigError("TrainConfig", why);
  };
  require(std::isfinite(lr) && lr > 0, "lr must be > 0, got " + std::to_string(lr));
  require(momentum >= 0 && momentum < 1, "momentum must be in [0, 1)");
  require(weight_decay >= 0 && std::isfinite(weight_decay), "weight_decay must be >= 0");
  require(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "AdamW betas must be in [0, 1)");
  require(adam_eps > 0, "adam_eps must be > 0");
  require(epochs >= 1, "epochs must be >= 1, got " + std::to_string(epochs));
  require(batch_size >= 1, "batch_size must be >= 1, got " + std::to_string(batch_size));
  require(step_epochs >= 1, "step_epochs must be >= 1");
  require(step_gamma > 0 && step_gamma <= 1, "step_gamma must be in (0, 1]");
  require(min_lr >= 0 && min_lr <= lr, "min_lr must be in [0, lr]");
  require(warmup_epochs >= 0 && warmup_epochs < epochs, "warmup_epochs must be in [0, epochs)");
  require(val_fraction >= 0 && val_fraction < 1, "val_fraction must be in [0, 1)");
  require(patience >= 0, "patience must be >= 0");
  require(patience == 0 || val_fraction > 0, "early stopping (patience > 0) needs val_fraction > 0");
  require(copies >= 1, "copies must be >= 1, got " + std::to_string(copies));
}

double learning_rate_at(const TrainConfig& c, int epoch, int step, int steps_per_epoch) {
  if (steps_per_epoch < 1 || epoch < 0 || step < 0 || step >= steps_per_epoch)
    throw ArgumentError("learning_rate_at", "step " + std::to_string(step) + " of epoch " +
                                                std::to_string(epoch) + " with " +
                                                std::to_string(steps_per_epoch) + " steps per epoch");
  const double global = static_cast<double>(epoch) * steps_per_epoch + step;
  const double warm = static_cast<double>(c.warmup_epochs) * steps_per_epoch;
  double lr = c.lr;
  switch (c.schedule) {
    case ScheduleKind::Constant: break;
    case ScheduleKind::Step: lr = c.lr * std::pow(c.step_gamma, epoch / c.step_epochs); break;
    case ScheduleKind::Cosine: {
      const double total = static_cast<double>(c.epochs) * steps_per_epoch;
      if (global >= warm) {
        const double p = std::min(1.0, (global - warm) / std::max(1.0, total - warm));
        lr = c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
      }
      break;
    }
  }
  if (global < warm) lr *= (global + 1.0) / warm;
  return lr;
}

}  // namespace diffprobe

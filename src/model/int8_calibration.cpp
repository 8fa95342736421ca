#include "diffprobe/model/int8_calibration.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cpu/quantize.hpp"
#include "diffprobe/core/error.hpp"
#include "diffprobe/core/threads.hpp"
#include "diffprobe/model/unet.hpp"
#include "io/atomic_file.hpp"
#include "ops/backend.hpp"

namespace diffprobe {
namespace {

constexpr const char* kFormat = "diffprobe.int8_calibration";
constexpr int kVersion = 1;

}  // namespace

const char* int8_scale_method_name(Int8ScaleMethod m) noexcept {
  switch (m) {
    case Int8ScaleMethod::Max: return "max";
    case Int8ScaleMethod::Mean: return "mean";
  }
  return "?";
}

Int8ScaleMethod parse_int8_scale_method(const std::string& text) {
  if (text == "max") return Int8ScaleMethod::Max;
  if (text == "mean") return Int8ScaleMethod::Mean;
  throw ArgumentError("parse_int8_scale_method",
                      "unknown scale method '" + text + "' (expected max or mean)");
}

// ---- the file ---------------------------------------------------------------------------------

std::string Int8Calibration::to_json() const {
  nlohmann::ordered_json j;
  j["format"] = kFormat;
  j["format_version"] = kVersion;
  j["method"] = int8_scale_method_name(method);
  j["images"] = images;
  j["timesteps"] = timesteps;
  j["weights_sha256"] = weights_sha256;
  j["config"] = config_json.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json::parse(config_json);
  nlohmann::ordered_json s = nlohmann::ordered_json::object();
  for (const auto& [name, scale] : scales) s[name] = scale;
  j["scales"] = s;
  return j.dump(2) + "\n";
}

Int8Calibration Int8Calibration::from_json(const std::string& text) {
  constexpr const char* where = "Int8Calibration";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(where, std::string("not JSON: ") + e.what());
  }
  if (!j.is_object()) throw FormatError(where, "the file is not a JSON object");
  const auto field = [&](const char* name) -> const nlohmann::json& {
    if (!j.contains(name)) throw FormatError(where, std::string("field '") + name + "' is missing");
    return j.at(name);
  };
  if (!field("format").is_string() || field("format").get<std::string>() != kFormat)
    throw FormatError(where,
                      std::string("field 'format' is not \"") + kFormat + "\": not an int8 calibration file");
  if (!field("format_version").is_number_integer() || field("format_version").get<std::int64_t>() != kVersion)
    throw FormatError(
        where, "unsupported format_version (this build reads version " + std::to_string(kVersion) + ")");
  Int8Calibration c;
  if (!field("method").is_string()) throw FormatError(where, "field 'method' must be a string");
  try {
    c.method = parse_int8_scale_method(field("method").get<std::string>());
  } catch (const ArgumentError& e) {
    throw FormatError(where, std::string("field 'method': ") + e.what());
  }
  if (!field("images").is_number_integer() || field("images").get<std::int64_t>() < 0)
    throw FormatError(where, "field 'images' must be a non-negative integer");
  c.images = field("images").get<std::int64_t>();
  if (!field("timesteps").is_array()) throw FormatError(where, "field 'timesteps' must be an array");
  for (const auto& t : field("timesteps")) {
    if (!t.is_number_integer() || t.get<std::int64_t>() < 0 || t.get<std::int64_t>() > 1000000)
      throw FormatError(where, "field 'timesteps' must hold non-negative integers");
    c.timesteps.push_back(static_cast<int>(t.get<std::int64_t>()));
  }
  if (!field("weights_sha256").is_string())
    throw FormatError(where, "field 'weights_sha256' must be a string");
  c.weights_sha256 = field("weights_sha256").get<std::string>();
  const auto& config = field("config");
  if (!config.is_null() && !config.is_object())
    throw FormatError(where, "field 'config' must be an object or null");
  if (config.is_object()) c.config_json = config.dump();
  const auto& scales = field("scales");
  if (!scales.is_object() || scales.empty())
    throw FormatError(where, "field 'scales' must be a non-empty object");
  for (const auto& [name, v] : scales.items()) {
    // A scale outside [1e-30, 1e30] would make 1/scale overflow or the codes meaningless.
    if (!v.is_number() || !(v.get<double>() >= 1e-30 && v.get<double>() <= 1e30))
      throw FormatError(where, "the scale of '" + name + "' must be a number in [1e-30, 1e30]");
    c.scales[name] = v.get<float>();
  }
  return c;
}

void Int8Calibration::save(const std::filesystem::path& path) const {
  const std::string text = to_json();
  io::detail::AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

Int8Calibration Int8Calibration::load(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("Int8Calibration::load", "cannot open '" + path.string() + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) throw IoError("Int8Calibration::load", "cannot read '" + path.string() + "'");
  try {
    return from_json(ss.str());
  } catch (const FormatError& e) {
    throw FormatError("Int8Calibration::load", path.string() + ": " + e.what());
  }
}

// ---- the recorder -----------------------------------------------------------------------------

struct Int8CalibrationRecorder::State final : ops::detail::ConvInputObserver {
  const UNet* model = nullptr;
  std::vector<std::pair<std::string, ops::Conv2d>> convs;  // the int8 convolutions
  std::map<const ops::detail::OpCache*, std::string> name_of;
  mutable std::mutex mu;
  std::map<std::string, std::vector<float>> maxima;  // per convolution, per image seen
  bool non_finite = false;
  std::string non_finite_at;

  void observe(const ops::Conv2d& op, const Tensor& x) override {
    const auto it = name_of.find(&ops::detail::ConvAccess::cache(op));
    if (it == name_of.end()) return;
    const Tensor host = x.device().is_cpu() ? x : x.to_device(Device::cpu());
    const std::vector<float> m = cpu::image_max_abs(host, default_threads());
    std::lock_guard lock(mu);
    for (const float v : m)
      if (!std::isfinite(v) && !non_finite) {
        non_finite = true;
        non_finite_at = it->second;
      }
    auto& list = maxima[it->second];
    list.insert(list.end(), m.begin(), m.end());
  }
};

Int8CalibrationRecorder::Int8CalibrationRecorder(const UNet& model) : state_(std::make_unique<State>()) {
  if (model.mark_recording(true))
    throw ArgumentError("Int8CalibrationRecorder", "this model already has a recorder attached");
  state_->model = &model;
  state_->convs = model.int8_ops();
  for (const auto& [name, conv] : state_->convs)
    state_->name_of[&ops::detail::ConvAccess::cache(conv)] = name;
  for (const auto& [name, conv] : state_->convs)
    ops::detail::ConvAccess::cache(conv).observer.store(state_.get(), std::memory_order_release);
}

Int8CalibrationRecorder::~Int8CalibrationRecorder() {
  for (const auto& [name, conv] : state_->convs)
    ops::detail::ConvAccess::cache(conv).observer.store(nullptr, std::memory_order_release);
  (void)state_->model->mark_recording(false);
}

std::int64_t Int8CalibrationRecorder::images_seen() const {
  std::lock_guard lock(state_->mu);
  if (state_->convs.empty()) return 0;
  const auto it = state_->maxima.find(state_->convs.front().first);
  return it == state_->maxima.end() ? 0 : static_cast<std::int64_t>(it->second.size());
}

Int8Calibration Int8CalibrationRecorder::result(Int8ScaleMethod method) const {
  constexpr const char* where = "Int8CalibrationRecorder::result";
  std::lock_guard lock(state_->mu);
  if (state_->non_finite)
    throw NumericError(
        where, "the input of '" + state_->non_finite_at + "' held NaN or an infinity during calibration");
  if (state_->maxima.empty())
    throw ArgumentError(where, "no forward ran while recording: nothing to calibrate");
  Int8Calibration c;
  c.method = method;
  c.config_json = state_->model->config().to_json();
  for (const auto& [name, list] : state_->maxima) {
    double v = 0;
    if (method == Int8ScaleMethod::Max) {
      for (const float m : list) v = std::max(v, static_cast<double>(m));
    } else {
      for (const float m : list) v += m;
      v /= static_cast<double>(list.size());
    }
    c.scales[name] = cpu::int8_scale_for(static_cast<float>(v));
  }
  c.images = static_cast<std::int64_t>(state_->maxima.begin()->second.size());
  if (const auto it = state_->maxima.find(state_->convs.front().first); it != state_->maxima.end())
    c.images = static_cast<std::int64_t>(it->second.size());
  return c;
}

}  // namespace diffprobe

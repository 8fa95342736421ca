// FeatureMetadata (what a feature file records about how it was made), feature names, and the
// shared helpers of feature_file_common.hpp.
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/text.hpp"
#include "diffprobe/data/dataset.hpp"
#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/version.hpp"
#include "features/feature_file_common.hpp"
#include "features/sha256.hpp"

namespace diffprobe {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFormat = "diffprobe.features";
constexpr const char* kFormatVersion = "1";
const std::set<std::string> kReservedKeys = {
    "format",     "format_version", "weights_sha256", "config",  "timesteps",  "blocks", "pooling",
    "noise_seed", "noise_draws",    "preprocessing",  "library", "preprocess", "copies", "skipped_rows"};

template <class T> bool parse_number(std::string_view s, T& out) {
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty();
}

std::vector<int> parse_ints(const std::string& s, const std::string& key, const std::string& where) {
  std::vector<int> out;
  if (s.empty()) return out;
  for (const auto& part : detail::split(s)) {
    const auto v =
        detail::parse_integer(part, std::numeric_limits<int>::min(), std::numeric_limits<int>::max());
    if (!v)
      throw FormatError(
          where, "feature file metadata '" + key + "' is not a comma-separated integer list: '" + s + "'");
    out.push_back(static_cast<int>(*v));
  }
  return out;
}

// 'skipped_rows': {"rows": [{"error": "...", "row": R}, ...]}, rows ascending and non-negative.
std::string skipped_rows_json(const std::vector<SkippedRow>& rows) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& k : rows) list.push_back({{"row", k.row}, {"error", k.error}});
  return nlohmann::json{{"rows", list}}.dump();
}

std::vector<SkippedRow> parse_skipped_rows(const std::string& text, const std::string& where) {
  std::vector<SkippedRow> out;
  if (text.empty()) return out;
  try {
    const auto j = nlohmann::json::parse(text);
    for (const auto& e : j.at("rows")) {
      SkippedRow r;
      const auto& row = e.at("row");
      if (!row.is_number_integer() || row.get<std::int64_t>() < 0)
        throw FormatError(where, "bad row " + row.dump());
      r.row = row.get<std::int64_t>();
      r.error = e.at("error").get<std::string>();
      if (!out.empty() && r.row <= out.back().row) throw FormatError(where, "rows not ascending");
      out.push_back(std::move(r));
    }
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(where, std::string("malformed metadata 'skipped_rows': ") + e.what());
  } catch (const FormatError& e) {
    throw FormatError(where, std::string("malformed metadata 'skipped_rows': ") + e.what());
  }
  return out;
}

}  // namespace

namespace detail {

std::string library_string() { return std::string("diffprobe ") + version(); }

CheckedTensors check_for_save(const std::vector<std::pair<std::string, Tensor>>& in, const char* where) {
  std::vector<std::pair<std::pair<int, int>, std::pair<std::string, Tensor>>> feats;
  std::optional<Tensor> labels;
  for (const auto& [name, t] : in) {
    if (!t.defined()) throw ArgumentError(where, "tensor '" + name + "' is undefined");
    if (name == "labels") {
      labels = t;
      continue;
    }
    feats.push_back({parse_feature_name(name), {name, t}});
  }
  if (feats.empty()) throw ArgumentError(where, "no features to save");
  std::sort(feats.begin(), feats.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (std::size_t i = 1; i < feats.size(); ++i)
    if (feats[i].first == feats[i - 1].first)
      throw ArgumentError(where, "feature '" + feats[i].second.first + "' given twice");
  const std::int64_t n = feats.front().second.second.rank() > 0 ? feats.front().second.second.dim(0) : -1;
  CheckedTensors out;
  for (auto& [key, item] : feats) {
    const Tensor& t = item.second;
    if (!is_floating(t.dtype()))
      throw DTypeError(
          where, "feature '" + item.first + "' must be floating, got " + std::string(dtype_name(t.dtype())));
    if (t.rank() < 1 || t.dim(0) != n)
      throw ShapeError(where, "feature '" + item.first + "' is " + t.shape().str() +
                                  "; every feature needs the same N = " + std::to_string(n) + " in dim 0");
    out.items.push_back(item);
  }
  if (labels) {
    if (labels->dtype() != DType::I64 && labels->dtype() != DType::I32)
      throw DTypeError(where, "labels must be i64, got " + std::string(dtype_name(labels->dtype())));
    if (labels->rank() != 1 || labels->dim(0) != n)
      throw ShapeError(where, "labels must be [" + std::to_string(n) + "], got " + labels->shape().str());
    out.items.push_back({"labels", *labels});
  }
  return out;
}

std::string list_names(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) {
    if (!s.empty()) s += ", ";
    s += n;
  }
  return s.empty() ? "none" : s;
}

}  // namespace detail

std::string feature_name(int t, int block) { return fmt::format("t{}.b{}", t, block); }

std::pair<int, int> parse_feature_name(const std::string& name) {
  const std::size_t dot = name.find(".b");
  int t = 0, b = 0;
  if (name.size() < 5 || name[0] != 't' || dot == std::string::npos ||
      !parse_number(std::string_view(name).substr(1, dot - 1), t) ||
      !parse_number(std::string_view(name).substr(dot + 2), b) || t < 0 || b < 0)
    throw ArgumentError("parse_feature_name", "'" + name + "' is not a feature name like 't90.b24'");
  return {t, b};
}

std::string file_sha256(const fs::path& path) { return detail::sha256_file_hex(path); }

FeatureMetadata FeatureMetadata::describe(const FeatureExtractor& fx, const fs::path& weights,
                                          const data::Dataset* dataset) {
  FeatureMetadata m;
  const auto& o = fx.options();
  if (!weights.empty()) m.weights_sha256 = file_sha256(weights);
  m.config_json = fx.model().config().to_json();
  m.timesteps = o.timesteps;
  m.blocks = o.blocks;
  m.pooling = o.pool ? o.pool->str() : "none";
  m.noise_seed = o.noise_seed;
  m.noise_draws = o.noise_draws;
  m.extra["noise_mode"] = o.noise == NoiseMode::Seeded ? "seeded"
                          : o.noise == NoiseMode::None ? "none"
                                                       : "given";
  m.extra["precision"] = precision_name(o.exec.precision);
  if (o.exec.precision == Precision::INT8) {
    // Which input scales: the features of another calibration are other features.
    if (const Int8Calibration* cal = fx.model().int8_calibration()) {
      detail::Sha256 h;
      h.update(cal->to_json());
      m.extra["int8_scales"] = "calibrated sha256:" + h.hex();
    } else {
      m.extra["int8_scales"] = "per-image";
    }
  }
  if (o.label) m.extra["class_label"] = std::to_string(*o.label);
  if (dataset) {
    m.preprocessing = dataset->describe();
    if (const auto t = dataset->transform()) m.preprocess = data::preprocess_name(t->preprocess);
  }
  m.library = detail::library_string();
  return m;
}

std::map<std::string, std::string> FeatureMetadata::to_strings() const {
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : extra) {
    if (kReservedKeys.count(k))
      throw ArgumentError("FeatureMetadata", "extra key '" + k + "' clashes with a standard key");
    m[k] = v;
  }
  m["format"] = kFormat;
  m["format_version"] = kFormatVersion;
  m["weights_sha256"] = weights_sha256;
  m["config"] = config_json;
  m["timesteps"] = detail::join(timesteps);
  m["blocks"] = detail::join(blocks);
  m["pooling"] = pooling;
  m["noise_seed"] = std::to_string(noise_seed);
  m["noise_draws"] = std::to_string(noise_draws);
  m["preprocessing"] = preprocessing;
  m["preprocess"] = preprocess;
  m["copies"] = std::to_string(copies);
  m["library"] = library.empty() ? detail::library_string() : library;
  if (!skipped_rows.empty()) m["skipped_rows"] = skipped_rows_json(skipped_rows);
  return m;
}

FeatureMetadata FeatureMetadata::from_strings(const std::map<std::string, std::string>& m,
                                              const std::string& where) {
  auto get = [&](const char* key) -> std::string {
    auto it = m.find(key);
    return it == m.end() ? std::string() : it->second;
  };
  const auto fmt_it = m.find("format");
  if (fmt_it == m.end() || fmt_it->second != kFormat)
    throw FormatError(where, "not a diffprobe feature file: metadata 'format' is " +
                                 (fmt_it == m.end() ? std::string("missing") : "'" + fmt_it->second + "'") +
                                 ", expected '" + kFormat + "'");
  if (get("format_version") != kFormatVersion)
    throw FormatError(where, "feature file format_version '" + get("format_version") +
                                 "' is not the supported '" + kFormatVersion +
                                 "' (written by another diffprobe version?)");
  FeatureMetadata f;
  f.weights_sha256 = get("weights_sha256");
  f.config_json = get("config");
  f.timesteps = parse_ints(get("timesteps"), "timesteps", where);
  f.blocks = parse_ints(get("blocks"), "blocks", where);
  f.pooling = m.count("pooling") ? get("pooling") : "none";
  if (m.count("noise_seed") && !parse_number(std::string_view(get("noise_seed")), f.noise_seed))
    throw FormatError(
        where, "feature file metadata 'noise_seed' is not an unsigned integer: '" + get("noise_seed") + "'");
  if (m.count("noise_draws") && !parse_number(std::string_view(get("noise_draws")), f.noise_draws))
    throw FormatError(where,
                      "feature file metadata 'noise_draws' is not an integer: '" + get("noise_draws") + "'");
  f.preprocessing = get("preprocessing");
  f.preprocess = get("preprocess");
  if (m.count("copies") && (!parse_number(std::string_view(get("copies")), f.copies) || f.copies < 1))
    throw FormatError(where,
                      "feature file metadata 'copies' is not a positive integer: '" + get("copies") + "'");
  f.library = get("library");
  f.skipped_rows = parse_skipped_rows(get("skipped_rows"), where);
  for (const auto& [k, v] : m)
    if (!kReservedKeys.count(k)) f.extra[k] = v;
  return f;
}

}  // namespace diffprobe

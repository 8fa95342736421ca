#include "diffprobe/features/feature_file.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/text.hpp"
#include "diffprobe/data/dataset.hpp"
#include "diffprobe/io/npy.hpp"
#include "diffprobe/io/safetensors.hpp"
#include "diffprobe/version.hpp"
#include "features/parts_check.hpp"
#include "features/sha256.hpp"
#include "io/atomic_file.hpp"
#include "io/safetensors_writer.hpp"

namespace diffprobe {
namespace fs = std::filesystem;
namespace {

using Json = nlohmann::ordered_json;

constexpr const char* kFormat = "diffprobe.features";
constexpr const char* kFormatVersion = "1";
constexpr const char* kPartialFormat = "diffprobe.features.partial";
const std::set<std::string> kReservedKeys = {
    "format",     "format_version", "weights_sha256", "config",  "timesteps",  "blocks", "pooling",
    "noise_seed", "noise_draws",    "preprocessing",  "library", "preprocess", "copies"};

std::string library_string() { return std::string("diffprobe ") + version(); }

// An integer of a progress record: JSON integers only, within int64 (nlohmann's get<int64_t>()
// static_casts a float, so 1e300 in a corrupt record was undefined behaviour).
std::int64_t record_int(const nlohmann::json& v, const std::string& where) {
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
    throw FormatError(where, "malformed progress record: " + v.dump() + " is out of range");
  if (!v.is_number_integer())
    throw FormatError(where, "malformed progress record: " + v.dump() + " is not an integer");
  return v.is_number_unsigned() ? static_cast<std::int64_t>(v.get<std::uint64_t>()) : v.get<std::int64_t>();
}

template <class T> bool parse_number(std::string_view s, T& out) {
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty();
}

std::string join_ints(const std::vector<int>& v) { return detail::join(v); }

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

// Checks a complete set of named tensors and orders them canonically: features by (t, block),
// then labels.
struct Checked {
  std::vector<std::pair<std::string, Tensor>> items;
};

Checked check_for_save(const std::vector<std::pair<std::string, Tensor>>& in, const char* where) {
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
  Checked out;
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

void save_checked(const fs::path& path, const Checked& c, const FeatureMetadata& metadata, DType store) {
  if (!is_floating(store))
    throw ArgumentError("save_features",
                        "features can be stored as f32, f16 or bf16, not " + std::string(dtype_name(store)));
  FeatureMetadata meta = metadata;
  if (meta.library.empty()) meta.library = library_string();
  const auto strings = meta.to_strings();
  std::vector<io::detail::SafetensorsEntry> entries;
  for (const auto& [name, t] : c.items)
    entries.push_back({name, name == "labels" ? DType::I64 : store, t.shape().vec()});
  io::detail::write_safetensors(path, strings, entries, [&](std::size_t i, io::detail::AtomicFile& f) {
    const Tensor t = io::detail::stored_copy(c.items[i].second, entries[i].dtype);
    f.write(t.raw(), t.nbytes());
  });
}

std::string list_names(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) {
    if (!s.empty()) s += ", ";
    s += n;
  }
  return s.empty() ? "none" : s;
}

}  // namespace

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
  m.extra["precision"] = precision_name(o.precision);
  if (o.label) m.extra["class_label"] = std::to_string(*o.label);
  if (dataset) {
    m.preprocessing = dataset->describe();
    if (const auto t = dataset->transform()) m.preprocess = data::preprocess_name(t->preprocess);
  }
  m.library = library_string();
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
  m["timesteps"] = join_ints(timesteps);
  m["blocks"] = join_ints(blocks);
  m["pooling"] = pooling;
  m["noise_seed"] = std::to_string(noise_seed);
  m["noise_draws"] = std::to_string(noise_draws);
  m["preprocessing"] = preprocessing;
  m["preprocess"] = preprocess;
  m["copies"] = std::to_string(copies);
  m["library"] = library.empty() ? library_string() : library;
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
  for (const auto& [k, v] : m)
    if (!kReservedKeys.count(k)) f.extra[k] = v;
  return f;
}

void save_features(const fs::path& path, const FeatureSet& features, const std::optional<Tensor>& labels,
                   const FeatureMetadata& metadata, DType store) {
  std::vector<std::pair<std::string, Tensor>> items;
  for (const auto& [key, t] : features.items()) items.push_back({feature_name(key.first, key.second), t});
  if (labels) items.push_back({"labels", *labels});
  save_checked(path, check_for_save(items, "save_features"), metadata, store);
}

void save_features(const fs::path& path, const io::NamedTensors& tensors, const FeatureMetadata& metadata,
                   DType store) {
  std::vector<std::pair<std::string, Tensor>> items(tensors.begin(), tensors.end());
  save_checked(path, check_for_save(items, "save_features"), metadata, store);
}

// ---- FeatureFile ----------------------------------------------------------------------------

FeatureFile FeatureFile::open(const fs::path& path) {
  const std::string where = path.string();
  std::error_code ec;
  if (!fs::exists(path, ec)) throw IoError(where, "no such feature file");
  FeatureFile f;
  f.path_ = path;
  f.tensors_ = io::load_safetensors(path);
  f.metadata_ = FeatureMetadata::from_strings(f.tensors_.metadata, where);
  const std::set<int> ts(f.metadata_.timesteps.begin(), f.metadata_.timesteps.end());
  const std::set<int> bs(f.metadata_.blocks.begin(), f.metadata_.blocks.end());
  std::int64_t n = -1;
  auto check_n = [&](const std::string& name, const Tensor& t) {
    if (t.rank() < 1) throw FormatError(where, "tensor '" + name + "' has no sample dimension");
    if (n < 0) n = t.dim(0);
    if (t.dim(0) != n)
      throw FormatError(where, "tensor '" + name + "' has " + std::to_string(t.dim(0)) + " samples, others " +
                                   std::to_string(n));
  };
  for (const auto& [name, t] : f.tensors_) {
    if (name == "labels") {
      if (t.dtype() != DType::I64 && t.dtype() != DType::I32)
        throw FormatError(where,
                          "labels must be integer, the file has " + std::string(dtype_name(t.dtype())));
      if (t.rank() != 1) throw FormatError(where, "labels must be [N], the file has " + t.shape().str());
      check_n(name, t);
      f.labels_ = t.dtype() == DType::I64 ? t : t.to_dtype(DType::I64);
      continue;
    }
    std::pair<int, int> tb;
    try {
      tb = parse_feature_name(name);
    } catch (const ArgumentError&) {
      throw FormatError(where, "tensor '" + name + "' is neither a feature 't{T}.b{B}' nor 'labels'");
    }
    if (!is_floating(t.dtype()))
      throw FormatError(where, "feature '" + name + "' must be floating, the file has " +
                                   std::string(dtype_name(t.dtype())));
    if ((!ts.empty() && !ts.count(tb.first)) || (!bs.empty() && !bs.count(tb.second)))
      throw FormatError(where, "feature '" + name + "' is not among the metadata's timesteps (" +
                                   join_ints(f.metadata_.timesteps) + ") and blocks (" +
                                   join_ints(f.metadata_.blocks) + ")");
    check_n(name, t);
    f.names_.push_back(name);
  }
  if (f.names_.empty()) throw FormatError(where, "the feature file holds no features");
  // A shard's part (extraction_job.hpp) holds any run of rows; the whole output holds copies x N.
  if (!f.metadata_.extra.count("part.rows") && n % f.metadata_.copies != 0)
    throw FormatError(where, fmt::format("{} rows are not {} copies of the same samples (metadata 'copies')",
                                         n, f.metadata_.copies));
  f.n_ = n;
  return f;
}

namespace detail {

std::map<std::string, std::string> check_parts(const std::vector<FeatureFile>& parts,
                                               const std::vector<fs::path>& paths) {
  auto part_key = [&](std::size_t i, const char* key) {
    const auto& extra = parts[i].metadata().extra;
    const auto it = extra.find(key);
    if (it == extra.end())
      throw FormatError(paths[i].string(),
                        std::string("not a part of a sharded extraction (no metadata '") + key + "')");
    return it->second;
  };
  auto without_parts = [](std::map<std::string, std::string> m) {
    for (auto it = m.begin(); it != m.end();) it = it->first.rfind("part.", 0) == 0 ? m.erase(it) : ++it;
    return m;
  };
  const auto base = without_parts(parts[0].metadata().to_strings());
  std::int64_t next = 0;
  const std::string total = part_key(0, "part.total_rows");
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const std::string shard = fmt::format("{}/{}", i, parts.size());
    if (part_key(i, "part.shard") != shard)
      throw FormatError(paths[i].string(), "is part " + part_key(i, "part.shard") + ", expected " + shard +
                                               " (give every part, in shard order)");
    if (part_key(i, "part.rows") != fmt::format("{},{}", next, next + parts[i].size()) ||
        part_key(i, "part.total_rows") != total)
      throw FormatError(paths[i].string(),
                        "its rows " + part_key(i, "part.rows") + " do not follow the previous part's");
    next += parts[i].size();
    if (without_parts(parts[i].metadata().to_strings()) != base)
      throw FormatError(paths[i].string(), "is a part of another extraction than " + paths[0].string());
    if (parts[i].names() != parts[0].names())
      throw FormatError(paths[i].string(), "holds other features than part 0");
  }
  if (std::to_string(next) != total)
    throw FormatError("FeatureFile::open_parts", fmt::format("the parts hold {} of {} rows", next, total));
  return base;
}

}  // namespace detail

FeatureFile FeatureFile::open_parts(const std::vector<fs::path>& paths) {
  const char* where = "FeatureFile::open_parts";
  if (paths.empty()) throw ArgumentError(where, "no parts given");
  std::vector<FeatureFile> parts;
  for (const auto& p : paths) parts.push_back(open(p));
  const auto base = detail::check_parts(parts, paths);
  std::int64_t next = 0;
  for (const auto& p : parts) next += p.size();
  io::NamedTensors all;
  all.metadata = base;
  for (const auto& [name, t0] : parts[0].tensors_) {
    auto shape = t0.shape().vec();
    shape[0] = next;
    Tensor t = Tensor::empty(Shape(shape), t0.dtype());
    std::int64_t row = 0;
    const std::size_t row_bytes =
        t0.nbytes() / static_cast<std::size_t>(std::max<std::int64_t>(1, t0.dim(0)));
    for (const auto& p : parts) {
      const Tensor& s = p.tensors_.at(name);
      std::memcpy(static_cast<char*>(t.raw()) + static_cast<std::size_t>(row) * row_bytes, s.raw(),
                  s.nbytes());
      row += s.dim(0);
    }
    all.set(name, std::move(t));
  }
  FeatureFile f;
  f.path_ = paths[0];
  f.tensors_ = std::move(all);
  f.metadata_ = FeatureMetadata::from_strings(f.tensors_.metadata, where);
  f.names_ = parts[0].names_;
  if (parts[0].labels_) f.labels_ = f.tensors_.at("labels");
  f.n_ = next;
  return f;
}

bool FeatureFile::contains(const std::string& name) const {
  return std::find(names_.begin(), names_.end(), name) != names_.end();
}

const Tensor& FeatureFile::feature(const std::string& name) const {
  if (!contains(name))
    throw ArgumentError("FeatureFile::feature", "no feature '" + name + "' in " + path_.string() +
                                                    " (available: " + list_names(names_) + ")");
  return tensors_.at(name);
}

FeatureSet FeatureFile::features() const {
  FeatureSet s;
  for (const auto& n : names_) {
    const auto [t, b] = parse_feature_name(n);
    s.set(t, b, tensors_.at(n));
  }
  return s;
}

std::optional<Tensor> FeatureFile::labels() const { return labels_; }

void FeatureFile::export_npy(const std::string& name, const fs::path& out) const {
  if (name == "labels") {
    if (!labels_) throw ArgumentError("FeatureFile::export_npy", path_.string() + " has no labels");
    io::save_npy(out, *labels_);
    return;
  }
  const Tensor& t = feature(name);
  io::save_npy(out, t.dtype() == DType::BF16 ? t.to_dtype(DType::F32) : t);
}

// ---- FeatureWriter --------------------------------------------------------------------------

FeatureWriter::FeatureWriter(const fs::path& path, FeatureMetadata metadata, FeatureWriterOptions options)
    : path_(path), metadata_(std::move(metadata)), options_(options) {
  const char* where = "FeatureWriter";
  if (options_.total < 1)
    throw ArgumentError(where, "total must be >= 1, got " + std::to_string(options_.total));
  if (options_.chunk_size < 1)
    throw ArgumentError(where, "chunk_size must be >= 1, got " + std::to_string(options_.chunk_size));
  if (!is_floating(options_.store))
    throw ArgumentError(
        where, "features can be stored as f32, f16 or bf16, not " + std::string(dtype_name(options_.store)));
  if (metadata_.library.empty()) metadata_.library = library_string();
  (void)metadata_.to_strings();  // refuses clashing extra keys now rather than at finish()
  num_chunks_ = (options_.total + options_.chunk_size - 1) / options_.chunk_size;
  done_.assign(static_cast<std::size_t>(num_chunks_), false);
  partial_ = path_;
  partial_ += ".partial";

  const fs::path progress = partial_ / "progress.json";
  std::error_code ec;
  if (fs::exists(progress, ec)) {
    const std::string pwhere = progress.string();
    Json j;
    try {
      std::ifstream in(progress);
      j = Json::parse(in);
    } catch (const Json::exception& e) {
      throw FormatError(pwhere, std::string("corrupt progress record (delete ") + partial_.string() +
                                    " to start over): " + e.what());
    }
    try {
      if (j.at("format").get<std::string>() != kPartialFormat)
        throw FormatError(pwhere, "not a feature-writer progress record");
      auto differs = [&](const std::string& what, const std::string& was, const std::string& now) {
        throw ConfigError(where, "cannot resume " + partial_.string() + ": it was started with " + what +
                                     " " + was + ", this run has " + now +
                                     " (delete the folder to start over)");
      };
      const auto total = record_int(j.at("total"), pwhere), chunk = record_int(j.at("chunk_size"), pwhere);
      if (total != options_.total) differs("total", std::to_string(total), std::to_string(options_.total));
      if (chunk != options_.chunk_size)
        differs("chunk_size", std::to_string(chunk), std::to_string(options_.chunk_size));
      if (j.at("labels").get<bool>() != options_.labels)
        differs("labels", j.at("labels").get<bool>() ? "on" : "off", options_.labels ? "on" : "off");
      const std::string store = j.at("store").get<std::string>();
      if (store != dtype_name(options_.store))
        differs("store", store, std::string(dtype_name(options_.store)));
      const auto was = j.at("metadata").get<std::map<std::string, std::string>>();
      const auto now = metadata_.to_strings();
      for (const auto& [k, v] : now) {
        auto it = was.find(k);
        if (it == was.end() || it->second != v)
          differs("metadata '" + k + "' =", it == was.end() ? "(absent)" : "'" + it->second + "'",
                  "'" + v + "'");
      }
      for (const auto& [k, v] : was)
        if (!now.count(k)) differs("metadata '" + k + "' =", "'" + v + "'", "(absent)");
      for (const auto& t : j.at("tensors")) {
        TensorInfo info;
        info.name = t.at("name").get<std::string>();
        info.dtype = parse_dtype(t.at("dtype").get<std::string>());
        for (const auto& d : t.at("sample_shape")) info.sample_shape.push_back(record_int(d, pwhere));
        tensors_.push_back(std::move(info));
      }
      for (const auto& c : j.at("done")) {
        const auto k = record_int(c, pwhere);
        if (k < 0 || k >= num_chunks_)
          throw FormatError(pwhere, "chunk " + std::to_string(k) + " out of range");
        // A chunk counts only if all its files survived.
        bool ok = true;
        for (const auto& info : tensors_) ok = ok && fs::exists(chunk_file(k, info.name), ec);
        done_[static_cast<std::size_t>(k)] = ok && !tensors_.empty();
      }
    } catch (const Json::exception& e) {
      throw FormatError(pwhere, std::string("malformed progress record (delete ") + partial_.string() +
                                    " to start over): " + e.what());
    }
  } else {
    fs::create_directories(partial_, ec);
    if (ec) throw IoError(partial_.string(), "cannot create the partial-results folder: " + ec.message());
    save_progress();
  }
}

std::pair<std::int64_t, std::int64_t> FeatureWriter::chunk_range(std::int64_t chunk) const {
  if (chunk < 0 || chunk >= num_chunks_)
    throw ArgumentError("FeatureWriter", "chunk " + std::to_string(chunk) + " is outside [0, " +
                                             std::to_string(num_chunks_) + ")");
  const std::int64_t b = chunk * options_.chunk_size;
  return {b, std::min(b + options_.chunk_size, options_.total)};
}

bool FeatureWriter::done(std::int64_t chunk) const {
  chunk_range(chunk);
  return done_[static_cast<std::size_t>(chunk)];
}

std::int64_t FeatureWriter::num_done() const { return std::count(done_.begin(), done_.end(), true); }

std::vector<std::int64_t> FeatureWriter::pending() const {
  std::vector<std::int64_t> p;
  for (std::int64_t c = 0; c < num_chunks_; ++c)
    if (!done_[static_cast<std::size_t>(c)]) p.push_back(c);
  return p;
}

fs::path FeatureWriter::chunk_file(std::int64_t chunk, const std::string& name) const {
  return partial_ / fmt::format("c{:06}.{}.npy", chunk, name);
}

void FeatureWriter::save_progress() const {
  Json j = Json::object();
  j["format"] = kPartialFormat;
  j["total"] = options_.total;
  j["chunk_size"] = options_.chunk_size;
  j["labels"] = options_.labels;
  j["store"] = std::string(dtype_name(options_.store));
  j["metadata"] = metadata_.to_strings();
  Json ts = Json::array();
  for (const auto& t : tensors_)
    ts.push_back(
        {{"name", t.name}, {"dtype", std::string(dtype_name(t.dtype))}, {"sample_shape", t.sample_shape}});
  j["tensors"] = std::move(ts);
  j["done"] = Json::array();
  for (std::int64_t c = 0; c < num_chunks_; ++c)
    if (done_[static_cast<std::size_t>(c)]) j["done"].push_back(c);
  const std::string text = j.dump(1);
  io::detail::AtomicFile f(partial_ / "progress.json");
  f.write(text.data(), text.size());
  f.commit();
}

void FeatureWriter::write(std::int64_t chunk, const FeatureSet& features,
                          const std::optional<Tensor>& labels) {
  const char* where = "FeatureWriter::write";
  const auto [begin, end] = chunk_range(chunk);
  const std::int64_t rows = end - begin;
  if (labels.has_value() != options_.labels)
    throw ArgumentError(where, options_.labels ? "labels are required (options.labels is on)"
                                               : "labels given, but options.labels is off");
  std::vector<std::pair<std::string, Tensor>> items;
  for (const auto& [key, t] : features.items()) items.push_back({feature_name(key.first, key.second), t});
  if (labels) items.push_back({"labels", *labels});
  const Checked c = check_for_save(items, where);
  std::vector<TensorInfo> infos;
  std::vector<Tensor> data;
  for (const auto& [name, t] : c.items) {
    if (t.dim(0) != rows)
      throw ShapeError(where, fmt::format("chunk {} holds samples [{}, {}) ({} rows), '{}' has {}", chunk,
                                          begin, end, rows, name, t.shape().str()));
    // NumPy has no bfloat16: such chunks are kept as f32 (exact).
    const DType dt = name == "labels" ? DType::I64 : t.dtype() == DType::BF16 ? DType::F32 : t.dtype();
    const auto dims = t.shape().vec();
    infos.push_back({name, dt, std::vector<std::int64_t>(dims.begin() + 1, dims.end())});
    data.push_back(io::detail::stored_copy(t, dt));
  }
  if (!tensors_.empty()) {
    std::vector<std::string> want, got;
    for (const auto& t : tensors_) want.push_back(t.name);
    for (const auto& t : infos) got.push_back(t.name);
    if (want != got)
      throw ArgumentError(where, "chunk " + std::to_string(chunk) + " holds " + list_names(got) +
                                     "; earlier chunks hold " + list_names(want));
    for (std::size_t i = 0; i < infos.size(); ++i) {
      if (infos[i].sample_shape != tensors_[i].sample_shape)
        throw ShapeError(where, fmt::format("'{}' per-sample shape [{}] differs from earlier chunks' [{}]",
                                            infos[i].name, fmt::join(infos[i].sample_shape, ", "),
                                            fmt::join(tensors_[i].sample_shape, ", ")));
      if (infos[i].dtype != tensors_[i].dtype)
        throw DTypeError(where, fmt::format("'{}' is {} but earlier chunks are {}", infos[i].name,
                                            dtype_name(infos[i].dtype), dtype_name(tensors_[i].dtype)));
    }
  }
  for (std::size_t i = 0; i < infos.size(); ++i) io::save_npy(chunk_file(chunk, infos[i].name), data[i]);
  if (tensors_.empty()) tensors_ = infos;
  done_[static_cast<std::size_t>(chunk)] = true;
  save_progress();  // last: a chunk counts only once every file of it is in place
}

void FeatureWriter::finish() {
  const auto missing = pending();
  if (!missing.empty()) {
    std::vector<std::int64_t> first(missing.begin(),
                                    missing.begin() + std::min<std::size_t>(missing.size(), 10));
    throw ArgumentError("FeatureWriter::finish",
                        fmt::format("{} of {} chunks are not written yet: {}{}", missing.size(), num_chunks_,
                                    fmt::join(first, ", "), missing.size() > first.size() ? ", ..." : ""));
  }
  std::vector<io::detail::SafetensorsEntry> entries;
  for (const auto& t : tensors_) {
    std::vector<std::int64_t> shape{options_.total};
    shape.insert(shape.end(), t.sample_shape.begin(), t.sample_shape.end());
    entries.push_back({t.name, t.name == "labels" ? DType::I64 : options_.store, shape});
  }
  const auto write_data = [&](std::size_t i, io::detail::AtomicFile& f) {
    const TensorInfo& info = tensors_[i];
    for (std::int64_t c = 0; c < num_chunks_; ++c) {
      const fs::path file = chunk_file(c, info.name);
      const Tensor t = io::load_npy(file);
      const auto [b, e] = chunk_range(c);
      std::vector<std::int64_t> want{e - b};
      want.insert(want.end(), info.sample_shape.begin(), info.sample_shape.end());
      if (t.dtype() != info.dtype || t.shape().vec() != want)
        throw FormatError(file.string(),
                          fmt::format("chunk file holds {} {}, expected {} [{}] (delete {} to start over)",
                                      dtype_name(t.dtype()), t.shape().str(), dtype_name(info.dtype),
                                      fmt::join(want, ", "), partial_.string()));
      const Tensor s = io::detail::stored_copy(t, entries[i].dtype);
      f.write(s.raw(), s.nbytes());
    }
  };
  if (options_.checksum_key.empty())
    io::detail::write_safetensors(path_, metadata_.to_strings(), entries, write_data);
  else
    io::detail::write_safetensors_with_checksum(path_, metadata_.to_strings(), options_.checksum_key, entries,
                                                write_data);
  std::error_code ec;
  fs::remove_all(partial_, ec);  // the final file is in place; a leftover folder is harmless
}

}  // namespace diffprobe

// FeatureWriter: resumable chunk-by-chunk writing of a feature file (PATH.partial/ with one .npy
// per tensor and chunk, and progress.json), assembled into PATH by finish().
#include <fmt/format.h>

#include <algorithm>
#include <fstream>

#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/io/npy.hpp"
#include "features/feature_file_common.hpp"
#include "features/writer_progress.hpp"
#include "io/atomic_file.hpp"
#include "io/safetensors_writer.hpp"

namespace diffprobe {
namespace fs = std::filesystem;

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
  if (metadata_.library.empty()) metadata_.library = detail::library_string();
  (void)metadata_.to_strings();  // refuses clashing extra keys now rather than at finish()
  num_chunks_ = (options_.total + options_.chunk_size - 1) / options_.chunk_size;
  done_.assign(static_cast<std::size_t>(num_chunks_), false);
  partial_ = path_;
  partial_ += ".partial";

  const fs::path progress = partial_ / "progress.json";
  std::error_code ec;
  if (fs::exists(progress, ec)) {
    std::ifstream in(progress, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string pwhere = progress.string();
    const auto p = detail::WriterProgress::from_json(text, pwhere, partial_.string());
    auto differs = [&](const std::string& what, const std::string& was, const std::string& now) {
      throw ConfigError(where, "cannot resume " + partial_.string() + ": it was started with " + what + " " +
                                   was + ", this run has " + now + " (delete the folder to start over)");
    };
    if (p.total != options_.total) differs("total", std::to_string(p.total), std::to_string(options_.total));
    if (p.chunk_size != options_.chunk_size)
      differs("chunk_size", std::to_string(p.chunk_size), std::to_string(options_.chunk_size));
    if (p.labels != options_.labels)
      differs("labels", p.labels ? "on" : "off", options_.labels ? "on" : "off");
    if (p.store != dtype_name(options_.store))
      differs("store", p.store, std::string(dtype_name(options_.store)));
    const auto now = metadata_.to_strings();
    for (const auto& [k, v] : now) {
      auto it = p.metadata.find(k);
      if (it == p.metadata.end() || it->second != v)
        differs("metadata '" + k + "' =", it == p.metadata.end() ? "(absent)" : "'" + it->second + "'",
                "'" + v + "'");
    }
    for (const auto& [k, v] : p.metadata)
      if (!now.count(k)) differs("metadata '" + k + "' =", "'" + v + "'", "(absent)");
    for (const auto& t : p.tensors) tensors_.push_back({t.name, t.dtype, t.sample_shape});
    for (const auto& k : p.skipped) skipped_.push_back({k.row, k.error});
    for (const auto k : p.done) {
      if (k < 0 || k >= num_chunks_)
        throw FormatError(pwhere, "chunk " + std::to_string(k) + " out of range");
      // A chunk counts only if all its files survived.
      bool ok = true;
      for (const auto& info : tensors_) ok = ok && fs::exists(chunk_file(k, info.name), ec);
      done_[static_cast<std::size_t>(k)] = ok && !tensors_.empty();
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
  detail::WriterProgress p;
  p.total = options_.total;
  p.chunk_size = options_.chunk_size;
  p.labels = options_.labels;
  p.store = dtype_name(options_.store);
  p.metadata = metadata_.to_strings();
  for (const auto& t : tensors_) p.tensors.push_back({t.name, t.dtype, t.sample_shape});
  for (std::int64_t c = 0; c < num_chunks_; ++c)
    if (done_[static_cast<std::size_t>(c)]) p.done.push_back(c);
  for (const auto& k : skipped_) p.skipped.push_back({k.row, k.error});
  const std::string text = p.to_json();
  io::detail::AtomicFile f(partial_ / "progress.json");
  f.write(text.data(), text.size());
  f.commit();
}

void FeatureWriter::write(std::int64_t chunk, const FeatureSet& features, const std::optional<Tensor>& labels,
                          const std::vector<SkippedRow>& skipped) {
  const char* where = "FeatureWriter::write";
  const auto [begin, end] = chunk_range(chunk);
  const std::int64_t rows = end - begin;
  if (labels.has_value() != options_.labels)
    throw ArgumentError(where, options_.labels ? "labels are required (options.labels is on)"
                                               : "labels given, but options.labels is off");
  std::vector<std::pair<std::string, Tensor>> items;
  for (const auto& [key, t] : features.items()) items.push_back({feature_name(key.first, key.second), t});
  if (labels) items.push_back({"labels", *labels});
  const detail::CheckedTensors c = detail::check_for_save(items, where);
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
      throw ArgumentError(where, "chunk " + std::to_string(chunk) + " holds " + detail::list_names(got) +
                                     "; earlier chunks hold " + detail::list_names(want));
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
  for (const auto& k : skipped)
    if (k.row < begin || k.row >= end)
      throw ArgumentError(
          where, fmt::format("skipped row {} is not in chunk {} [{}, {})", k.row, chunk, begin, end));
  for (std::size_t i = 0; i < infos.size(); ++i) io::save_npy(chunk_file(chunk, infos[i].name), data[i]);
  if (tensors_.empty()) tensors_ = infos;
  // This chunk's skipped rows replace any an earlier write of it recorded.
  const std::int64_t first = begin, last = end;  // a lambda cannot capture structured bindings in clang 14
  std::erase_if(skipped_, [&](const SkippedRow& k) { return k.row >= first && k.row < last; });
  skipped_.insert(skipped_.end(), skipped.begin(), skipped.end());
  std::sort(skipped_.begin(), skipped_.end(),
            [](const SkippedRow& a, const SkippedRow& b) { return a.row < b.row; });
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
  FeatureMetadata meta = metadata_;
  meta.skipped_rows = skipped_;
  if (options_.checksum_key.empty())
    io::detail::write_safetensors(path_, meta.to_strings(), entries, write_data);
  else
    io::detail::write_safetensors_with_checksum(path_, meta.to_strings(), options_.checksum_key, entries,
                                                write_data);
  std::error_code ec;
  fs::remove_all(partial_, ec);  // the final file is in place; a leftover folder is harmless
}

}  // namespace diffprobe

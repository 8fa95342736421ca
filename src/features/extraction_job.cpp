#include "diffprobe/features/extraction_job.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include "diffprobe/core/error.hpp"
#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/io/safetensors.hpp"
#include "features/sha256.hpp"
#include "io/safetensors_writer.hpp"

namespace diffprobe {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

constexpr const char* kWhere = "run_extraction";
constexpr const char* kPartPrefix = "part.";
constexpr const char* kShardKey = "part.shard";
constexpr const char* kRowsKey = "part.rows";
constexpr const char* kTotalKey = "part.total_rows";
constexpr const char* kChecksumKey = "part.data_sha256";

bool parse_int(std::string_view s, long long& v) {
  if (s.empty() || s.size() > 18) return false;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size();
}

// The default chunk: 16 batches, and at least kChunkGflop of forward work. Each finished chunk
// costs its files, a progress record and their fsyncs (milliseconds on a VM's disk) on a writer
// thread that competes with the compute threads; for a small model 16 batches are a few
// milliseconds of work (the bundled model to block 9 at batch 1: 16 images, 12 ms) and the job ran
// 7 % slower than with 512-row chunks. A multiple of the batch, so a chunk holds whole batches.
constexpr double kChunkGflop = 128;

std::int64_t default_chunk_rows(const FeatureExtractor& fx) {
  const auto& o = fx.options();
  const std::int64_t batch = o.batch_size;
  int deepest = 0;
  for (const int b : o.blocks) deepest = b == 0 ? fx.model().num_blocks() + 1 : std::max(deepest, b);
  double gflop = 0;  // per row: every timestep and noise draw is a forward to the deepest block
  for (const auto& info : fx.model().block_infos())
    if ((info.block == 0 && deepest > fx.model().num_blocks()) || (info.block != 0 && info.block <= deepest))
      gflop += info.gflop;
  gflop *= static_cast<double>(o.timesteps.size()) * (o.noise == NoiseMode::Seeded ? o.noise_draws : 1);
  std::int64_t rows = 16 * batch;
  if (gflop > 0) {
    const auto need = static_cast<std::int64_t>(std::ceil(kChunkGflop / gflop));
    rows = std::max(rows, (need + batch - 1) / batch * batch);
  }
  return rows;
}

// ---- Decoded chunks, from the decoding thread to the forward pass --------------------------

struct Decoded {
  std::int64_t chunk = 0;
  Tensor images;
  std::optional<Tensor> labels;
  std::vector<SkippedRow> skipped;  // rows (of the output) whose image could not be read
  std::exception_ptr error;
};

// A bounded queue: the decoding thread stays at most `capacity` chunks ahead.
class DecodeQueue {
 public:
  explicit DecodeQueue(std::size_t capacity) : capacity_(capacity) {}
  /// False when the queue was stopped (the consumer gave up).
  bool push(Decoded d) {
    std::unique_lock lock(m_);
    space_.wait(lock, [&] { return stopped_ || items_.size() < capacity_; });
    if (stopped_) return false;
    items_.push_back(std::move(d));
    ready_.notify_one();
    return true;
  }
  Decoded pop() {
    std::unique_lock lock(m_);
    ready_.wait(lock, [&] { return !items_.empty(); });
    Decoded d = std::move(items_.front());
    items_.pop_front();
    space_.notify_one();
    return d;
  }
  void stop() {
    std::lock_guard lock(m_);
    stopped_ = true;
    space_.notify_all();
  }

 private:
  std::size_t capacity_;
  std::mutex m_;
  std::condition_variable ready_, space_;
  std::deque<Decoded> items_;
  bool stopped_ = false;
};

// Output rows [begin, end) when each of n samples has copies: row r is copy r / n (the
// transform's epoch) of sample r % n.
// Rows [begin, end) of the output (row r is sample r % n, copy r / n). With `skipped`, images
// that cannot be read are zeros and listed there by row; else the first is an error.
Tensor rows_of(data::Dataset& ds, std::int64_t n, std::int64_t begin, std::int64_t end,
               std::vector<SkippedRow>* skipped) {
  std::vector<data::Dataset::BadSample> bad;
  auto note = [&](std::int64_t first_row) {
    for (const auto& b : bad) skipped->push_back({first_row + b.position, b.error});
    bad.clear();
  };
  if (begin / n == (end - 1) / n) {
    ds.set_epoch(begin / n);
    Tensor t = ds.images(begin % n, (end - 1) % n + 1, skipped ? &bad : nullptr);
    if (skipped) note(begin);
    return t;
  }
  const auto spec = ds.spec();
  Tensor out = Tensor::empty(Shape{end - begin, spec.channels, spec.size, spec.size}, DType::F32);
  const std::int64_t per = std::int64_t{spec.channels} * spec.size * spec.size;
  for (std::int64_t r = begin; r < end;) {
    const std::int64_t k = r / n, i0 = r % n, i1 = std::min(n, i0 + (end - r));
    ds.set_epoch(k);
    const Tensor part = ds.images(i0, i1, skipped ? &bad : nullptr);
    if (skipped) note(r);
    std::copy_n(part.data<float>(), part.numel(), out.data<float>() + (r - begin) * per);
    r += i1 - i0;
  }
  return out;
}

std::optional<Tensor> labels_of(const std::optional<Tensor>& labels, std::int64_t n, std::int64_t begin,
                                std::int64_t end) {
  if (!labels) return std::nullopt;
  Tensor out = Tensor::empty(Shape{end - begin}, DType::I64);
  const auto* l = labels->data<const std::int64_t>();
  for (std::int64_t r = begin; r < end; ++r) out.data<std::int64_t>()[r - begin] = l[r % n];
  return out;
}

using Strings = std::map<std::string, std::string>;

Strings without_part_keys(const Strings& m) {
  Strings out;
  for (const auto& [k, v] : m)
    if (k.rfind(kPartPrefix, 0) != 0) out[k] = v;
  return out;
}

// "metadata 'noise_seed' was '1', this run has '2'", or "" when equal.
std::string first_difference(const Strings& was, const Strings& now) {
  auto show = [](const Strings& m, const std::string& k) {
    const auto it = m.find(k);
    if (it == m.end()) return std::string("(absent)");
    return "'" + (it->second.size() > 120 ? it->second.substr(0, 117) + "..." : it->second) + "'";
  };
  std::set<std::string> keys;
  for (const auto& [k, v] : was) keys.insert(k);
  for (const auto& [k, v] : now) keys.insert(k);
  for (const auto& k : keys) {
    if (k == "skipped_rows") continue;  // what a run found, not one of its settings
    const auto a = was.find(k), b = now.find(k);
    if (a == was.end() || b == now.end() || a->second != b->second)
      return fmt::format("metadata '{}' is {} there, this run has {}", k, show(was, k), show(now, k));
  }
  return {};
}

// The metadata of a safetensors file without mapping its data.
Strings file_metadata(const fs::path& p) { return io::load_safetensors(p).metadata; }

// Offset of a safetensors file's data section: 8 + the header length.
std::uint64_t data_offset(const fs::path& p) {
  std::FILE* f = std::fopen(p.c_str(), "rb");
  if (!f) throw IoError(p.string(), std::string("cannot open: ") + std::strerror(errno));
  std::uint8_t b[8];
  const bool ok = std::fread(b, 1, 8, f) == 8;
  std::fclose(f);
  if (!ok) throw FormatError(p.string(), "shorter than a safetensors header");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | b[i];
  return 8 + n;
}

struct PartName {
  int index = 0, count = 0;
  bool finished = false;  // the .safetensors itself (not its .partial folder or a temporary)
};

// Every part-I-of-N name in OUT.parts (finished files and in-progress folders).
std::vector<PartName> scan_parts(const fs::path& dir) {
  std::vector<PartName> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  static const std::regex re(R"(part-(\d{5})-of-(\d{5})\.safetensors(\.partial)?)");
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (!std::regex_match(name, m, re)) continue;
    out.push_back({std::stoi(m[1]), std::stoi(m[2]), !m[3].matched});
  }
  return out;
}

// Serialises merges of one output between processes (and machines sharing the folder).
class MergeLock {
 public:
  explicit MergeLock(const fs::path& dir) {
    const fs::path p = dir / ".merge.lock";
    fd_ = ::open(p.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd_ < 0)
      throw IoError(p.string(), std::string("cannot open the merge lock: ") + std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0)
      if (errno != EINTR) throw IoError(p.string(), std::string("cannot lock: ") + std::strerror(errno));
  }
  ~MergeLock() { ::close(fd_); }
  MergeLock(const MergeLock&) = delete;
  MergeLock& operator=(const MergeLock&) = delete;

 private:
  int fd_ = -1;
};

// Refuses leftovers of another layout: a one-process partial run, or parts of another split.
void check_layout(const fs::path& out, const Shard& shard) {
  std::error_code ec;
  fs::path partial = out;
  partial += ".partial";
  const auto parts = scan_parts(parts_dir(out));
  if (shard.count > 1 && fs::exists(partial, ec))
    throw ConfigError(kWhere,
                      fmt::format("{} holds a one-process run of {}; this run is shard {}: finish it with "
                                  "the one-process command or delete {} to start over",
                                  partial.string(), out.string(), shard.str(), partial.string()));
  for (const auto& p : parts)
    if (p.count != shard.count)
      throw ConfigError(
          kWhere,
          fmt::format("{} holds parts of a {}-way split (e.g. part {} of {}); this run is {}: "
                      "rerun with --shard I/{} (any I) or delete {} to start over",
                      parts_dir(out).string(), p.count, p.index, p.count,
                      shard.count > 1 ? fmt::format("shard {}", shard.str()) : std::string("one process"),
                      p.count, parts_dir(out).string()));
}

}  // namespace

// ---- Shards and launchers -------------------------------------------------------------------

Shard Shard::parse(const std::string& text) {
  const auto slash = text.find('/');
  long long i = 0, n = 0;
  if (slash == std::string::npos || !parse_int(std::string_view(text).substr(0, slash), i) ||
      !parse_int(std::string_view(text).substr(slash + 1), n) || n < 1 || n > 99999 || i < 0 || i >= n)
    throw ArgumentError("Shard", "'" + text + "' is not a shard I/N with 0 <= I < N <= 99999");
  return {static_cast<int>(i), static_cast<int>(n)};
}

std::string Shard::str() const { return fmt::format("{}/{}", index, count); }

LaunchInfo detect_launch() {
  auto get = [](const char* name) -> std::optional<long long> {
    const char* v = std::getenv(name);
    long long x = 0;
    if (!v || !parse_int(v, x)) return std::nullopt;
    return x;
  };
  struct Source {
    const char* launcher;
    const char *rank, *size, *local;
  };
  // Open MPI first (mpirun), then PMIx / Slurm (srun), then MPICH / Hydra.
  for (const Source& s :
       {Source{"open-mpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
        Source{"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
        Source{"pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"}}) {
    const auto r = get(s.rank), n = get(s.size);
    if (!r || !n || *n < 1 || *r < 0 || *r >= *n) continue;
    LaunchInfo info;
    info.shard = {static_cast<int>(*r), static_cast<int>(*n)};
    info.local_rank = static_cast<int>(get(s.local).value_or(0));
    info.launcher = s.launcher;
    return info;
  }
  return {};
}

fs::path parts_dir(const fs::path& out) {
  fs::path d = out;
  d += ".parts";
  return d;
}

fs::path part_path(const fs::path& out, const Shard& shard) {
  return parts_dir(out) / fmt::format("part-{:05}-of-{:05}.safetensors", shard.index, shard.count);
}

std::vector<fs::path> complete_parts(const fs::path& out) {
  const fs::path dir = parts_dir(out);
  const auto parts = scan_parts(dir);
  std::set<int> counts;
  std::set<int> finished;
  for (const auto& p : parts) {
    counts.insert(p.count);
    if (p.finished) finished.insert(p.index);
  }
  if (counts.empty())
    throw ArgumentError("complete_parts", "no parts of " + out.string() + " in " + dir.string());
  if (counts.size() > 1)
    throw ConfigError("complete_parts", fmt::format("{} mixes parts of {}-way splits; delete the ones of the "
                                                    "split you do not want",
                                                    dir.string(), fmt::join(counts, "- and ")));
  const int n = *counts.begin();
  std::vector<int> missing;
  for (int i = 0; i < n; ++i)
    if (!finished.count(i)) missing.push_back(i);
  if (!missing.empty()) {
    std::vector<int> first(missing.begin(), missing.begin() + std::min<std::size_t>(missing.size(), 12));
    throw ArgumentError("complete_parts", fmt::format("{} of {} parts of {} are not finished: shard(s) {}{}",
                                                      missing.size(), n, out.string(), fmt::join(first, ", "),
                                                      missing.size() > first.size() ? ", ..." : ""));
  }
  std::vector<fs::path> paths;
  for (int i = 0; i < n; ++i) paths.push_back(part_path(out, {i, n}));
  return paths;
}

// ---- Merging --------------------------------------------------------------------------------

bool merge_parts(const fs::path& out, bool keep_parts) {
  const char* where = "merge_parts";
  const fs::path dir = parts_dir(out);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    if (fs::exists(out, ec)) return false;  // merged (and cleaned up) by someone else
    throw ArgumentError(where, "no parts of " + out.string() + " (" + dir.string() + " does not exist)");
  }
  const MergeLock lock(dir);
  const auto paths = complete_parts(out);
  const int n = static_cast<int>(paths.size());
  std::vector<io::NamedTensors> parts;
  for (const auto& p : paths) parts.push_back(io::load_safetensors(p));
  const Strings base = without_part_keys(parts[0].metadata);
  if (fs::exists(out, ec)) {
    const std::string d = first_difference(file_metadata(out), base);
    if (!d.empty())
      throw ConfigError(where, out.string() + " exists and is not the merge of " + dir.string() + ": " + d +
                                   "; nothing is overwritten");
    if (!keep_parts) fs::remove_all(dir, ec);
    return false;
  }
  // One complete split of one extraction: same metadata but for part.*, contiguous rows.
  long long total = -1, next = 0;
  for (int i = 0; i < n; ++i) {
    const auto& m = parts[static_cast<std::size_t>(i)].metadata;
    const std::string name = paths[static_cast<std::size_t>(i)].string();
    const auto get = [&](const char* k) {
      const auto it = m.find(k);
      if (it == m.end())
        throw FormatError(name, std::string("not a diffprobe part: no metadata '") + k + "'");
      return it->second;
    };
    if (get(kShardKey) != Shard{i, n}.str())
      throw FormatError(
          name, "metadata part.shard is '" + get(kShardKey) + "', its name says " + Shard{i, n}.str());
    long long t = 0, b = 0, e = 0;
    const std::string rows = get(kRowsKey);
    const auto comma = rows.find(',');
    if (!parse_int(get(kTotalKey), t) || comma == std::string::npos ||
        !parse_int(std::string_view(rows).substr(0, comma), b) ||
        !parse_int(std::string_view(rows).substr(comma + 1), e))
      throw FormatError(name,
                        "malformed part.rows '" + rows + "' or part.total_rows '" + get(kTotalKey) + "'");
    if (total < 0) total = t;
    if (t != total || b != next || e <= b)
      throw FormatError(
          name, fmt::format("holds rows [{}, {}) of {}; expected rows from {} of {}", b, e, t, next, total));
    next = e;
    const std::string d = first_difference(base, without_part_keys(m));
    if (!d.empty()) throw FormatError(name, "not a part of the same extraction as part 0: " + d);
    // Same tensors, dtypes and per-row shapes, each with e - b rows.
    std::vector<std::string> a, c;
    for (const auto& [k, v] : parts[0]) a.push_back(k + ":" + std::string(dtype_name(v.dtype())));
    for (const auto& [k, v] : parts[static_cast<std::size_t>(i)])
      c.push_back(k + ":" + std::string(dtype_name(v.dtype())));
    if (a != c) throw FormatError(name, "holds other tensors than part 0");
    for (const auto& [k, v] : parts[static_cast<std::size_t>(i)]) {
      const auto s = v.shape().vec(), s0 = parts[0].at(k).shape().vec();
      if (v.dim(0) != e - b || s.size() != s0.size() || !std::equal(s.begin() + 1, s.end(), s0.begin() + 1))
        throw FormatError(name, fmt::format("'{}' is {}, expected {} rows of part 0's per-row shape", k,
                                            v.shape().str(), e - b));
    }
  }
  if (next != total)
    throw FormatError(dir.string(), fmt::format("the parts hold {} of {} rows", next, total));
  // Every part as it was written: its data section's SHA-256 against its metadata.
  for (int i = 0; i < n; ++i) {
    const fs::path& p = paths[static_cast<std::size_t>(i)];
    const std::string want = parts[static_cast<std::size_t>(i)].metadata.at(kChecksumKey);
    const std::string got = detail::sha256_file_hex(p, data_offset(p));
    if (got != want)
      throw FormatError(p.string(),
                        fmt::format("corrupt part: its data's SHA-256 is {}, its metadata records {}; "
                                    "delete it and rerun shard {}",
                                    got, want, Shard{i, n}.str()));
  }
  std::vector<io::detail::SafetensorsEntry> entries;
  for (const auto& [k, v] : parts[0]) {
    auto shape = v.shape().vec();
    shape[0] = total;
    entries.push_back({k, v.dtype(), shape});
  }
  io::detail::write_safetensors(out, base, entries, [&](std::size_t i, io::detail::AtomicFile& f) {
    for (const auto& p : parts) {
      const Tensor& t = p.at(entries[i].name);
      f.write(t.raw(), t.nbytes());
    }
  });
  parts.clear();
  if (!keep_parts) fs::remove_all(dir, ec);
  return true;
}

// ---- The job --------------------------------------------------------------------------------

ExtractionResult run_extraction(const FeatureExtractor& fx, data::Dataset& ds, const fs::path& out,
                                const ExtractionJobOptions& o) {
  const auto start = Clock::now();
  if (o.copies < 1) throw ArgumentError(kWhere, fmt::format("copies must be >= 1, got {}", o.copies));
  const auto transform = ds.transform();
  if (o.copies > 1 && !(transform && transform->random()))
    throw ArgumentError(kWhere,
                        "copies are augmented views: the data set's transform must be random (e.g. "
                        "Transform::adm_train)");
  if (o.prefetch < 1) throw ArgumentError(kWhere, fmt::format("prefetch must be >= 1, got {}", o.prefetch));
  if (o.shard.count < 1 || o.shard.index < 0 || o.shard.index >= o.shard.count)
    throw ArgumentError(kWhere, "shard " + o.shard.str() + " is not I/N with 0 <= I < N");
  if (o.limit < 0) throw ArgumentError(kWhere, fmt::format("limit must be >= 0, got {}", o.limit));
  for (const auto& [k, v] : o.extra_metadata)
    if (k.rfind(kPartPrefix, 0) == 0)
      throw ArgumentError(kWhere, "metadata keys 'part.*' are reserved: " + k);
  const auto spec = data::InputSpec::from_shape(fx.input_spec());
  if (!(ds.spec() == spec))
    throw ShapeError(kWhere, "the data is " + ds.spec().str() + " but the model takes " + spec.str());
  const std::int64_t samples = o.limit > 0 ? std::min(o.limit, ds.size()) : ds.size();
  if (samples < 1) throw ArgumentError(kWhere, "the data set is empty");
  const std::int64_t total = samples * o.copies;
  const std::int64_t chunk = o.chunk_size > 0 ? o.chunk_size : default_chunk_rows(fx);
  const std::int64_t num_chunks = (total + chunk - 1) / chunk;
  const bool sharded = o.shard.count > 1;
  if (sharded && o.skip_bad_images)
    throw ArgumentError(kWhere,
                        "skipping unreadable images is not supported with sharding yet: fix or remove "
                        "the files, or extract in one process");
  if (o.shard.count > num_chunks)
    throw ArgumentError(kWhere,
                        fmt::format("{} shards for {} chunks of {} rows: use fewer shards or smaller chunks",
                                    o.shard.count, num_chunks, chunk));

  FeatureMetadata meta = FeatureMetadata::describe(fx, o.weights, &ds);
  meta.copies = o.copies;
  for (const auto& [k, v] : o.extra_metadata) meta.extra[k] = v;
  const Strings final_strings = meta.to_strings();

  ExtractionResult r;
  r.rows_total = total;
  std::error_code ec;
  if (fs::exists(out, ec)) {
    const std::string d = first_difference(file_metadata(out), final_strings);
    if (!d.empty())
      throw ConfigError(kWhere, out.string() + " exists and was made with other settings: " + d +
                                    "; nothing is overwritten (remove it to extract again)");
    r.output = out;
    r.complete = true;
    r.seconds = since(start);
    return r;
  }
  check_layout(out, o.shard);

  // This shard's rows: whole chunks, so every batch holds the rows it holds in one process.
  const std::int64_t c0 = num_chunks * o.shard.index / o.shard.count;
  const std::int64_t c1 = num_chunks * (o.shard.index + 1) / o.shard.count;
  const std::int64_t row0 = c0 * chunk, row1 = std::min(c1 * chunk, total);
  const fs::path target = sharded ? part_path(out, o.shard) : out;
  FeatureMetadata part_meta = meta;
  if (sharded) {
    part_meta.extra[kShardKey] = o.shard.str();
    part_meta.extra[kRowsKey] = fmt::format("{},{}", row0, row1);
    part_meta.extra[kTotalKey] = std::to_string(total);
  }
  std::optional<Tensor> labels = ds.labels();
  if (labels && labels->dim(0) > samples) labels = labels->slice_batch(0, samples);
  if (sharded) {
    // Other shards' finished parts must be of this same extraction (weights, data, flags).
    for (const auto& p : scan_parts(parts_dir(out))) {
      if (!p.finished || p.index == o.shard.index) continue;
      const fs::path other = part_path(out, {p.index, p.count});
      const std::string d = first_difference(without_part_keys(file_metadata(other)), final_strings);
      if (!d.empty())
        throw ConfigError(kWhere, other.string() + " is a part of another extraction: " + d +
                                      "; nothing is overwritten (delete " + parts_dir(out).string() +
                                      " to start over)");
    }
  }

  if (sharded && fs::exists(target, ec)) {
    Strings was = file_metadata(target);
    was.erase(kChecksumKey);
    const std::string d = first_difference(was, part_meta.to_strings());
    if (!d.empty())
      throw ConfigError(kWhere, target.string() + " was made with other settings: " + d +
                                    "; nothing is overwritten (delete " + parts_dir(out).string() +
                                    " to start over)");
    r.rows_resumed = row1 - row0;
  } else {
    if (sharded) {
      fs::create_directories(parts_dir(out), ec);
      if (ec) throw IoError(parts_dir(out).string(), "cannot create the parts folder: " + ec.message());
    }
    FeatureWriterOptions wo;
    wo.total = row1 - row0;
    wo.chunk_size = chunk;
    wo.labels = labels.has_value();
    wo.store = o.store;
    if (sharded) wo.checksum_key = kChecksumKey;
    FeatureWriter writer(target, part_meta, wo);
    struct Todo {
      std::int64_t chunk, begin, end;  // local chunk, global rows
    };
    std::vector<Todo> todo;
    for (std::int64_t c = 0; c < writer.num_chunks(); ++c) {
      const auto [b, e] = writer.chunk_range(c);
      if (writer.done(c))
        r.rows_resumed += e - b;
      else
        todo.push_back({c, row0 + b, row0 + e});
    }
    ExtractionProgress progress;
    progress.rows_total = row1 - row0;
    progress.rows_resumed = progress.rows_done = r.rows_resumed;
    auto report = [&](std::int64_t rows_done) {
      if (!o.on_progress) return;
      progress.rows_done = rows_done;
      progress.seconds = since(start);
      progress.forward_seconds = r.forward_seconds;
      o.on_progress(progress);
    };
    auto cancelled = [&] { return o.cancel && o.cancel->load(std::memory_order_relaxed); };
    report(r.rows_resumed);

    // Decoding runs ahead on its own thread (and the data set's decode threads), at most
    // `prefetch` chunks, so the forward pass does not wait for it.
    DecodeQueue queue(static_cast<std::size_t>(o.prefetch));
    std::thread decoder([&] {
      for (const Todo& t : todo) {
        Decoded d;
        d.chunk = t.chunk;
        try {
          d.images = rows_of(ds, samples, t.begin, t.end, o.skip_bad_images ? &d.skipped : nullptr);
          d.labels = labels_of(labels, samples, t.begin, t.end);
        } catch (...) {
          d.error = std::current_exception();
        }
        const bool failed = static_cast<bool>(d.error);
        if (!queue.push(std::move(d)) || failed) return;
      }
    });
    std::future<void> pending_write;  // the previous chunk's FeatureWriter::write
    try {
      for (const Todo& t : todo) {
        if (cancelled())
          throw CancelledError(
              kWhere, fmt::format("stopped at row {}; finished chunks are kept in {}.partial", t.begin,
                                  target.string()));
        const auto wait_start = Clock::now();
        Decoded d = queue.pop();
        r.wait_seconds += since(wait_start);
        if (d.error) std::rethrow_exception(d.error);
        const std::int64_t base = r.rows_resumed + r.rows_computed;
        const auto forward_start = Clock::now();
        const FeatureSet features =
            fx.extract(d.images, t.begin, {}, [&](std::int64_t done, std::int64_t rows) {
              report(base + done);
              // A chunk whose last batch is done is written first (the check at the loop's top).
              if (done < rows && cancelled())
                throw CancelledError(kWhere,
                                     fmt::format("stopped in the chunk of rows [{}, {}); finished chunks "
                                                 "are kept in {}.partial",
                                                 t.begin, t.end, target.string()));
            });
        r.forward_seconds += since(forward_start);
        // A skipped image's features are NaN: no consumer mistakes them for a real image's.
        for (auto& k : d.skipped) {
          for (const auto& [key, shared] : features.items()) {
            Tensor f = shared;  // the same storage
            const std::int64_t per_row = f.numel() / f.dim(0);
            float* p = f.data<float>() + (k.row - t.begin) * per_row;
            std::fill_n(p, per_row, std::numeric_limits<float>::quiet_NaN());
          }
          r.skipped.push_back(k);
          k.row -= row0;  // the writer counts its own rows
        }
        // The chunk's files are written (and synced) while the next chunk is computed: at most
        // one write in flight, so at most two chunks' features are held. A failed write (a full
        // disk) surfaces here, at the next chunk, or at the end.
        if (pending_write.valid()) pending_write.get();
        pending_write =
            std::async(std::launch::async,
                       [&writer, chunk = t.chunk, f = features, labels = std::move(d.labels),
                        skipped = std::move(d.skipped)] { writer.write(chunk, f, labels, skipped); });
        r.rows_computed += t.end - t.begin;
        report(r.rows_resumed + r.rows_computed);
      }
      if (pending_write.valid()) pending_write.get();
    } catch (...) {
      // Chunks already computed are still written (a cancelled run keeps them); an error of that
      // write is dropped in favour of the one being thrown.
      if (pending_write.valid()) try {
          pending_write.get();
        } catch (...) {
        }
      queue.stop();
      decoder.join();
      throw;
    }
    queue.stop();
    decoder.join();
    writer.finish();
  }

  r.output = target;
  if (!sharded) {
    r.complete = true;
  } else if (o.merge) {
    // The last shard to finish finds every part there and assembles OUT (a lock makes one of
    // several finishing together do it; the others find OUT there).
    bool all = true;
    try {
      (void)complete_parts(out);
    } catch (const ArgumentError&) {
      all = false;
    }
    if (all) {
      r.merged = merge_parts(out, o.keep_parts);
      r.complete = true;
      r.output = out;
    }
  }
  r.seconds = since(start);
  return r;
}

}  // namespace diffprobe

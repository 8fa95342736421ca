#include "diffprobe/features/feature_rows.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "diffprobe/core/error.hpp"
#include "diffprobe/features/feature_file.hpp"
#include "features/parts_check.hpp"

namespace diffprobe {
namespace fs = std::filesystem;

// One file's run of rows: [first_row, first_row + rows) at byte `offset` of `fd`.
struct Segment {
  int fd = -1;
  std::string path;
  std::int64_t first_row = 0, rows = 0;
  std::uint64_t offset = 0;
};

struct FeatureRows::Impl {
  std::vector<Segment> segments;
  std::int64_t rows = 0;
  Shape sample;
  DType dtype = DType::F32;
  std::size_t row_bytes = 0;
  std::optional<std::vector<std::int64_t>> labels;
  int copies = 1;
  std::int64_t skipped = 0;        // rows left out (their image could not be read)
  std::vector<std::int64_t> kept;  // with skipped > 0: the files' row of each row
  ~Impl() {
    for (auto& s : segments)
      if (s.fd >= 0) ::close(s.fd);
  }
};

namespace {

// Where the tensor `name`'s bytes start in a (validated) safetensors file.
std::uint64_t data_offset_of(int fd, const std::string& path, const std::string& name) {
  std::uint8_t len[8];
  if (::pread(fd, len, 8, 0) != 8) throw IoError(path, "cannot read the header");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  std::string text(n, '\0');
  if (::pread(fd, text.data(), n, 8) != static_cast<ssize_t>(n))
    throw IoError(path, "cannot read the header");
  const auto j = nlohmann::json::parse(text);
  return 8 + n + j.at(name).at("data_offsets").at(0).get<std::uint64_t>();
}

void read_exact(const Segment& s, void* dst, std::size_t bytes, std::uint64_t at) {
  auto* p = static_cast<char*>(dst);
  while (bytes > 0) {
    const ssize_t got = ::pread(s.fd, p, bytes, static_cast<off_t>(at));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      throw IoError(s.path, got == 0 ? std::string("file ended early (was it truncated?)")
                                     : std::string("read failed: ") + std::strerror(errno));
    p += got;
    bytes -= static_cast<std::size_t>(got);
    at += static_cast<std::uint64_t>(got);
  }
}

}  // namespace

FeatureRows::FeatureRows(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FeatureRows::FeatureRows(FeatureRows&&) noexcept = default;
FeatureRows& FeatureRows::operator=(FeatureRows&&) noexcept = default;
FeatureRows::~FeatureRows() = default;

FeatureRows FeatureRows::open(const std::vector<fs::path>& files, const std::string& feature) {
  if (files.empty()) throw ArgumentError("FeatureRows::open", "no files given");
  auto impl = std::make_unique<Impl>();
  {
    // Validation and metadata through FeatureFile (its mappings are dropped at the end of this
    // scope; nothing but the headers and the labels was touched).
    std::vector<FeatureFile> opened;
    for (const auto& f : files) opened.push_back(FeatureFile::open(f));
    if (opened.size() > 1) detail::check_parts(opened, files);
    std::vector<std::int64_t> labels;
    bool has_labels = true;
    for (std::size_t i = 0; i < opened.size(); ++i) {
      const FeatureFile& f = opened[i];
      const Tensor& t = f.feature(feature);
      if (i == 0) {
        const auto dims = t.shape().vec();
        impl->sample = Shape(std::vector<std::int64_t>(dims.begin() + 1, dims.end()));
        impl->dtype = t.dtype();
        impl->row_bytes = static_cast<std::size_t>(impl->sample.numel()) * dtype_size(t.dtype());
        impl->copies = f.metadata().copies;
      }
      Segment s;
      s.path = files[i].string();
      s.first_row = impl->rows;
      s.rows = f.size();
      s.fd = ::open(files[i].c_str(), O_RDONLY | O_CLOEXEC);
      if (s.fd < 0) throw IoError(s.path, std::string("cannot open: ") + std::strerror(errno));
      impl->segments.push_back(s);  // owned from here (closed by Impl)
      impl->segments.back().offset = data_offset_of(s.fd, s.path, feature);
      impl->rows += f.size();
      if (const auto l = f.labels()) {
        const auto v = l->data<const std::int64_t>();
        labels.insert(labels.end(), v, v + l->numel());
      } else {
        has_labels = false;
      }
    }
    // Rows whose image could not be read (extract --on-bad-image skip) are left out.
    std::vector<std::int64_t> bad;
    for (std::size_t i = 0; i < opened.size(); ++i)
      for (const auto& k : opened[i].metadata().skipped_rows)
        bad.push_back(impl->segments[i].first_row + k.row);
    if (!bad.empty()) {
      std::sort(bad.begin(), bad.end());
      std::size_t next = 0;
      for (std::int64_t r = 0; r < impl->rows; ++r) {
        if (next < bad.size() && bad[next] == r) {
          ++next;
          continue;
        }
        impl->kept.push_back(r);
      }
      impl->skipped = static_cast<std::int64_t>(bad.size());
      if (has_labels) {
        std::vector<std::int64_t> kept_labels;
        for (const std::int64_t r : impl->kept) kept_labels.push_back(labels[static_cast<std::size_t>(r)]);
        labels = std::move(kept_labels);
      }
    }
    if (has_labels) impl->labels = std::move(labels);
  }
  return FeatureRows(std::move(impl));
}

std::int64_t FeatureRows::rows() const noexcept { return impl_->rows - impl_->skipped; }
std::int64_t FeatureRows::skipped_rows() const noexcept { return impl_->skipped; }
const Shape& FeatureRows::sample_shape() const noexcept { return impl_->sample; }
DType FeatureRows::stored_dtype() const noexcept { return impl_->dtype; }
const std::optional<std::vector<std::int64_t>>& FeatureRows::labels() const noexcept { return impl_->labels; }
int FeatureRows::copies() const noexcept { return impl_->copies; }

void FeatureRows::read(std::span<const std::int64_t> idx, float* out) const {
  const Impl& m = *impl_;
  const std::int64_t f = m.sample.numel();
  std::vector<std::uint16_t> half(m.dtype == DType::F32 ? 0 : static_cast<std::size_t>(f));
  const std::int64_t n = rows();
  for (std::size_t k = 0; k < idx.size(); ++k) {
    if (idx[k] < 0 || idx[k] >= n)
      throw ArgumentError("FeatureRows::read", fmt::format("row {} is outside [0, {})", idx[k], n));
    const std::int64_t r = m.skipped > 0 ? m.kept[static_cast<std::size_t>(idx[k])] : idx[k];
    const auto seg = std::upper_bound(m.segments.begin(), m.segments.end(), r,
                                      [](std::int64_t v, const Segment& s) { return v < s.first_row; }) -
                     1;
    const std::uint64_t at = seg->offset + static_cast<std::uint64_t>(r - seg->first_row) * m.row_bytes;
    float* dst = out + static_cast<std::int64_t>(k) * f;
    if (m.dtype == DType::F32) {
      read_exact(*seg, dst, m.row_bytes, at);
    } else {
      read_exact(*seg, half.data(), m.row_bytes, at);
      for (std::int64_t j = 0; j < f; ++j)
        dst[j] = m.dtype == DType::BF16 ? bf16_to_float(half[static_cast<std::size_t>(j)])
                                        : half_to_float(half[static_cast<std::size_t>(j)]);
    }
  }
}

void FeatureRows::read_range(std::int64_t begin, std::int64_t end, float* out) const {
  std::vector<std::int64_t> idx;
  for (std::int64_t r = begin; r < end; ++r) idx.push_back(r);
  read(idx, out);
}

}  // namespace diffprobe

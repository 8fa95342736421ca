#pragma once
// Shared helpers of the io tests: the files written by tests/io/make_checkpoints.py (run once
// per content of the script, cached under the build tree), expected-value manifests, exact
// comparisons, and small utilities (temporary directories, raw file writes, /proc checks).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "diffprobe/core/tensor.hpp"
#include "diffprobe/io/named_tensors.hpp"
#include "diffprobe/io/npy.hpp"

namespace iotest {

namespace fs = std::filesystem;
using diffprobe::DType;
using diffprobe::Tensor;

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

/// A fresh directory removed at scope exit.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("diffprobe_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

/// Runs make_checkpoints.py into a cache directory keyed by the script's content (so several
/// test processes share one run) and sets `out` to it. A missing python3, numpy or torch is a
/// test failure with the script's message, never a skip.
inline void checkpoint_fixtures(fs::path& out) {
  const fs::path script = fs::path(DIFFPROBE_SOURCE_DIR) / "tests" / "io" / "make_checkpoints.py";
  const std::string python = "/usr/bin/python3";
  ASSERT_TRUE(fs::exists(script)) << "missing " << script;
  ASSERT_TRUE(fs::exists(python)) << python << " is missing: the io tests need python3 with numpy and torch "
                                  << "(Debian: python3 python3-numpy python3-torch)";
  const std::size_t key = std::hash<std::string>{}(read_file(script));
  std::ostringstream name;
  name << "io_fixtures_" << std::hex << key;
  const fs::path dir = fs::path(DIFFPROBE_BINARY_DIR) / "tests" / name.str();
  if (!fs::exists(dir / "DONE")) {
    const fs::path tmp = dir.string() + ".tmp." + std::to_string(::getpid());
    fs::remove_all(tmp);
    const std::string cmd = python + " '" + script.string() + "' '" + tmp.string() + "' 2>&1";
    std::FILE* p = ::popen(cmd.c_str(), "r");
    ASSERT_NE(p, nullptr) << "cannot run " << cmd;
    std::string log;
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) log.append(buf, n);
    const int status = ::pclose(p);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "make_checkpoints.py failed (status " << status
        << "); the io tests need /usr/bin/python3 with numpy "
        << "and torch. Output:\n"
        << log;
    write_file(tmp / "DONE", "ok\n");
    std::error_code ec;
    fs::rename(tmp, dir, ec);  // another process may have won the race; its copy is as good
    if (ec) fs::remove_all(tmp, ec);
  }
  ASSERT_TRUE(fs::exists(dir / "DONE")) << "fixture directory " << dir << " is incomplete";
  out = dir;
}

struct ManifestEntry {
  int index = 0;
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
};

inline std::vector<ManifestEntry> read_manifest(const fs::path& p) {
  std::vector<ManifestEntry> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    std::stringstream ss(line);
    ManifestEntry e;
    std::string idx, shape;
    std::getline(ss, idx, '\t');
    std::getline(ss, e.name, '\t');
    std::getline(ss, e.dtype, '\t');
    std::getline(ss, shape, '\t');
    e.index = std::stoi(idx);
    std::stringstream sh(shape);
    for (std::string d; std::getline(sh, d, ',');) e.shape.push_back(std::stoll(d));
    out.push_back(e);
  }
  return out;
}

/// Bitwise-equal values (signed zeros and NaN included), compared through double.
/// `check_dtype` false compares values only (expected bf16 values come as f32).
inline void expect_identical(const Tensor& got, const Tensor& want, const std::string& what,
                             bool check_dtype = true) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  if (check_dtype) {
    ASSERT_EQ(got.dtype(), want.dtype()) << what;
  }
  std::int64_t bad = 0;
  for (std::int64_t i = 0; i < want.numel(); ++i) {
    const double a = got.item_at(i), b = want.item_at(i);
    const bool same = (std::isnan(a) && std::isnan(b)) || (a == b && std::signbit(a) == std::signbit(b));
    if (!same && bad++ < 5) ADD_FAILURE() << what << " element " << i << ": got " << a << ", want " << b;
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << want.numel() << " values differ";
}

/// Checks a loaded collection against CASE.manifest and CASE/<i>.npy.
inline void expect_matches_case(const diffprobe::io::NamedTensors& got, const fs::path& dir,
                                const std::string& name) {
  const auto manifest = read_manifest(dir / (name + ".manifest"));
  ASSERT_FALSE(manifest.empty()) << name;
  ASSERT_EQ(got.size(), manifest.size()) << name;
  std::size_t k = 0;
  for (const auto& [n, t] : got) {
    const auto& e = manifest[k++];
    EXPECT_EQ(n, e.name) << name << ": order differs at position " << k - 1;
    ASSERT_TRUE(t.defined()) << n;
    EXPECT_EQ(std::string(diffprobe::dtype_name(t.dtype())), e.dtype) << name << "/" << n;
    EXPECT_EQ(t.shape(), diffprobe::Shape(e.shape)) << name << "/" << n;
    EXPECT_EQ(t.layout(), diffprobe::Layout::Contiguous) << name << "/" << n;
    const Tensor want = diffprobe::io::load_npy(dir / name / (std::to_string(e.index) + ".npy"));
    expect_identical(t, want, name + "/" + n, false);  // the dtype was checked against the manifest
  }
}

/// Raw little-endian float64 values (the .expect files).
inline std::vector<double> read_f64(const fs::path& p) {
  const std::string s = read_file(p);
  std::vector<double> v(s.size() / 8);
  std::memcpy(v.data(), s.data(), v.size() * 8);
  return v;
}

/// Whether `addr` lies in a memory mapping of `file` (per /proc/self/maps).
inline bool address_maps_file(const void* addr, const fs::path& file) {
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  const std::string want = fs::canonical(file).string();
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) != 2) continue;
    if (a < lo || a >= hi) continue;
    const auto slash = line.find('/');
    return slash != std::string::npos && line.substr(slash) == want;
  }
  return false;
}

/// Whether any part of `file` is memory-mapped in this process.
inline bool file_is_mapped(const fs::path& file) {
  const std::string want = fs::canonical(file).string();
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const auto slash = line.find('/');
    if (slash != std::string::npos && line.substr(slash) == want) return true;
  }
  return false;
}

/// Resident set size of this process in bytes.
inline std::size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace iotest

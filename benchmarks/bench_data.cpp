// The data side of extraction: decoding + preprocessing one image per core, and listing an
// ImageNet-sized class-folder tree (torchvision ImageFolder order: sorted classes, sorted files).
//   bench_data                                  decode/preprocess, and a 100 x 100 tree
//   bench_data --classes=1000 --per_class=1281  the ImageNet training set's 1,281,167 files
//             --tree=DIR (default build/bench/tree_<classes>x<per_class>, made once, empty files)
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "diffprobe/data/image.hpp"
#include "diffprobe/data/image_folder.hpp"
#include "diffprobe/data/transform.hpp"

using namespace diffprobe;
using namespace diffprobe::data;
namespace fs = std::filesystem;

namespace {

int g_classes = 100, g_per_class = 100;
std::string g_tree;

// A photo-like 8-bit RGB image (smooth gradients plus noise), encoded as JPEG quality 90.
std::vector<std::uint8_t> jpeg_of_size(int w, int h) {
  std::mt19937 rng(1);
  Image img = Image::blank(w, h, 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        img.at(y, x, c) = static_cast<std::uint16_t>((x * 255 / w + y * 128 / h + c * 40 + rng() % 24) % 256);
  const fs::path p = fs::temp_directory_path() / ("bench_data_" + std::to_string(w) + ".jpg");
  write_jpeg(p, img, 90);
  std::ifstream f(p, std::ios::binary);
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(f)), {});
  fs::remove(p);
  return bytes;
}

// Decode + the adm preprocessing to S x S, one image per iteration on one thread.
void BM_DecodeAndPreprocess(benchmark::State& state) {
  const int side = static_cast<int>(state.range(0)), S = static_cast<int>(state.range(1));
  const auto bytes = jpeg_of_size(side * 4 / 3, side);  // 4:3 photos, like ImageNet's
  const Transform t = Transform::eval();
  std::vector<float> out(static_cast<std::size_t>(3 * S * S));
  for (auto _ : state) {
    const Image img = decode_image(bytes, "bench.jpg");
    t.apply(img, InputSpec{3, S}, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["images_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(std::to_string(side * 4 / 3) + "x" + std::to_string(side) + " JPEG -> " + std::to_string(S));
}
BENCHMARK(BM_DecodeAndPreprocess)
    ->Args({256, 256})
    ->Args({375, 256})
    ->Args({500, 256})
    ->Unit(benchmark::kMillisecond);

fs::path tree() {
  if (!g_tree.empty()) return g_tree;
  return fs::path("build/bench") / ("tree_" + std::to_string(g_classes) + "x" + std::to_string(g_per_class));
}

// Empty .JPEG files in class folders named like ImageNet's (n01440764, ...), made once.
void make_tree(const fs::path& root) {
  if (fs::exists(root / ".complete")) return;
  std::fprintf(stderr, "making %s (%d x %d files) ...\n", root.c_str(), g_classes, g_per_class);
  for (int c = 0; c < g_classes; ++c) {
    char cls[16];
    std::snprintf(cls, sizeof cls, "n%08d", 1440764 + 7919 * c);
    const fs::path d = root / cls;
    fs::create_directories(d);
    for (int i = 0; i < g_per_class; ++i) {
      char name[48];
      std::snprintf(name, sizeof name, "%s_%d.JPEG", cls, 1000 + i * 37);
      std::FILE* f = std::fopen((d / name).c_str(), "wb");
      if (f) std::fclose(f);
    }
  }
  std::ofstream(root / ".complete") << "ok\n";
}

void BM_ListImageFolder(benchmark::State& state) {
  const fs::path root = tree();
  make_tree(root);
  std::int64_t files = 0;
  for (auto _ : state) {
    const ImageFolder ds(root, InputSpec{3, 256});
    files = ds.size();
    benchmark::DoNotOptimize(files);
  }
  state.counters["files"] = static_cast<double>(files);
  state.counters["files_per_s"] = benchmark::Counter(
      static_cast<double>(files) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_ListImageFolder)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--classes=", 0) == 0)
      g_classes = std::stoi(a.substr(10));
    else if (a.rfind("--per_class=", 0) == 0)
      g_per_class = std::stoi(a.substr(12));
    else if (a.rfind("--tree=", 0) == 0)
      g_tree = a.substr(7);
    else
      rest.push_back(argv[i]);
  }
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}

// Writes small valid inputs for the fuzz targets with the library's own writers:
//   fuzz_make_seeds OUT   ->  OUT/<target>/<name> for fuzz_png, fuzz_jpeg, fuzz_npy,
//   fuzz_safetensors, fuzz_feature_file, fuzz_head, fuzz_unet_config, fuzz_int8_calibration.
// tests/fuzz/make_seeds.py adds what needs PyTorch / NumPy (checkpoints, pickles, IDX, weights of
// a small U-Net). scripts/fuzz.sh runs both into build/fuzz/seeds/; nothing here is committed.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "diffprobe/core/error.hpp"
#include "diffprobe/core/tensor.hpp"
#include "diffprobe/data/image.hpp"
#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/heads/head.hpp"
#include "diffprobe/io/npy.hpp"
#include "diffprobe/io/safetensors.hpp"
#include "diffprobe/model/int8_calibration.hpp"
#include "diffprobe/model/unet_config.hpp"

using namespace diffprobe;
namespace fs = std::filesystem;

namespace {

fs::path dir(const fs::path& out, const char* target) {
  fs::create_directories(out / target);
  return out / target;
}

Tensor ramp(const Shape& s, DType dtype = DType::F32) {
  std::vector<float> v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 17) * 0.25f - 1.0f;
  Tensor t = Tensor::from_vector(s, v);
  return dtype == DType::F32 ? t : t.to_dtype(dtype);
}

Tensor labels(std::int64_t n) {
  Tensor t = Tensor::zeros(Shape{n}, DType::I64);
  for (std::int64_t i = 0; i < n; ++i) t.data<std::int64_t>()[i] = i % 3;
  return t;
}

data::Image image(int w, int h, int channels, int depth) {
  data::Image img = data::Image::blank(w, h, channels, depth);
  for (std::size_t i = 0; i < img.samples.size(); ++i)
    img.samples[i] = static_cast<std::uint16_t>((i * 37) % static_cast<std::size_t>(img.max_value() + 1));
  return img;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_seeds OUT\n");
    return 2;
  }
  const fs::path out = argv[1];
  try {
    // Images: every channel count and depth as PNG, grey and RGB JPEGs at two qualities.
    const fs::path png = dir(out, "fuzz_png"), jpeg = dir(out, "fuzz_jpeg");
    for (int c = 1; c <= 4; ++c)
      for (int depth : {8, 16})
        data::write_png(png / ("c" + std::to_string(c) + "_d" + std::to_string(depth) + ".png"),
                        image(5, 3, c, depth));
    data::write_png(png / "wide.png", image(33, 2, 3, 8));
    for (int c : {1, 3})
      for (int q : {50, 95})
        data::write_jpeg(jpeg / ("c" + std::to_string(c) + "_q" + std::to_string(q) + ".jpg"),
                         image(12, 9, c, 8), q);
    data::write_jpeg(jpeg / "mcu.jpg", image(17, 16, 3, 8), 75);

    // NumPy arrays the library writes.
    const fs::path npy = dir(out, "fuzz_npy");
    io::save_npy(npy / "f32.npy", ramp(Shape{2, 3}));
    io::save_npy(npy / "f16.npy", ramp(Shape{4}, DType::F16));
    io::save_npy(npy / "i64.npy", labels(5));
    io::save_npy(npy / "scalar.npy", ramp(Shape{}));
    io::save_npy(npy / "empty.npy", ramp(Shape{0, 3}));

    // Safetensors: every stored float dtype, integers, metadata, an empty tensor.
    const fs::path st = dir(out, "fuzz_safetensors");
    for (DType d : {DType::F32, DType::F16, DType::BF16}) {
      io::NamedTensors t;
      t.set("a.weight", ramp(Shape{3, 2}));
      t.set("b", ramp(Shape{4}));
      t.set("labels", labels(3));
      t.set("empty", ramp(Shape{0, 2}));
      t.metadata["note"] = "seed";
      io::save_safetensors(st / (std::string("t_") + std::string(dtype_name(d)) + ".safetensors"), t, d);
    }

    // Feature files: two features, with and without labels, f32 / f16 / bf16.
    const fs::path ff = dir(out, "fuzz_feature_file");
    FeatureMetadata m;
    m.weights_sha256 = std::string(64, 'a');
    m.config_json = R"({"image_size": 32, "num_channels": 64})";
    m.timesteps = {90, 150};
    m.blocks = {19, 24};
    m.pooling = "avg:2";
    m.noise_seed = 7;
    m.preprocessing = "seed";
    m.extra["note"] = "x";
    for (DType d : {DType::F32, DType::F16, DType::BF16}) {
      io::NamedTensors t;
      t.set("t90.b19", ramp(Shape{3, 2, 2, 2}));
      t.set("t150.b24", ramp(Shape{3, 5}));
      if (d == DType::F32) t.set("labels", labels(3));
      save_features(ff / (std::string("f_") + std::string(dtype_name(d)) + ".safetensors"), t, m, d);
    }

    // Heads: one of each kind, small; one with standardisation; one stored as f16.
    const fs::path hd = dir(out, "fuzz_head");
    Head lin = Head::linear(Shape{6}, 3);
    lin.save(hd / "linear.safetensors");
    io::NamedTensors sd = lin.state_dict();
    sd.set("standardize.0.mean", ramp(Shape{6}));
    sd.set("standardize.0.std", Tensor::from_vector(Shape{6}, std::vector<float>(6, 2.0f)));
    lin.load_state_dict(sd);
    lin.save(hd / "linear_std.safetensors");
    Head::mlp(Shape{6}, std::vector<int>{4}, 3).save(hd / "mlp_f16.safetensors", DType::F16);
    Head::cnn(Shape{2, 4, 4}, 3, CnnHeadConfig{.channels = {3}, .max_pool = 2}).save(hd / "cnn.safetensors");
    const AttentionHeadConfig a{.dim = 4, .depth = 1, .heads = 2, .mlp_ratio = 1, .max_pool = 2};
    Head::attention(Shape{2, 2, 2}, 2, a).save(hd / "attention.safetensors");
    Head::fusion({{Shape{2, 2, 2}}, {Shape{2, 2, 2}}}, 2, a).save(hd / "fusion.safetensors");

    // U-Net configs: every preset, and small ones.
    const fs::path uc = dir(out, "fuzz_unet_config");
    for (const auto& name : UNetConfig::preset_names())
      std::ofstream(uc / (name + ".json")) << UNetConfig::preset(name).to_json();
    std::ofstream(uc / "small.json")
        << R"({"image_size": 8, "num_channels": 8, "channel_mult": "1,2", "num_res_blocks": 1, "attention_resolutions": "4", "num_heads": 2})";
    std::ofstream(uc / "minimal.json") << R"({"image_size": 32})";
    const fs::path ic = dir(out, "fuzz_int8_calibration");
    Int8Calibration cal;
    cal.scales = {{"input_blocks.1.0.in_layers.2", 0.125f}, {"middle_block.1.qkv", 0.0039f}};
    cal.images = 64;
    cal.timesteps = {10, 90};
    cal.weights_sha256 = std::string(64, 'a');
    cal.config_json = UNetConfig::preset("fmnist_default").to_json();
    std::ofstream(ic / "fmnist.json") << cal.to_json();
    cal.config_json.clear();
    cal.method = Int8ScaleMethod::Mean;
    std::ofstream(ic / "no_config.json") << cal.to_json();
  } catch (const Error& e) {
    std::fprintf(stderr, "fuzz_make_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}

// The ADM U-Net: loading and checking the state dict, and the forward pass that stops at the
// deepest requested block. The layers are in model/layers/, their placement in
// model/unet_architecture.cpp.
#include "diffprobe/model/unet.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "core/text.hpp"
#include "diffprobe/core/threads.hpp"
#include "diffprobe/diffusion/counter_noise.hpp"
#include "diffprobe/io/torch_checkpoint.hpp"
#include "diffprobe/ops/elementwise.hpp"
#include "io/mapped_file.hpp"
#include "model/unet_architecture.hpp"

namespace diffprobe {

struct UNet::Impl {
  UNetConfig config;
  detail::UNetArchitecture arch;
  std::vector<std::string> notes;
  io::NamedTensors weights;  // f32, contiguous; the ops hold references into these
  std::int64_t parameters = 0;
  std::vector<detail::NamedConv> convs;  // every convolution, sharing the layers' int8 settings
  std::optional<Int8Calibration> calibration;
  std::atomic<bool> recording{false};  // an Int8CalibrationRecorder is attached
};

namespace {

Tensor f32_contiguous(const Tensor& t) {
  Tensor c = t.dtype() == DType::F32 ? t : t.to_dtype(DType::F32);
  return c.layout() == Layout::Contiguous ? c : c.to_layout(Layout::Contiguous);
}

void check_block(int block, int num_blocks, const char* where) {
  if (block < 0 || block > num_blocks)
    throw ArgumentError(where, "block " + std::to_string(block) +
                                   " is out of range: this model has blocks 1.." +
                                   std::to_string(num_blocks) + " (and 0 = out)");
}

// What a forward to `blocks` runs: paper blocks 1..deepest, then the output head if 0 is asked.
struct Reach {
  int deepest = 0;
  bool want_out = false;
};
Reach reach_of(std::span<const int> blocks, int num_blocks, const char* where) {
  Reach r;
  for (const int b : blocks) {
    check_block(b, num_blocks, where);
    if (b == 0) r.want_out = true;
    r.deepest = std::max(r.deepest, b);
  }
  if (r.want_out) r.deepest = num_blocks;
  return r;
}

}  // namespace

ExecContext activation_context(const ExecContext& ctx) {
  ExecContext run = ctx;
  const bool reduced = ctx.precision == Precision::BF16 || ctx.precision == Precision::INT8;
  run.activations = ctx.device.is_cpu() && reduced ? DType::BF16 : DType::F32;
  return run;
}

// ---- Construction ----------------------------------------------------------------------------

std::vector<WeightSpec> unet_weight_specs(const UNetConfig& c) {
  return detail::build_unet_architecture(c).weight_specs();
}

std::int64_t unet_num_parameters(const UNetConfig& config) {
  std::int64_t n = 0;
  for (const auto& s : unet_weight_specs(config)) n += s.shape.numel();
  return n;
}

namespace {

// The first convolution (3 input channels) and the output head's stay bf16 in the int8 mode.
bool is_int8_convolution(const std::string& name) {
  return name != "input_blocks.0.0" && !name.starts_with("out.");
}

// Weights this large are handed back to the kernel after their finiteness check (smaller ones are
// not worth a system call).
constexpr std::size_t kReleaseBytes = std::size_t{1} << 20;

void validate_state_dict(const std::vector<WeightSpec>& specs, const io::NamedTensors& w) {
  std::vector<std::string> missing, misshaped, unexpected;
  std::set<std::string> known;
  for (const auto& s : specs) {
    known.insert(s.name);
    if (!w.contains(s.name)) {
      missing.push_back(s.name + " " + s.shape.str());
    } else {
      const Tensor& t = w.at(s.name);
      if (t.shape() != s.shape)
        misshaped.push_back(s.name + ": expected " + s.shape.str() + ", got " + t.shape().str());
      else if (!is_floating(t.dtype()))
        misshaped.push_back(s.name + ": expected a floating dtype, got " +
                            std::string(dtype_name(t.dtype())));
    }
  }
  for (const auto& [name, t] : w)
    if (!known.count(name)) unexpected.push_back(name + " " + t.shape().str());
  if (missing.empty() && misshaped.empty() && unexpected.empty()) return;
  std::ostringstream os;
  os << "the weights do not match the configuration";
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    os << "\n  " << v.size() << " " << what << ":";
    for (std::size_t i = 0; i < v.size() && i < 12; ++i) os << "\n    " << v[i];
    if (v.size() > 12) os << "\n    ... and " << v.size() - 12 << " more";
  };
  list("missing keys", missing);
  list("unexpected keys", unexpected);
  list("mis-shaped keys", misshaped);
  throw ConfigError("UNet::from_weights", os.str());
}

}  // namespace

UNet::UNet(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
UNet::UNet(UNet&&) noexcept = default;
UNet& UNet::operator=(UNet&&) noexcept = default;
UNet::~UNet() = default;

UNet UNet::from_weights(const UNetConfig& config, const io::NamedTensors& weights) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->arch = detail::build_unet_architecture(config);
  const auto specs = impl->arch.weight_specs();
  validate_state_dict(specs, weights);
  for (const auto& s : specs) {
    Tensor t = f32_contiguous(weights.at(s.name));
    // A NaN or infinity in a weight would make every feature NaN, silently: refuse it by name.
    const float* v = t.data<const float>();
    for (std::int64_t i = 0; i < t.numel(); ++i)
      if (!std::isfinite(v[i]))
        throw NumericError("UNet::from_weights",
                           "weight '" + s.name + "' holds " + (std::isnan(v[i]) ? "NaN" : "an infinity") +
                               " at index " + std::to_string(i) + " of " + t.shape().str());
    // Checking read every page of a memory-mapped checkpoint; hand them back, so that loading
    // does not hold the whole file resident (only the blocks a forward prepares read it again,
    // and their packed copies are what stays). 2.12 -> 0.02 GB after loading the 256x256 model.
    if (t.nbytes() >= kReleaseBytes) io::detail::release_file_pages(v, t.nbytes());
    impl->parameters += t.numel();
    impl->weights.set(s.name, t);
  }
  std::vector<WeightSpec> bound;
  detail::WeightTable bind(bound, impl->weights, &impl->convs);
  impl->arch.weights(bind);
  for (const auto& c : impl->convs)
    if (!is_int8_convolution(c.name)) c.conv.set_int8_input({ops::Int8Input::Mode::Bf16, 0.0f});
  impl->weights.metadata = weights.metadata;
  return UNet(std::move(impl));
}

UNet UNet::random(const UNetConfig& config, std::uint64_t seed) {
  // The library's counter-based normal noise (one stream per tensor), not std::normal_distribution,
  // whose values differ between standard libraries: a seed gives the same model everywhere.
  io::NamedTensors w;
  std::uint64_t index = 0;
  for (const auto& s : unet_weight_specs(config)) {
    Tensor t = Tensor::empty(s.shape);
    std::vector<float> normal(static_cast<std::size_t>(t.numel()));
    gaussian_noise({seed, index++, 0x5EED, 0}, normal.data(), t.numel());
    float* p = t.data<float>();
    const bool is_norm = s.shape.rank() == 1 && s.name.find(".weight") != std::string::npos;
    const bool is_bias = s.name.ends_with(".bias");
    double fan_in = 1;
    for (int i = 1; i < s.shape.rank(); ++i) fan_in *= static_cast<double>(s.shape[i]);
    const float scale = is_bias ? 0.05f : is_norm ? 0.1f : static_cast<float>(1.0 / std::sqrt(fan_in));
    for (std::int64_t i = 0; i < t.numel(); ++i)
      p[i] = (is_norm ? 1.0f : 0.0f) + scale * normal[static_cast<std::size_t>(i)];
    w.set(s.name, t);
  }
  return from_weights(config, w);
}

UNet UNet::load(const std::filesystem::path& path, const LoadOptions& options) {
  io::NamedTensors weights = io::load_weights(path, options.file_access);
  std::vector<std::string> notes;
  UNetConfig config;
  if (options.config) {
    config = *options.config;
    notes.push_back("config: given by the caller");
  } else if (options.preset) {
    config = UNetConfig::preset(*options.preset);
    notes.push_back("config: preset " + *options.preset);
  } else if (auto p = UNetConfig::preset_for_filename(path.filename().string())) {
    config = UNetConfig::preset(*p);
    notes.push_back("config: preset " + *p + " (from the file name)");
  } else if (weights.metadata.count("config")) {
    config = UNetConfig::from_json(weights.metadata.at("config"));
    notes.push_back("config: from the file's metadata");
  } else {
    UNetConfig base;
    if (options.image_size) base.image_size = *options.image_size;
    ConfigInference inf = infer_config(weights, base);
    config = inf.config;
    notes.push_back("config: inferred from the weights' shapes");
    for (const auto& s : inf.inferred) notes.push_back("  inferred " + s);
    for (const auto& s : inf.assumed) notes.push_back("  assumed " + s);
  }
  if (options.image_size && !options.config) config.image_size = *options.image_size;
  UNet net = from_weights(config, weights);
  net.impl_->notes = std::move(notes);
  return net;
}

// ---- Queries ---------------------------------------------------------------------------------

const UNetConfig& UNet::config() const noexcept { return impl_->config; }
const std::vector<std::string>& UNet::inference_notes() const noexcept { return impl_->notes; }
int UNet::num_input_blocks() const noexcept { return impl_->arch.num_input_blocks; }
int UNet::num_blocks() const noexcept { return impl_->arch.num_blocks(); }
std::int64_t UNet::num_parameters() const noexcept { return impl_->parameters; }

Shape UNet::input_shape(std::int64_t batch) const {
  return {batch, impl_->config.in_channels, impl_->config.image_size, impl_->config.image_size};
}

int parse_block(const std::string& text) {
  if (text == "out") return 0;
  if (const auto b = detail::parse_integer(text, 0, 9999)) return static_cast<int>(*b);
  throw ArgumentError("parse_block", "'" + text + "' is not a block number (1, 2, ..., or 0/out)");
}

std::vector<BlockInfo> UNet::block_infos() const { return unet_block_infos(impl_->config); }

std::vector<BlockInfo> unet_block_infos(const UNetConfig& config) {
  detail::UNetArchitecture a = detail::build_unet_architecture(config);
  const auto specs = a.weight_specs();  // one architecture serves the specs and the shape walk
  auto params_under = [&](const std::string& prefix) {
    std::int64_t n = 0;
    for (const auto& s : specs)
      if (s.name.starts_with(prefix + ".")) n += s.shape.numel();
    return n;
  };
  std::vector<BlockInfo> infos;
  double flops = 0;
  a.walk(a.num_blocks(), true, [&](int block, const detail::PlacedLayer& l, const Shape& in) {
    const std::string name = block == 0 ? l.prefix : a.block(block).name;
    if (infos.empty() || infos.back().block != block) {
      if (!infos.empty()) infos.back().gflop = flops / 1e9;
      flops = 0;
      BlockInfo info;
      info.block = block;
      info.name = name;
      info.parameters = params_under(name);
      infos.push_back(info);
    }
    BlockInfo& info = infos.back();
    info.output_shape = l.layer->out_shape(in, flops);
    info.description += (info.description.empty() ? "" : " + ") + l.layer->describe();
  });
  infos.back().gflop = flops / 1e9;
  return infos;
}

Shape UNet::block_output_shape(int block, std::int64_t batch) const {
  check_block(block, num_blocks(), "UNet::block_output_shape");
  const auto infos = block_infos();
  const Shape s =
      block == 0 ? infos.back().output_shape : infos[static_cast<std::size_t>(block - 1)].output_shape;
  return {batch, s[1], s[2], s[3]};
}

// ---- Forward ---------------------------------------------------------------------------------

std::map<int, Tensor> UNet::forward(const Tensor& x_t, const Tensor& t, const Tensor& labels,
                                    std::span<const int> blocks, const ExecContext& ctx) const {
  return forward(x_t, t, labels, blocks, ctx, BlockCallback());
}

std::map<int, Tensor> UNet::forward(const Tensor& x_t, const Tensor& t, const Tensor& labels,
                                    std::span<const int> blocks, const ExecContext& ctx,
                                    const BlockCallback& on_block) const {
  constexpr const char* where = "UNet::forward";
  const auto& c = impl_->config;
  if (!x_t.defined()) throw ArgumentError(where, "x_t is undefined");
  if (x_t.dtype() != DType::F32)
    throw DTypeError(where, "x_t must be f32, got " + std::string(dtype_name(x_t.dtype())));
  if (!(x_t.device() == ctx.device))
    throw DeviceError(where,
                      "x_t is on " + x_t.device().str() + ", the context asks for " + ctx.device.str());
  const std::int64_t N = x_t.rank() == 4 ? x_t.dim(0) : 0;
  if (x_t.rank() != 4 || x_t.dim(1) != c.in_channels || x_t.dim(2) != c.image_size ||
      x_t.dim(3) != c.image_size)
    throw ShapeError(where, "x_t must be [N, " + std::to_string(c.in_channels) + ", " +
                                std::to_string(c.image_size) + ", " + std::to_string(c.image_size) +
                                "], got " + x_t.shape().str());
  if (N < 1) throw ShapeError(where, "x_t has an empty batch");
  if (!t.defined() || t.dtype() != DType::F32 || t.shape() != Shape{N})
    throw ShapeError(where, "t must be f32 [" + std::to_string(N) + "], got " + t.str());
  if (blocks.empty()) throw ArgumentError(where, "no block requested");
  const auto [deepest, want_out] = reach_of(blocks, num_blocks(), where);
  if (c.class_cond) {
    if (!labels.defined()) throw ArgumentError(where, "this model is class-conditional: labels are required");
    if (labels.dtype() != DType::I64 || labels.shape() != Shape{N})
      throw ShapeError(where, "labels must be i64 [" + std::to_string(N) + "], got " + labels.str());
    if (!labels.device().is_cpu()) throw DeviceError(where, "labels must be on the CPU");
    for (std::int64_t i = 0; i < N; ++i) {
      const std::int64_t y = labels.data<std::int64_t>()[i];
      if (y < 0 || y >= c.num_classes)
        throw ArgumentError(where, "label " + std::to_string(y) + " of sample " + std::to_string(i) +
                                       " outside [0, " + std::to_string(c.num_classes) + ")");
    }
  } else if (labels.defined()) {
    throw ArgumentError(where, "labels given, but this model is not class-conditional");
  }
  if (x_t.device().is_cpu()) {
    const Tensor xc = x_t;
    for (std::int64_t i = 0; i < xc.numel(); ++i) {
      const float v = xc.data<float>()[i];  // layout does not matter for a finiteness check
      if (!std::isfinite(v))
        throw NumericError(where, "x_t holds a non-finite value (" + std::to_string(v) + ")");
    }
    for (std::int64_t i = 0; i < N; ++i)
      if (!std::isfinite(t.data<float>()[i])) throw NumericError(where, "t holds a non-finite value");
  }

  // One pass for a planning allocator: every activation below is freed before it ends, except
  // the requested blocks' outputs, which escape to the caller.
  const AllocatorPass pass(ctx.allocator);
  ThreadScope threads(ctx.threads);
  const auto& arch = impl_->arch;
  ExecContext emb_ctx = ctx;
  emb_ctx.activations = DType::F32;  // the embedding is f32 in every mode
  const Tensor emb = arch.embedding.forward(t, labels, emb_ctx);
  // The reduced precisions store activations in bf16 on the CPU (half the traffic of every op
  // between the convolutions); the returned block outputs are f32 whatever runs inside.
  const ExecContext run = activation_context(ctx);
  const auto as_f32 = [&](const Tensor& a) {
    return a.dtype() == DType::F32 ? a : a.to_dtype(DType::F32, ctx.allocator);
  };

  const std::set<int> wanted(blocks.begin(), blocks.end());
  std::map<int, Tensor> result;
  const int I = num_input_blocks();
  std::vector<Tensor> skips(static_cast<std::size_t>(I));
  // Activations are NHWC end to end. A device tensor in NCHW is converted on the host (one
  // round trip of the input only; FeatureExtractor uploads NHWC directly).
  Tensor h = x_t.layout() == Layout::NHWC ? x_t
             : x_t.device().is_cpu()
                 ? x_t.to_layout(Layout::NHWC, ctx.allocator)
                 : x_t.to_device(Device::cpu()).to_layout(Layout::NHWC).to_device(x_t.device());
  for (int b = 1; b <= deepest; ++b) {
    if (b <= I) {
      h = arch.block(b).forward(std::move(h), emb, run);
      // Output block j consumes the skip of input block I-1-j, i.e. paper block 2I+1-(b-1).
      const int consumer = 2 * I + 2 - b;
      if (consumer <= deepest) skips[static_cast<std::size_t>(b - 1)] = h;
    } else if (b == I + 1) {
      h = arch.block(b).forward(std::move(h), emb, run);
    } else {
      const int j = b - I - 2;
      Tensor& skip = skips[static_cast<std::size_t>(I - 1 - j)];
      Tensor cat = ops::concat_channels(h, skip, run);
      skip = Tensor();  // released: nothing later needs it
      h = Tensor();
      h = arch.block(b).forward(std::move(cat), emb, run);
    }
    if (wanted.count(b)) result[b] = as_f32(h);
    if (on_block) on_block(b, h);
  }
  if (want_out) {
    const Tensor out = arch.out.layer->forward(std::move(h), emb, run);
    result[0] = as_f32(out);
    if (on_block) on_block(0, out);
  }
  return result;
}

Tensor UNet::forward(const Tensor& x_t, const Tensor& t, const Tensor& labels, const ExecContext& ctx) const {
  const int out = 0;
  return forward(x_t, t, labels, std::span<const int>(&out, 1), ctx).at(0);
}

void UNet::prepare(const ExecContext& ctx) const {
  const int all = 0;
  prepare(ctx, std::span<const int>(&all, 1));
}

void UNet::prepare(const ExecContext& ctx, std::span<const int> blocks) const {
  const auto [deepest, want_out] = reach_of(blocks, num_blocks(), "UNet::prepare");
  impl_->arch.embedding.prepare(ctx);
  // Each layer packs its weights for the shape it runs at for an image of the configured size
  // (batch 1): the weight layout can depend on it (small maps run as a matmul on the CPU).
  // Another image size still works; a layer whose layout then differs packs again on first use.
  // Only what a forward to the deepest block runs: packed weights of later blocks would only
  // hold memory.
  impl_->arch.walk(deepest, want_out,
                   [&](int, const detail::PlacedLayer& l, const Shape& in) { l.layer->prepare(ctx, in); });
}

// ---- int8 ------------------------------------------------------------------------------------

std::vector<std::string> UNet::int8_convolutions() const {
  std::vector<std::string> names;
  for (const auto& c : impl_->convs)
    if (is_int8_convolution(c.name)) names.push_back(c.name);
  return names;
}

void UNet::set_int8_calibration(const Int8Calibration& calibration) {
  constexpr const char* where = "UNet::set_int8_calibration";
  std::map<std::string, const ops::Conv2d*> by_name;
  for (const auto& c : impl_->convs)
    if (is_int8_convolution(c.name)) by_name[c.name] = &c.conv;
  std::vector<std::string> unknown;
  for (const auto& [name, scale] : calibration.scales) {
    if (!by_name.count(name)) unknown.push_back(name);
    if (!(scale >= 1e-30f && scale <= 1e30f))
      throw ConfigError(where, "the scale of '" + name + "' is not in [1e-30, 1e30]");
  }
  if (!unknown.empty()) {
    std::string list;
    for (std::size_t i = 0; i < unknown.size() && i < 5; ++i) list += "\n  " + unknown[i];
    throw ConfigError(where, std::to_string(unknown.size()) +
                                 " calibrated convolutions are not int8 convolutions of this model "
                                 "(a calibration of another model?):" +
                                 list);
  }
  if (!calibration.config_json.empty() && UNetConfig::from_json(calibration.config_json) != impl_->config)
    throw ConfigError(where, "the calibration was made for another model configuration");
  for (const auto& [name, conv] : by_name) {
    const auto it = calibration.scales.find(name);
    conv->set_int8_input(it == calibration.scales.end()
                             ? ops::Int8Input{}
                             : ops::Int8Input{ops::Int8Input::Mode::Calibrated, it->second});
  }
  impl_->calibration = calibration;
}

void UNet::clear_int8_calibration() {
  for (const auto& c : impl_->convs)
    if (is_int8_convolution(c.name)) c.conv.set_int8_input({});
  impl_->calibration.reset();
}

std::vector<std::pair<std::string, ops::Conv2d>> UNet::int8_ops() const {
  std::vector<std::pair<std::string, ops::Conv2d>> out;
  for (const auto& c : impl_->convs)
    if (is_int8_convolution(c.name)) out.emplace_back(c.name, c.conv);
  return out;
}

bool UNet::mark_recording(bool on) const { return impl_->recording.exchange(on); }

const Int8Calibration* UNet::int8_calibration() const noexcept {
  return impl_->calibration ? &*impl_->calibration : nullptr;
}

}  // namespace diffprobe

#include "diffprobe/features/feature_extractor.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "diffprobe/core/threads.hpp"
#include "diffprobe/diffusion/counter_noise.hpp"

namespace diffprobe {

const Tensor& FeatureSet::at(int t, int block) const {
  auto it = items_.find({t, block});
  if (it == items_.end()) {
    std::string have;
    for (const auto& [k, v] : items_) {
      // (appended piece by piece: GCC 12 warns falsely, -Wrestrict, on "t" + std::string&&)
      if (!have.empty()) have += ", ";
      have.append("t").append(std::to_string(k.first)).append(".b").append(std::to_string(k.second));
    }
    throw ArgumentError("FeatureSet::at", "no features for t=" + std::to_string(t) + ", block " +
                                              std::to_string(block) + " (have: " + have + ")");
  }
  return it->second;
}

FeatureExtractor::FeatureExtractor(const UNet& model, ExtractOptions options)
    : model_(&model), options_(std::move(options)), schedule_(NoiseSchedule::for_model(model.config())) {
  constexpr const char* where = "FeatureExtractor";
  const auto& o = options_;
  if (o.timesteps.empty()) throw ArgumentError(where, "no timestep given");
  if (o.blocks.empty()) throw ArgumentError(where, "no block given");
  std::set<int> seen_t, seen_b;
  for (int t : o.timesteps) {
    if (t < 0 || t >= schedule_.steps())
      throw ArgumentError(where, "timestep " + std::to_string(t) + " outside [0, " +
                                     std::to_string(schedule_.steps()) + ") for this model's " +
                                     std::to_string(schedule_.steps()) + "-step schedule");
    if (!seen_t.insert(t).second)
      throw ArgumentError(where, "timestep " + std::to_string(t) + " given twice");
  }
  for (int b : o.blocks) {
    if (b < 0 || b > model.num_blocks())
      throw ArgumentError(where, "block " + std::to_string(b) +
                                     " is out of range: this model has blocks 1.." +
                                     std::to_string(model.num_blocks()) + " (0 = out)");
    if (!seen_b.insert(b).second) throw ArgumentError(where, "block " + std::to_string(b) + " given twice");
  }
  if (o.noise_draws < 1) throw ArgumentError(where, "noise_draws must be >= 1");
  if (o.noise != NoiseMode::Seeded && o.noise_draws != 1)
    throw ArgumentError(where, "several noise draws need seeded noise");
  if (o.batch_size < 1) throw ArgumentError(where, "batch_size must be >= 1");
  if (model.config().class_cond && !o.label)
    throw ArgumentError(where, "the model is class-conditional: a class label is required");
  if (!model.config().class_cond && o.label)
    throw ArgumentError(where, "a class label was given, but the model is not class-conditional");
  if (o.label && (*o.label < 0 || *o.label >= model.config().num_classes))
    throw ArgumentError(where, "label " + std::to_string(*o.label) + " outside [0, " +
                                   std::to_string(model.config().num_classes) + ")");
  if (o.pool)
    for (int b : o.blocks) (void)Pooler(*o.pool).pooled_shape(model.block_output_shape(b, 1));
}

Shape FeatureExtractor::feature_shape(int /*t*/, int block, std::int64_t n) const {
  const Shape s = model_->block_output_shape(block, n);
  return options_.pool ? Pooler(*options_.pool).pooled_shape(s) : s;
}

FeatureSet FeatureExtractor::extract(const Tensor& x0, std::int64_t first_index, const Tensor& eps,
                                     const ProgressFn& progress) const {
  constexpr const char* where = "FeatureExtractor::extract";
  const auto& o = options_;
  const Shape in = model_->input_shape(1);
  if (!x0.defined()) throw ArgumentError(where, "the images are undefined");
  if (x0.dtype() != DType::F32)
    throw DTypeError(where, "images must be f32, got " + std::string(dtype_name(x0.dtype())));
  if (x0.rank() != 4 || x0.dim(1) != in[1] || x0.dim(2) != in[2] || x0.dim(3) != in[3] || x0.dim(0) < 1)
    throw ShapeError(where, "images must be [N, " + std::to_string(in[1]) + ", " + std::to_string(in[2]) +
                                ", " + std::to_string(in[3]) + "], got " + x0.shape().str());
  if (!x0.device().is_cpu()) throw DeviceError(where, "images are read from CPU memory");
  if (first_index < 0) throw ArgumentError(where, "first_index must be >= 0");
  if ((o.noise == NoiseMode::Given) != eps.defined())
    throw ArgumentError(where, o.noise == NoiseMode::Given ? "NoiseMode::Given needs eps"
                                                           : "eps given, but the noise mode is not Given");
  if (eps.defined() && (eps.shape() != x0.shape() || eps.dtype() != DType::F32))
    throw ShapeError(where,
                     "eps must be f32 of the images' shape " + x0.shape().str() + ", got " + eps.str());

  const Tensor x = x0.layout() == Layout::Contiguous ? x0 : x0.to_layout(Layout::Contiguous);
  {
    // A NaN or infinite pixel would give that sample NaN features, written silently: refuse it by index.
    const float* p = x.data<const float>();
    const std::int64_t per_image = x.numel() / x.dim(0);
    for (std::int64_t k = 0; k < x.numel(); ++k)
      if (!std::isfinite(p[k]))
        throw NumericError(where, "image " + std::to_string(first_index + k / per_image) + " holds " +
                                      (std::isnan(p[k]) ? "NaN" : "an infinity") + " (value " +
                                      std::to_string(k % per_image) + " of " + in.str() + ")");
    if (eps.defined()) {
      const float* q = eps.data<const float>();
      for (std::int64_t k = 0; k < eps.numel(); ++k)
        if (!std::isfinite(q[k]))
          throw NumericError(
              where, "the noise of image " + std::to_string(first_index + k / per_image) + " is not finite");
    }
  }
  const Tensor e =
      !eps.defined() || eps.layout() == Layout::Contiguous ? eps : eps.to_layout(Layout::Contiguous);
  const std::int64_t N = x.dim(0), per = x.numel() / N;
  const auto nT = static_cast<std::int64_t>(o.timesteps.size());
  const int draws = o.noise == NoiseMode::Seeded ? o.noise_draws : 1;
  const std::optional<Pooler> pooler = o.pool ? std::optional<Pooler>(Pooler(*o.pool)) : std::nullopt;

  FeatureSet out;
  for (int t : o.timesteps)
    for (int b : o.blocks) out.set(t, b, Tensor::zeros(feature_shape(t, b, N)));

  // The memory plan serves one pass at a time: a concurrent call uses the default allocator.
  std::unique_lock<std::mutex> plan(plan_mu_, std::try_to_lock);
  ExecContext ctx = o.exec;
  if (!ctx.allocator && ctx.device.is_cpu() && plan.owns_lock()) ctx.allocator = &allocator_;
  const ThreadScope threads(ctx.device.is_cpu() ? ctx.threads : 1);
  // One noise buffer per thread: the noise of a sample is a function of its key alone, so the
  // samples (and, in a batch smaller than the thread count, pieces of a sample) can be noised in
  // parallel (Box-Muller's log and sincos cost ~2 % of a small model's extraction on one thread).
  std::vector<float> noise(static_cast<std::size_t>(per * threads.threads()));
  for (std::int64_t start = 0; start < N; start += o.batch_size) {
    const std::int64_t n = std::min<std::int64_t>(o.batch_size, N - start);
    for (int draw = 0; draw < draws; ++draw) {
      // All timesteps of this chunk form one batch: sample (ti, i) at row ti * n + i.
      Tensor xt = Tensor::empty({n * nT, in[1], in[2], in[3]});
      Tensor tv = Tensor::empty({n * nT});
      float* px = xt.data<float>();
      for (std::int64_t row = 0; row < n * nT; ++row)
        tv.data<float>()[row] = schedule_.model_timestep(o.timesteps[static_cast<std::size_t>(row / n)]);
      const std::int64_t rows = n * nT;
      const std::int64_t pieces =
          std::min<std::int64_t>(std::max<std::int64_t>(1, (threads.threads() + rows - 1) / rows),
                                 std::max<std::int64_t>(1, per / 256));
#pragma omp parallel for schedule(static) if (rows * pieces > 1)
      for (std::int64_t item = 0; item < rows * pieces; ++item) {
        const std::int64_t row = item / pieces, ti = row / n, i = row % n;
        const std::int64_t b = per * (item % pieces) / pieces, len = per * (item % pieces + 1) / pieces - b;
        const int t = o.timesteps[static_cast<std::size_t>(ti)];
        const float* src = x.data<const float>() + (start + i) * per + b;
        float* dst = px + row * per + b;
        if (o.noise == NoiseMode::None) {
          std::memcpy(dst, src, static_cast<std::size_t>(len) * sizeof(float));
          continue;
        }
        const float* ep;
        if (o.noise == NoiseMode::Given) {
          ep = e.data<const float>() + (start + i) * per + b;
        } else {
          float* mine = noise.data() + static_cast<std::size_t>(omp_get_thread_num()) * per;
          gaussian_noise({o.noise_seed, static_cast<std::uint64_t>(first_index + start + i),
                          static_cast<std::uint32_t>(t), static_cast<std::uint32_t>(draw)},
                         mine, b, len);
          ep = mine;
        }
        schedule_.q_sample(t, src, ep, dst, len);
      }
      Tensor labels;
      if (o.label) {
        labels = Tensor::empty({n * nT}, DType::I64);
        std::fill_n(labels.data<std::int64_t>(), n * nT, static_cast<std::int64_t>(*o.label));
      }
      const Tensor xd =
          o.exec.device.is_cpu() ? xt : xt.to_layout(Layout::NHWC).to_device(o.exec.device);  // NHWC upload
      const Tensor td = o.exec.device.is_cpu() ? tv : tv.to_device(o.exec.device);
      const auto feats = model_->forward(xd, td, labels, o.blocks, ctx);
      for (const auto& [b, f] : feats) {
        for (std::int64_t ti = 0; ti < nT; ++ti) {
          const int t = o.timesteps[static_cast<std::size_t>(ti)];
          Tensor part = f.slice_batch(ti * n, (ti + 1) * n);
          Tensor r = pooler ? pooler->pool(part, ctx)
                            : (part.device().is_cpu() ? part : part.to_device(Device::cpu()));
          if (r.layout() != Layout::Contiguous) r = r.to_layout(Layout::Contiguous);
          const Tensor& dst_t = out.at(t, b);
          const std::int64_t fper = dst_t.numel() / N;
          float* dst = dst_t.data<float>() + start * fper;
          const float* src = r.data<float>();
          if (o.check_finite)
            for (std::int64_t k = 0; k < n * fper; ++k)
              if (!std::isfinite(src[k]))
                throw NumericError(where, "the features of image " +
                                              std::to_string(first_index + start + k / fper) +
                                              " at t=" + std::to_string(t) + ", block " + std::to_string(b) +
                                              " are not finite (check_finite)");
          if (draws == 1) {
            std::memcpy(dst, src, static_cast<std::size_t>(n * fper) * sizeof(float));
          } else {
            for (std::int64_t k = 0; k < n * fper; ++k) dst[k] += src[k] / static_cast<float>(draws);
          }
        }
      }
    }
    if (progress) progress(start + n, N);
  }
  return out;
}

}  // namespace diffprobe

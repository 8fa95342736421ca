// Feature extraction: PoolSpec, Pooler, FeatureExtractor, data sets (files and NumPy arrays),
// run_extraction, feature files and FeatureRows.
#include <pybind11/operators.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>

#include "python/common.hpp"

namespace diffprobe::python {

namespace {

// The extractor with what it needs kept alive: the model (it holds a reference to it) and a lock
// (the extractor's memory plan is per extractor: calls on one extractor from several threads run
// one after the other; separate extractors run in parallel).
struct PyExtractor {
  std::shared_ptr<UNet> model;
  std::unique_ptr<FeatureExtractor> fx;
  std::unique_ptr<std::mutex> lock = std::make_unique<std::mutex>();
};

PoolSpec pool_from(const py::object& pool) {
  if (py::isinstance<PoolSpec>(pool)) return pool.cast<PoolSpec>();
  return PoolSpec::parse(pool.cast<std::string>());
}

py::dict feature_dict(const FeatureSet& fs) {
  py::dict d;
  for (const auto& [key, t] : fs.items()) d[py::make_tuple(key.first, key.second)] = to_numpy(t);
  return d;
}

FeatureSet feature_set_from(const py::dict& d, const char* where) {
  FeatureSet fs;
  for (const auto& [k, v] : d) {
    std::pair<int, int> key;
    if (py::isinstance<py::str>(k))
      key = parse_feature_name(k.cast<std::string>());
    else
      key = k.cast<std::pair<int, int>>();
    const py::array a = py::array::ensure(v);
    if (!a) throw DTypeError(where, "feature values must be arrays");
    // A C-contiguous copy only when the array is not one already; kept alive by the tensor.
    const py::array c = (a.flags() & py::array::c_style)
                            ? a
                            : py::array(py::module_::import("numpy").attr("ascontiguousarray")(a));
    fs.set(key.first, key.second, view_numpy(c, true));
  }
  return fs;
}

std::vector<std::filesystem::path> paths_from(const py::object& o) {
  if (py::isinstance<py::str>(o) || py::hasattr(o, "__fspath__")) return {o.cast<std::filesystem::path>()};
  return o.cast<std::vector<std::filesystem::path>>();
}

// A data set held in a NumPy array: float32 model inputs [N, C, S, S] used as they are, or uint8
// images [N, H, W(, C)] preprocessed like model_inputs(). Read on the job's decoding thread
// without the GIL: the array is referenced for the data set's lifetime, which the call spans.
class ArrayDataset : public data::Dataset {
 public:
  ArrayDataset(py::array images, const py::object& labels, int channels, int size, std::string preprocess)
      : images_(std::move(images)), spec_{channels, size}, preprocess_(std::move(preprocess)) {
    const auto& dt = images_.dtype();
    floats_ = dt.kind() == 'f' && dt.itemsize() == 4;
    // Validates shape and dtype with the first sample.
    (void)model_inputs(images_[py::slice(0, 1, 1)].cast<py::array>(), channels, size, preprocess_,
                       "run_extraction");
    if (!(images_.flags() & py::array::c_style))
      images_ = py::module_::import("numpy").attr("ascontiguousarray")(images_);
    n_ = images_.shape(0);
    per_in_ = static_cast<std::size_t>(images_.nbytes() / std::max<py::ssize_t>(1, n_));
    if (!labels.is_none()) {
      const Labels l = labels_from(labels);
      if (static_cast<std::int64_t>(l.size()) != n_)
        throw ShapeError("run_extraction", "labels must be [N] with N = " + std::to_string(n_));
      labels_ = Tensor::empty(Shape{n_}, DType::I64);
      for (std::size_t i = 0; i < l.size(); ++i) {
        labels_->data<std::int64_t>()[i] = l.values()[i];
        num_classes_ = std::max(num_classes_, l.values()[i] + 1);
      }
    }
  }
  std::int64_t size() const override { return n_; }
  data::InputSpec spec() const override { return spec_; }
  std::optional<Tensor> labels() const override { return labels_; }
  int num_classes() const override { return num_classes_; }
  std::vector<std::string> class_names() const override {
    std::vector<std::string> v;
    for (int i = 0; i < num_classes_; ++i) v.push_back(std::to_string(i));
    return v;
  }
  std::string describe() const override {
    return floats_ ? "array of model inputs f32 [N, " + std::to_string(spec_.channels) + ", " +
                         std::to_string(spec_.size) + ", " + std::to_string(spec_.size) + "]"
                   : "uint8 image array, preprocess " + preprocess_;
  }

 protected:
  void load(std::int64_t index, float* out) const override {
    const auto* base =
        static_cast<const std::uint8_t*>(images_.data()) + static_cast<std::size_t>(index) * per_in_;
    if (floats_) {
      std::memcpy(out, base, per_in_);
      return;
    }
    // uint8: one image through the same preprocessing as extract() (no GIL needed: raw memory).
    const int h = static_cast<int>(images_.shape(1)), w = static_cast<int>(images_.shape(2));
    const int c = images_.ndim() == 4 ? static_cast<int>(images_.shape(3)) : 1;
    preprocess_raw(base, h, w, c, out);
  }
  bool parallel_load() const override { return !floats_; }

 private:
  void preprocess_raw(const std::uint8_t* src, int h, int w, int c, float* out) const;
  py::array images_;
  data::InputSpec spec_;
  std::string preprocess_;
  bool floats_ = false;
  std::int64_t n_ = 0;
  std::size_t per_in_ = 0;
  std::optional<Tensor> labels_;
  int num_classes_ = 0;
};

}  // namespace

void ArrayDataset::preprocess_raw(const std::uint8_t* src, int h, int w, int c, float* out) const {
  preprocess_image(src, h, w, c, spec_.channels, spec_.size, preprocess_, out);
}

void bind_features(py::module_& m) {
  py::enum_<PoolKind>(m, "PoolKind")
      .value("Average", PoolKind::Average)
      .value("Max", PoolKind::Max)
      .value("GlobalAverage", PoolKind::GlobalAverage)
      .value("None_", PoolKind::None);

  py::class_<PoolSpec>(m, "PoolSpec")
      .def(py::init([](const py::object& spec) { return pool_from(spec); }), py::arg("spec") = "avg:2",
           "PoolSpec('avg:2'), 'max:4', 'gap' or 'none'.")
      .def_readwrite("kind", &PoolSpec::kind)
      .def_readwrite("size", &PoolSpec::size)
      .def_static("parse", &PoolSpec::parse, py::arg("text"))
      .def("__str__", &PoolSpec::str)
      .def("__repr__", [](const PoolSpec& p) { return "PoolSpec('" + p.str() + "')"; });

  py::class_<Pooler>(m, "Pooler",
                     "Pools a block's feature map [N, C, H, W] and flattens it (PyTorch's order).")
      .def(py::init([](const py::object& spec) { return Pooler(pool_from(spec)); }),
           py::arg("spec") = "avg:2")
      .def_property_readonly("spec", &Pooler::spec)
      .def(
          "pool",
          [](const Pooler& p, const py::array& f, int threads) {
            const Tensor t = view_numpy(f, false);
            ExecContext ctx;
            ctx.threads = threads;
            return to_numpy(without_gil([&] { return p.pool(t, ctx); }));
          },
          py::arg("features"), py::arg("threads") = 0, "[N, C, H, W] -> [N, C, p, p] (float32).")
      .def(
          "__call__",
          [](const Pooler& p, const py::array& f, int threads) {
            const Tensor t = view_numpy(f, false);
            ExecContext ctx;
            ctx.threads = threads;
            return to_numpy(without_gil([&] { return p(t, ctx); }));
          },
          py::arg("features"), py::arg("threads") = 0, "[N, C, H, W] -> [N, C*p*p] (float32).")
      .def(
          "pooled_shape",
          [](const Pooler& p, const std::vector<std::int64_t>& s) {
            return py::tuple(py::cast(p.pooled_shape(Shape(s)).vec()));
          },
          py::arg("shape"));

  py::class_<PyExtractor>(m, "FeatureExtractor", R"doc(
The paper's feature extraction: noise images to step t (counter-based noise keyed by noise_seed,
the sample's index and t), run the U-Net to each requested block, keep (and optionally pool) the
block's output. extract(images) returns {(t, block): float32 array}.)doc")
      .def(py::init([](std::shared_ptr<UNet> model, std::vector<int> timesteps, std::vector<int> blocks,
                       std::uint64_t noise_seed, const std::string& noise, int noise_draws,
                       std::optional<int> label, const py::object& pool, int batch_size,
                       const std::string& device, int threads, const std::string& precision) {
             if (!model) throw ArgumentError("FeatureExtractor", "model is None");
             ExtractOptions o;
             o.timesteps = std::move(timesteps);
             o.blocks = std::move(blocks);
             o.noise_seed = noise_seed;
             if (noise == "seeded")
               o.noise = NoiseMode::Seeded;
             else if (noise == "none")
               o.noise = NoiseMode::None;
             else if (noise == "given")
               o.noise = NoiseMode::Given;
             else
               throw ArgumentError("FeatureExtractor",
                                   "noise must be 'seeded', 'none' or 'given', got '" + noise + "'");
             o.noise_draws = noise_draws;
             o.label = label;
             if (!pool.is_none()) {
               const PoolSpec p = pool_from(pool);
               if (p.kind != PoolKind::None) o.pool = p;
             }
             o.batch_size = batch_size;
             o.exec.device = parse_device(device);
             o.exec.threads = threads;
             o.exec.precision = parse_precision(precision.c_str());
             PyExtractor e;
             e.model = std::move(model);
             e.fx = std::make_unique<FeatureExtractor>(*e.model, std::move(o));
             return e;
           }),
           py::arg("model"), py::kw_only(), py::arg("timesteps") = std::vector<int>{90},
           py::arg("blocks") = std::vector<int>{24}, py::arg("noise_seed") = 0, py::arg("noise") = "seeded",
           py::arg("noise_draws") = 1, py::arg("label") = py::none(), py::arg("pool") = py::none(),
           py::arg("batch_size") = 16, py::arg("device") = "cpu", py::arg("threads") = 0,
           py::arg("precision") = "fp32")
      .def(
          "extract",
          [](const PyExtractor& e, const py::array& images, std::int64_t first_index, const py::object& eps,
             const py::object& progress, const std::string& preprocess) {
            const Shape in = e.fx->input_spec();
            const Tensor x = model_inputs(images, static_cast<int>(in[1]), static_cast<int>(in[2]),
                                          preprocess, "FeatureExtractor.extract");
            Tensor ep;
            if (!eps.is_none())
              ep = model_inputs(py::array::ensure(eps), static_cast<int>(in[1]), static_cast<int>(in[2]),
                                "auto", "FeatureExtractor.extract (eps)");
            // Between batches: Ctrl-C, then the user's progress(done, total).
            const ProgressFn on_batch = [&progress](std::int64_t done, std::int64_t total) {
              py::gil_scoped_acquire gil;
              if (PyErr_CheckSignals() != 0) throw PythonErrorPending{};
              if (!progress.is_none()) {
                try {
                  progress(done, total);
                } catch (py::error_already_set& err) {
                  err.restore();
                  throw PythonErrorPending{};
                }
              }
            };
            const FeatureSet fs = without_gil([&] {
              const std::lock_guard<std::mutex> hold(*e.lock);
              return e.fx->extract(x, first_index, ep, on_batch);
            });
            return feature_dict(fs);
          },
          py::arg("images"), py::arg("first_index") = 0, py::arg("eps") = py::none(),
          py::arg("progress") = py::none(), py::arg("preprocess") = "auto",
          "images: float32 [N, C, S, S] in [-1, 1] (read in place, not copied) or uint8 [N, H, W(, C)] "
          "(preprocessed: see diffprobe.preprocess). first_index: the data-set index of images[0] (the noise "
          "key). Returns {(t, block): float32 [N, ...]}. The GIL is released; Ctrl-C stops between batches.")
      .def(
          "feature_shape",
          [](const PyExtractor& e, int t, int block, std::int64_t n) {
            return py::tuple(py::cast(e.fx->feature_shape(t, block, n).vec()));
          },
          py::arg("t"), py::arg("block"), py::arg("n") = 1)
      .def_property_readonly(
          "input_shape", [](const PyExtractor& e) { return py::tuple(py::cast(e.fx->input_spec().vec())); })
      .def_property_readonly("model", [](const PyExtractor& e) { return e.model; })
      .def_property_readonly("timesteps", [](const PyExtractor& e) { return e.fx->options().timesteps; })
      .def_property_readonly("blocks", [](const PyExtractor& e) { return e.fx->options().blocks; })
      .def_property_readonly("noise_seed", [](const PyExtractor& e) { return e.fx->options().noise_seed; })
      .def_property_readonly("batch_size", [](const PyExtractor& e) { return e.fx->options().batch_size; })
      .def_property_readonly("threads", [](const PyExtractor& e) { return e.fx->options().exec.threads; })
      .def_property_readonly(
          "precision",
          [](const PyExtractor& e) { return std::string(precision_name(e.fx->options().exec.precision)); })
      .def_property_readonly("pool", [](const PyExtractor& e) -> py::object {
        if (!e.fx->options().pool) return py::none();
        return py::cast(e.fx->options().pool->str());
      });

  // The C++ call alone, timed in C++ (benchmarks/python_overhead.py compares it with extract()).
  m.def(
      "_time_extract_cpp",
      [](const PyExtractor& e, const py::array& images, int repeats) {
        const Tensor x = view_numpy(images, false);
        std::vector<double> s;
        py::gil_scoped_release release;
        const std::lock_guard<std::mutex> hold(*e.lock);
        for (int r = 0; r < repeats; ++r) {
          const auto t0 = std::chrono::steady_clock::now();
          const FeatureSet fs = e.fx->extract(x, 0);
          s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        return s;
      },
      py::arg("extractor"), py::arg("images"), py::arg("repeats") = 1);

  // ---- Data sets ----
  py::class_<data::Dataset, std::shared_ptr<data::Dataset>>(
      m, "Dataset", "Images read in batches: an image folder, .npy or IDX file.")
      .def("__len__", &data::Dataset::size)
      .def_property_readonly("size", &data::Dataset::size)
      .def_property_readonly("channels", [](const data::Dataset& d) { return d.spec().channels; })
      .def_property_readonly("image_size", [](const data::Dataset& d) { return d.spec().size; })
      .def_property_readonly("num_classes", &data::Dataset::num_classes)
      .def_property_readonly("class_names", &data::Dataset::class_names)
      .def("describe", &data::Dataset::describe)
      .def("labels",
           [](const data::Dataset& d) -> py::object {
             const auto l = d.labels();
             if (!l) return py::none();
             return to_numpy(*l);
           })
      .def(
          "images",
          [](const data::Dataset& d, std::int64_t begin, std::optional<std::int64_t> end) {
            return to_numpy(without_gil([&] { return d.images(begin, end.value_or(d.size())); }));
          },
          py::arg("begin") = 0, py::arg("end") = py::none(),
          "Samples [begin, end) as float32 [n, C, S, S] in [-1, 1].")
      .def("set_threads", &data::Dataset::set_threads, py::arg("threads"));

  m.def(
      "open_dataset",
      [](const std::filesystem::path& input, std::optional<std::filesystem::path> labels, int channels,
         int size, std::int64_t limit, const std::string& preprocess) {
        const data::Transform tr = data::Transform::eval(data::parse_preprocess(preprocess));
        return std::shared_ptr<data::Dataset>(without_gil([&] {
          return data::open_dataset(input, labels, data::InputSpec{channels, size}, limit, tr);
        }));
      },
      py::arg("input"), py::arg("labels") = py::none(), py::kw_only(), py::arg("channels"), py::arg("size"),
      py::arg("limit") = 0, py::arg("preprocess") = "adm",
      "An image folder (class sub-folders), a .npy of model inputs, or an IDX images file (gzipped or not), "
      "as `diffprobe extract --input` reads it.");
  m.def(
      "array_dataset",
      [](const py::array& images, const py::object& labels, int channels, int size,
         const std::string& preprocess) {
        return std::shared_ptr<data::Dataset>(
            std::make_shared<ArrayDataset>(images, labels, channels, size, preprocess));
      },
      py::arg("images"), py::arg("labels") = py::none(), py::kw_only(), py::arg("channels"), py::arg("size"),
      py::arg("preprocess") = "auto",
      "A data set over a NumPy array (float32 model inputs or uint8 images).");

  // ---- The extraction job ----
  py::class_<Shard>(m, "Shard")
      .def(py::init([](int index, int count) {
             return Shard{index, count};
           }),
           py::arg("index") = 0, py::arg("count") = 1)
      .def_static("parse", &Shard::parse, py::arg("text"))
      .def_readwrite("index", &Shard::index)
      .def_readwrite("count", &Shard::count)
      .def("__str__", &Shard::str)
      .def("__repr__", [](const Shard& s) { return "Shard('" + s.str() + "')"; });

  py::class_<ExtractionProgress>(m, "ExtractionProgress")
      .def_readonly("rows_done", &ExtractionProgress::rows_done)
      .def_readonly("rows_total", &ExtractionProgress::rows_total)
      .def_readonly("rows_resumed", &ExtractionProgress::rows_resumed)
      .def_readonly("seconds", &ExtractionProgress::seconds)
      .def_readonly("forward_seconds", &ExtractionProgress::forward_seconds);

  py::class_<ExtractionResult>(m, "ExtractionResult")
      .def_property_readonly("output", [](const ExtractionResult& r) { return r.output; })
      .def_readonly("complete", &ExtractionResult::complete)
      .def_readonly("merged", &ExtractionResult::merged)
      .def_readonly("rows_total", &ExtractionResult::rows_total)
      .def_readonly("rows_computed", &ExtractionResult::rows_computed)
      .def_readonly("rows_resumed", &ExtractionResult::rows_resumed)
      .def_readonly("seconds", &ExtractionResult::seconds)
      .def_readonly("forward_seconds", &ExtractionResult::forward_seconds)
      .def_readonly("wait_seconds", &ExtractionResult::wait_seconds)
      .def_property_readonly("skipped", [](const ExtractionResult& r) {
        std::vector<std::pair<std::int64_t, std::string>> out;
        for (const auto& k : r.skipped) out.emplace_back(k.row, k.error);
        return out;
      });

  m.def(
      "run_extraction",
      [](const PyExtractor& e, const py::object& data, const std::filesystem::path& out,
         const py::object& labels, std::int64_t limit, std::int64_t chunk_size, const std::string& store,
         const py::object& shard, int prefetch, bool merge, bool keep_parts,
         std::optional<std::filesystem::path> weights, std::map<std::string, std::string> metadata,
         const std::string& preprocess, const py::object& progress, int threads, bool skip_bad_images) {
        const Shape in = e.fx->input_spec();
        const int C = static_cast<int>(in[1]), S = static_cast<int>(in[2]);
        std::shared_ptr<data::Dataset> ds;
        if (py::isinstance<data::Dataset>(data)) {
          if (!labels.is_none()) throw ArgumentError("run_extraction", "a Dataset carries its own labels");
          ds = data.cast<std::shared_ptr<data::Dataset>>();
        } else if (py::isinstance<py::array>(data)) {
          ds = std::make_shared<ArrayDataset>(data.cast<py::array>(), labels, C, S, preprocess);
        } else {
          std::optional<std::filesystem::path> lp;
          if (!labels.is_none()) lp = labels.cast<std::filesystem::path>();
          const auto input = data.cast<std::filesystem::path>();
          const std::string pre = preprocess == "auto" ? "adm" : preprocess;
          ds = without_gil([&] {
            return std::shared_ptr<data::Dataset>(data::open_dataset(
                input, lp, data::InputSpec{C, S}, limit, data::Transform::eval(data::parse_preprocess(pre))));
          });
        }
        ds->set_threads(threads);
        ExtractionJobOptions o;
        o.chunk_size = chunk_size;
        o.limit = limit;
        o.store = parse_dtype(store);
        if (!shard.is_none())
          o.shard =
              py::isinstance<py::str>(shard) ? Shard::parse(shard.cast<std::string>()) : shard.cast<Shard>();
        o.prefetch = prefetch;
        o.merge = merge;
        o.keep_parts = keep_parts;
        o.skip_bad_images = skip_bad_images;
        if (weights) o.weights = *weights;
        o.extra_metadata = std::move(metadata);
        // Ctrl-C, a raising callback or one returning False set `cancel`: the job stops after the
        // batch, keeps finished chunks (resumable) and throws CancelledError, replaced here by the
        // Python exception when there is one.
        std::atomic<bool> cancel{false};
        bool python_error = false;
        o.cancel = &cancel;
        o.on_progress = [&](const ExtractionProgress& p) {
          py::gil_scoped_acquire gil;
          if (python_error) return;
          if (PyErr_CheckSignals() != 0) {
            python_error = true;
            cancel = true;
            return;
          }
          if (progress.is_none()) return;
          try {
            const py::object r = progress(p);
            if (!r.is_none() && !r.cast<bool>()) cancel = true;
          } catch (py::error_already_set& err) {
            err.restore();
            python_error = true;
            cancel = true;
          }
        };
        try {
          py::gil_scoped_release release;
          const std::lock_guard<std::mutex> hold(*e.lock);
          return run_extraction(*e.fx, *ds, out, o);
        } catch (const CancelledError&) {
          if (python_error) throw py::error_already_set();
          throw;
        } catch (...) {
          if (python_error) PyErr_Clear();
          throw;
        }
      },
      py::arg("extractor"), py::arg("data"), py::arg("out"), py::kw_only(), py::arg("labels") = py::none(),
      py::arg("limit") = 0, py::arg("chunk_size") = 0, py::arg("store") = "f32",
      py::arg("shard") = py::none(), py::arg("prefetch") = 2, py::arg("merge") = true,
      py::arg("keep_parts") = false, py::arg("weights") = py::none(),
      py::arg("metadata") = std::map<std::string, std::string>{}, py::arg("preprocess") = "auto",
      py::arg("progress") = py::none(), py::arg("threads") = 0, py::arg("skip_bad_images") = false,
      R"doc(data set -> features -> feature file `out`, resumable (what `diffprobe extract` runs).
data: a path (image folder, .npy, IDX; `labels` a path), a Dataset, or a NumPy array (float32 model
inputs or uint8 images; `labels` an integer array). progress(p: ExtractionProgress) is called after
every batch; returning False cancels (CancelledError, finished chunks kept). Ctrl-C likewise stops
after the batch and raises KeyboardInterrupt. skip_bad_images: an image that cannot be read keeps its
row with NaN features and is listed in the file's metadata and the result's `skipped` (row, error)
instead of stopping the run (extract --on-bad-image skip).)doc");

  m.def("merge_parts", &merge_parts, py::arg("out"), py::arg("keep_parts") = false);
  m.def("complete_parts", &complete_parts, py::arg("out"));

  // ---- Feature files ----
  m.def("feature_name", &feature_name, py::arg("t"), py::arg("block"));
  m.def("parse_feature_name", &parse_feature_name, py::arg("name"));
  m.def("file_sha256", &file_sha256, py::arg("path"));

  py::class_<FeatureMetadata>(m, "FeatureMetadata")
      .def(py::init<>())
      .def_readwrite("weights_sha256", &FeatureMetadata::weights_sha256)
      .def_readwrite("config_json", &FeatureMetadata::config_json)
      .def_readwrite("timesteps", &FeatureMetadata::timesteps)
      .def_readwrite("blocks", &FeatureMetadata::blocks)
      .def_readwrite("pooling", &FeatureMetadata::pooling)
      .def_readwrite("noise_seed", &FeatureMetadata::noise_seed)
      .def_readwrite("noise_draws", &FeatureMetadata::noise_draws)
      .def_readwrite("preprocessing", &FeatureMetadata::preprocessing)
      .def_readwrite("preprocess", &FeatureMetadata::preprocess)
      .def_readwrite("copies", &FeatureMetadata::copies)
      .def_readwrite("library", &FeatureMetadata::library)
      .def_readwrite("extra", &FeatureMetadata::extra)
      .def_static(
          "describe",
          [](const PyExtractor& e, std::optional<std::filesystem::path> weights) {
            return FeatureMetadata::describe(*e.fx, weights.value_or(std::filesystem::path{}));
          },
          py::arg("extractor"), py::arg("weights") = py::none())
      .def("to_strings", &FeatureMetadata::to_strings)
      .def(py::self == py::self);  // NOLINT(misc-redundant-expression)

  m.def(
      "save_features",
      [](const std::filesystem::path& path, const py::dict& features, const py::object& labels,
         const FeatureMetadata& metadata, const std::string& store) {
        const FeatureSet fs = feature_set_from(features, "save_features");
        std::optional<Tensor> lt;
        if (!labels.is_none()) {
          const Labels l = labels_from(labels);
          Tensor t = Tensor::empty(Shape{static_cast<std::int64_t>(l.size())}, DType::I64);
          std::copy(l.values().begin(), l.values().end(), t.data<std::int64_t>());
          lt = t;
        }
        without_gil([&] { save_features(path, fs, lt, metadata, parse_dtype(store)); });
      },
      py::arg("path"), py::arg("features"), py::arg("labels") = py::none(),
      py::arg("metadata") = FeatureMetadata{}, py::arg("store") = "f32",
      "Writes {(t, block) or 't90.b24': array} (+ labels) as a feature file, atomically.");

  py::class_<FeatureFile, std::shared_ptr<FeatureFile>>(
      m, "FeatureFile", "A feature file, memory-mapped: features are views, not reads.")
      .def_static(
          "open",
          [](const std::filesystem::path& p) {
            return std::make_shared<FeatureFile>(without_gil([&] { return FeatureFile::open(p); }));
          },
          py::arg("path"))
      .def_static(
          "open_parts",
          [](const std::vector<std::filesystem::path>& parts) {
            return std::make_shared<FeatureFile>(without_gil([&] { return FeatureFile::open_parts(parts); }));
          },
          py::arg("parts"))
      .def_property_readonly("path", &FeatureFile::path)
      .def("__len__", &FeatureFile::size)
      .def_property_readonly("size", &FeatureFile::size)
      .def_property_readonly("names", &FeatureFile::names)
      .def("__contains__", &FeatureFile::contains)
      .def(
          "feature", [](const FeatureFile& f, const std::string& name) { return to_numpy(f.feature(name)); },
          py::arg("name"),
          "The stored array [N, ...] (a view of the mapped file; float16 stays float16, bfloat16 is "
          "converted).")
      .def("__getitem__",
           [](const FeatureFile& f, const py::object& key) {
             if (py::isinstance<py::str>(key)) return to_numpy(f.feature(key.cast<std::string>()));
             const auto [t, b] = key.cast<std::pair<int, int>>();
             return to_numpy(f.feature(t, b));
           })
      .def(
          "tensor", [](const FeatureFile& f, const std::string& name) { return f.feature(name); },
          py::arg("name"))
      .def("features", [](const FeatureFile& f) { return feature_dict(f.features()); })
      .def("labels",
           [](const FeatureFile& f) -> py::object {
             const auto l = f.labels();
             if (!l) return py::none();
             return to_numpy(*l);
           })
      .def_property_readonly("metadata", &FeatureFile::metadata)
      .def("export_npy", &FeatureFile::export_npy, py::arg("name"), py::arg("out"));

  py::class_<FeatureRows, std::shared_ptr<FeatureRows>>(
      m, "FeatureRows", "One feature's rows read from disk on demand (files larger than memory).")
      .def_static(
          "open",
          [](const py::object& files, const std::string& feature) {
            const auto p = paths_from(files);
            return std::make_shared<FeatureRows>(FeatureRows::open(p, feature));
          },
          py::arg("files"), py::arg("feature"))
      .def("__len__", &FeatureRows::rows)
      .def_property_readonly("rows", &FeatureRows::rows)
      .def_property_readonly("sample_shape",
                             [](const FeatureRows& r) { return py::tuple(py::cast(r.sample_shape().vec())); })
      .def_property_readonly("stored_dtype",
                             [](const FeatureRows& r) { return dtype_python_name(r.stored_dtype()); })
      .def_property_readonly("copies", &FeatureRows::copies)
      .def("labels",
           [](const FeatureRows& r) -> py::object {
             if (!r.labels()) return py::none();
             return py::array(py::cast(*r.labels()));
           })
      .def(
          "read",
          [](const FeatureRows& r, const py::object& idx) {
            const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> ix(idx);
            std::vector<std::int64_t> shape{static_cast<std::int64_t>(ix.size())};
            for (auto d : r.sample_shape().dims()) shape.push_back(d);
            Tensor out = Tensor::empty(Shape(shape));
            const std::span<const std::int64_t> s(ix.data(), static_cast<std::size_t>(ix.size()));
            without_gil([&] { r.read(s, out.data<float>()); });
            return to_numpy(out);
          },
          py::arg("indices"))
      .def(
          "read_range",
          [](const FeatureRows& r, std::int64_t begin, std::int64_t end) {
            if (end < begin) throw ArgumentError("FeatureRows.read_range", "end < begin");
            std::vector<std::int64_t> shape{end - begin};
            for (auto d : r.sample_shape().dims()) shape.push_back(d);
            Tensor out = Tensor::empty(Shape(shape));
            without_gil([&] { r.read_range(begin, end, out.data<float>()); });
            return to_numpy(out);
          },
          py::arg("begin"), py::arg("end"));
}

}  // namespace diffprobe::python

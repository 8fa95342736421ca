// UNetConfig (the official flag names) and UNet.
#include <pybind11/operators.h>

#include <memory>

#include "python/common.hpp"

namespace diffprobe::python {

namespace {

UNetConfig config_from_kwargs(const py::kwargs& kwargs) {
  // Through the JSON reader: unknown flags are a ConfigError naming them, as in config files.
  const std::string json = py::str(py::module_::import("json").attr("dumps")(kwargs));
  return UNetConfig::from_json(json);
}

}  // namespace

void bind_model(py::module_& m) {
  py::class_<UNetConfig> cfg(m, "UNetConfig", R"doc(
The U-Net's configuration in the flag names of guided-diffusion / improved-diffusion:
UNetConfig(image_size=64, num_channels=128, attention_resolutions="16,8", ...). Unknown flags
raise ConfigError. UNetConfig.preset("256x256_diffusion_uncond"), UNetConfig.preset_names().)doc");
  cfg.def(py::init([](const py::kwargs& kw) { return config_from_kwargs(kw); }))
      .def_readwrite("image_size", &UNetConfig::image_size)
      .def_readwrite("in_channels", &UNetConfig::in_channels)
      .def_readwrite("num_channels", &UNetConfig::num_channels)
      .def_readwrite("num_res_blocks", &UNetConfig::num_res_blocks)
      .def_readwrite("attention_resolutions", &UNetConfig::attention_resolutions)
      .def_readwrite("channel_mult", &UNetConfig::channel_mult)
      .def_readwrite("num_heads", &UNetConfig::num_heads)
      .def_readwrite("num_head_channels", &UNetConfig::num_head_channels)
      .def_readwrite("num_heads_upsample", &UNetConfig::num_heads_upsample)
      .def_readwrite("use_scale_shift_norm", &UNetConfig::use_scale_shift_norm)
      .def_readwrite("resblock_updown", &UNetConfig::resblock_updown)
      .def_readwrite("use_new_attention_order", &UNetConfig::use_new_attention_order)
      .def_readwrite("learn_sigma", &UNetConfig::learn_sigma)
      .def_readwrite("class_cond", &UNetConfig::class_cond)
      .def_readwrite("num_classes", &UNetConfig::num_classes)
      .def_readwrite("use_fp16", &UNetConfig::use_fp16)
      .def_readwrite("dropout", &UNetConfig::dropout)
      .def_readwrite("diffusion_steps", &UNetConfig::diffusion_steps)
      .def_readwrite("noise_schedule", &UNetConfig::noise_schedule)
      .def_readwrite("rescale_timesteps", &UNetConfig::rescale_timesteps)
      .def_property_readonly("out_channels", &UNetConfig::out_channels)
      .def_property_readonly("num_input_blocks", &UNetConfig::num_input_blocks)
      .def_property_readonly("num_blocks", &UNetConfig::num_blocks)
      .def("channel_multipliers", &UNetConfig::channel_multipliers)
      .def("validate", &UNetConfig::validate)
      .def("to_json", &UNetConfig::to_json, py::arg("indent") = 2)
      .def("to_dict",
           [](const UNetConfig& c) { return py::module_::import("json").attr("loads")(c.to_json()); })
      .def_static("from_json", &UNetConfig::from_json, py::arg("text"))
      .def_static("from_json_file", &UNetConfig::from_json_file, py::arg("path"))
      .def_static("preset", &UNetConfig::preset, py::arg("name"))
      .def_static("preset_names", &UNetConfig::preset_names)
      .def_static("preset_for_filename", &UNetConfig::preset_for_filename, py::arg("filename"))
      .def(py::self == py::self)  // NOLINT(misc-redundant-expression)
      .def("__copy__", [](const UNetConfig& c) { return c; })
      .def("__repr__", [](const UNetConfig& c) { return "UNetConfig(" + c.to_json(-1) + ")"; });

  py::class_<BlockInfo>(m, "BlockInfo")
      .def_readonly("block", &BlockInfo::block)
      .def_readonly("name", &BlockInfo::name)
      .def_readonly("description", &BlockInfo::description)
      .def_property_readonly("output_shape",
                             [](const BlockInfo& b) { return py::tuple(py::cast(b.output_shape.vec())); })
      .def_readonly("parameters", &BlockInfo::parameters)
      .def_readonly("gflop", &BlockInfo::gflop)
      .def("__repr__", [](const BlockInfo& b) {
        return "<BlockInfo " + std::to_string(b.block) + " " + b.name + " " + b.output_shape.str() + ">";
      });

  py::class_<UNet, std::shared_ptr<UNet>>(m, "UNet", R"doc(
The ADM U-Net, run forward only as far as the requested blocks need. UNet.load(path) reads
safetensors, torch zip or legacy checkpoints; the config comes from `config`, else `preset`, else a
preset matching the file name, else the file's metadata, else the weights' shapes. mmap=False
reads the file into memory instead of mapping it (a mapped file truncated while in use stops the
process with SIGBUS).)doc")
      .def_static(
          "load",
          [](const std::filesystem::path& path, std::optional<std::string> preset,
             std::optional<UNetConfig> config, std::optional<int> image_size, bool mmap) {
            LoadOptions o;
            o.preset = std::move(preset);
            o.config = std::move(config);
            o.image_size = image_size;
            o.file_access = mmap ? io::FileAccess::Map : io::FileAccess::Read;
            return without_gil([&] { return std::make_shared<UNet>(UNet::load(path, o)); });
          },
          py::arg("path"), py::arg("preset") = py::none(), py::arg("config") = py::none(),
          py::arg("image_size") = py::none(), py::arg("mmap") = true)
      .def_static(
          "random",
          [](const UNetConfig& config, std::uint64_t seed) {
            return without_gil([&] { return std::make_shared<UNet>(UNet::random(config, seed)); });
          },
          py::arg("config"), py::arg("seed") = 0, "Every weight random (deterministic in seed): for tests.")
      .def_property_readonly("config", &UNet::config)
      .def_property_readonly("inference_notes", &UNet::inference_notes)
      .def_property_readonly("num_blocks", &UNet::num_blocks)
      .def_property_readonly("num_input_blocks", &UNet::num_input_blocks)
      .def_property_readonly("num_parameters", &UNet::num_parameters)
      .def("block_infos", &UNet::block_infos)
      .def(
          "block_output_shape",
          [](const UNet& u, int block, std::int64_t batch) {
            return py::tuple(py::cast(u.block_output_shape(block, batch).vec()));
          },
          py::arg("block"), py::arg("batch") = 1)
      .def(
          "input_shape",
          [](const UNet& u, std::int64_t batch) { return py::tuple(py::cast(u.input_shape(batch).vec())); },
          py::arg("batch") = 1)
      .def(
          "forward",
          [](const UNet& u, const py::array& x_t, const py::object& t, const std::vector<int>& blocks,
             const py::object& labels, int threads, const std::string& precision) {
            const Shape in = u.input_shape(1);
            const Tensor x =
                model_inputs(x_t, static_cast<int>(in[1]), static_cast<int>(in[2]), "auto", "UNet.forward");
            const py::array_t<float, py::array::c_style | py::array::forcecast> tv(t);
            if (tv.ndim() != 1 || tv.shape(0) != x.dim(0))
              throw ShapeError("UNet.forward", "t must be [N] with N = " + std::to_string(x.dim(0)));
            Tensor tt = Tensor::empty(Shape{x.dim(0)});
            std::copy(tv.data(), tv.data() + x.dim(0), tt.data<float>());
            Tensor lt;
            if (!labels.is_none()) {
              const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> lv(labels);
              if (lv.ndim() != 1 || lv.shape(0) != x.dim(0))
                throw ShapeError("UNet.forward", "labels must be [N] with N = " + std::to_string(x.dim(0)));
              lt = Tensor::empty(Shape{x.dim(0)}, DType::I64);
              std::copy(lv.data(), lv.data() + x.dim(0), lt.data<std::int64_t>());
            }
            ExecContext ctx;
            ctx.threads = threads;
            ctx.precision = parse_precision(precision.c_str());
            const auto out = without_gil([&] { return u.forward(x, tt, lt, blocks, ctx); });
            py::dict d;
            for (const auto& [b, f] : out) d[py::int_(b)] = to_numpy(f);
            return d;
          },
          py::arg("x_t"), py::arg("t"), py::arg("blocks") = std::vector<int>{0},
          py::arg("labels") = py::none(), py::arg("threads") = 0, py::arg("precision") = "fp32",
          "Runs the U-Net on x_t (float32 [N, C, S, S]) at timesteps t ([N], passed as is) and returns "
          "{block: float32 [N, C, H, W]} (NumPy views of the NHWC activations: strided, not copied).")
      .def_property_readonly("int8_convolutions", &UNet::int8_convolutions,
                             "The convolutions that run in int8 (all but the first and the output's).")
      .def(
          "set_int8_calibration",
          [](UNet& u, const std::filesystem::path& path) {
            u.set_int8_calibration(Int8Calibration::load(path));
          },
          py::arg("path"),
          "Quantises the int8 convolutions' inputs with the scales of a calibration file (diffprobe "
          "calibrate, Int8CalibrationRecorder.save) instead of each image's own.")
      .def("clear_int8_calibration", &UNet::clear_int8_calibration, "Back to per-image int8 scales.")
      .def_property_readonly(
          "int8_calibration",
          [](const UNet& u) -> py::object {
            const Int8Calibration* c = u.int8_calibration();
            return c ? py::object(py::str(c->to_json())) : py::object(py::none());
          },
          "The calibration in use as JSON text, or None.")
      .def("__repr__", [](const UNet& u) {
        return "<diffprobe.UNet " + std::to_string(u.num_parameters()) + " parameters, " +
               std::to_string(u.num_blocks()) + " blocks, " + std::to_string(u.config().image_size) + "px>";
      });

  m.def("parse_block", &parse_block, py::arg("text"));

  // A context manager around Int8CalibrationRecorder (which detaches itself when destroyed).
  struct PyRecorder {
    std::shared_ptr<UNet> model;
    std::unique_ptr<Int8CalibrationRecorder> rec;
    Int8CalibrationRecorder& get() {
      if (!rec) throw ArgumentError("Int8CalibrationRecorder", "the recorder is closed");
      return *rec;
    }
  };
  py::class_<PyRecorder>(m, "Int8CalibrationRecorder", R"doc(
While open, records the max |x| of each image at every int8 convolution's input, in every forward
of the model (fp32 or bf16: UNet.forward, FeatureExtractor.extract, run_extraction). save() writes
the int8 scales as a calibration file for UNet.set_int8_calibration and `--int8-calibration`.
Use it as a context manager (or call close()).)doc")
      .def(py::init([](std::shared_ptr<UNet> model) {
             auto r = std::make_unique<PyRecorder>();
             r->rec = std::make_unique<Int8CalibrationRecorder>(*model);
             r->model = std::move(model);
             return r;
           }),
           py::arg("model"))
      .def(
          "__enter__", [](PyRecorder& r) -> PyRecorder& { return r; }, py::return_value_policy::reference)
      .def("__exit__", [](PyRecorder& r, const py::args&) { r.rec.reset(); })
      .def("close", [](PyRecorder& r) { r.rec.reset(); })
      .def_property_readonly("images_seen", [](PyRecorder& r) { return r.get().images_seen(); })
      .def(
          "save",
          [](PyRecorder& r, const std::filesystem::path& path, const std::string& method,
             const std::vector<int>& timesteps, const std::string& weights_sha256) {
            Int8Calibration c = r.get().result(parse_int8_scale_method(method));
            c.timesteps = timesteps;
            c.weights_sha256 = weights_sha256;
            c.save(path);
            return c.scales.size();
          },
          py::arg("path"), py::arg("method") = "max", py::arg("timesteps") = std::vector<int>{},
          py::arg("weights_sha256") = "",
          "Writes the scales seen so far (method 'max' or 'mean' over the images' max |x|); returns how "
          "many convolutions were calibrated. timesteps and weights_sha256 are recorded as provenance.");
}

}  // namespace diffprobe::python

// Heads: HeadSpec, TrainConfig, Head (fit / evaluate / predict / logits / save / load), reports.
#include <memory>

#include "python/common.hpp"

namespace diffprobe::python {

namespace {

using HeadPtr = std::shared_ptr<Head>;

// Features as the head takes them: one array, a list of arrays (fusion), FeatureRows, or a list
// of FeatureRows. Arrays are viewed (no copy); the Python objects are held by the caller.
struct HeadInput {
  std::vector<Tensor> tensors;
  std::vector<const FeatureRows*> rows;
  bool is_rows = false;
  bool many = false;
};

HeadInput head_input(const py::object& features) {
  HeadInput in;
  auto add = [&in](const py::handle& h) {
    if (py::isinstance<FeatureRows>(h)) {
      in.is_rows = true;
      in.rows.push_back(h.cast<const FeatureRows*>());
      return;
    }
    if (py::isinstance<Tensor>(h)) {
      in.tensors.push_back(h.cast<Tensor>());
      return;
    }
    const py::array a = py::array::ensure(h);
    if (!a) throw DTypeError("Head", "features must be arrays or FeatureRows");
    in.tensors.push_back(view_numpy(a, false));
  };
  if (py::isinstance<py::list>(features) || py::isinstance<py::tuple>(features)) {
    in.many = true;
    for (const auto& h : features) add(h);
  } else {
    add(features);
  }
  if (in.is_rows && !in.tensors.empty()) throw ArgumentError("Head", "mix of arrays and FeatureRows");
  return in;
}

Shape shape_from(const py::object& o) {
  if (py::isinstance<py::int_>(o)) return Shape{o.cast<std::int64_t>()};
  return Shape(o.cast<std::vector<std::int64_t>>());
}

TrainConfig train_config(const py::object& config, const py::kwargs& kwargs) {
  TrainConfig c = config.is_none() ? TrainConfig::paper_linear() : config.cast<TrainConfig>();
  py::object wrapped = py::cast(c);
  for (const auto& [k, v] : kwargs) {
    const std::string name = py::str(k);
    if (!py::hasattr(wrapped, name.c_str()) || name.rfind("__", 0) == 0)
      throw ConfigError("Head.fit", "unknown training option '" + name + "'");
    wrapped.attr(name.c_str()) = v;
  }
  return wrapped.cast<TrainConfig>();
}

py::dict report_dict(const Report& r) { return py::dict(py::arg("top1") = r.top1, py::arg("top5") = r.top5); }

}  // namespace

void bind_heads(py::module_& m) {
  py::enum_<OptimizerKind>(m, "OptimizerKind")
      .value("SGD", OptimizerKind::SGD)
      .value("AdamW", OptimizerKind::AdamW);
  py::enum_<ScheduleKind>(m, "ScheduleKind")
      .value("Constant", ScheduleKind::Constant)
      .value("Step", ScheduleKind::Step)
      .value("Cosine", ScheduleKind::Cosine);

  py::class_<TrainConfig>(m, "TrainConfig", R"doc(
How a head is trained (defaults: the paper's linear-probe recipe). TrainConfig(epochs=30, lr=1e-3,
optimizer='adamw', schedule='cosine', standardize=True, ...); optimizer and schedule take names.)doc")
      .def(py::init([](const py::kwargs& kw) { return train_config(py::none(), kw); }))
      .def_property(
          "optimizer", [](const TrainConfig& c) { return std::string(optimizer_name(c.optimizer)); },
          [](TrainConfig& c, const py::object& v) {
            c.optimizer = py::isinstance<py::str>(v) ? parse_optimizer(v.cast<std::string>().c_str())
                                                     : v.cast<OptimizerKind>();
          })
      .def_property(
          "schedule", [](const TrainConfig& c) { return std::string(schedule_name(c.schedule)); },
          [](TrainConfig& c, const py::object& v) {
            c.schedule = py::isinstance<py::str>(v) ? parse_schedule(v.cast<std::string>().c_str())
                                                    : v.cast<ScheduleKind>();
          })
      .def_readwrite("lr", &TrainConfig::lr)
      .def_readwrite("momentum", &TrainConfig::momentum)
      .def_readwrite("weight_decay", &TrainConfig::weight_decay)
      .def_readwrite("beta1", &TrainConfig::beta1)
      .def_readwrite("beta2", &TrainConfig::beta2)
      .def_readwrite("adam_eps", &TrainConfig::adam_eps)
      .def_readwrite("epochs", &TrainConfig::epochs)
      .def_readwrite("batch_size", &TrainConfig::batch_size)
      .def_readwrite("step_epochs", &TrainConfig::step_epochs)
      .def_readwrite("step_gamma", &TrainConfig::step_gamma)
      .def_readwrite("min_lr", &TrainConfig::min_lr)
      .def_readwrite("warmup_epochs", &TrainConfig::warmup_epochs)
      .def_readwrite("seed", &TrainConfig::seed)
      .def_readwrite("val_fraction", &TrainConfig::val_fraction)
      .def_readwrite("patience", &TrainConfig::patience)
      .def_readwrite("restore_best", &TrainConfig::restore_best)
      .def_readwrite("standardize", &TrainConfig::standardize)
      .def_readwrite("copies", &TrainConfig::copies)
      .def_readwrite("threads", &TrainConfig::threads)
      .def_static("paper_linear", &TrainConfig::paper_linear)
      .def_static("paper_attention", &TrainConfig::paper_attention)
      .def("validate", &TrainConfig::validate);

  py::class_<EpochStats>(m, "EpochStats")
      .def_readonly("epoch", &EpochStats::epoch)
      .def_readonly("lr", &EpochStats::lr)
      .def_readonly("train_loss", &EpochStats::train_loss)
      .def_readonly("train_accuracy", &EpochStats::train_accuracy)
      .def_readonly("val_loss", &EpochStats::val_loss)
      .def_readonly("val_accuracy", &EpochStats::val_accuracy)
      .def("__repr__", [](const EpochStats& e) {
        return "<EpochStats " + std::to_string(e.epoch) + " loss " + std::to_string(e.train_loss) + " acc " +
               std::to_string(e.train_accuracy) + ">";
      });

  py::class_<TrainHistory>(m, "TrainHistory")
      .def_readonly("epochs", &TrainHistory::epochs)
      .def_readonly("best_epoch", &TrainHistory::best_epoch)
      .def_readonly("stopped_early", &TrainHistory::stopped_early)
      .def_readonly("train_samples", &TrainHistory::train_samples)
      .def_readonly("val_samples", &TrainHistory::val_samples);

  py::class_<Report>(m, "Report")
      .def_readonly("count", &Report::count)
      .def_readonly("num_classes", &Report::num_classes)
      .def_readonly("top1", &Report::top1)
      .def_readonly("top5", &Report::top5)
      .def_readonly("loss", &Report::loss)
      .def_property_readonly("confusion",
                             [](const Report& r) {
                               py::array_t<std::int64_t> a({r.num_classes, r.num_classes});
                               std::copy(r.confusion.begin(), r.confusion.end(), a.mutable_data());
                               return a;
                             })
      .def_readonly("per_class_accuracy", &Report::per_class_accuracy)
      .def("as_dict", &report_dict)
      .def("__repr__", [](const Report& r) {
        return "<Report top1 " + std::to_string(r.top1) + " top5 " + std::to_string(r.top5) + " on " +
               std::to_string(r.count) + ">";
      });

  py::class_<Head, HeadPtr>(m, "Head", R"doc(
A classifier head on frozen features: Head.linear(shape, classes), mlp, cnn, attention, load(path).
fit / evaluate / predict / logits take a float32 array [N, ...] (viewed, not copied), a list of them
(fusion), or FeatureRows (read from disk batch by batch). The GIL is released while training.)doc")
      .def_static(
          "linear",
          [](const py::object& shape, int classes) {
            return std::make_shared<Head>(Head::linear(shape_from(shape), classes));
          },
          py::arg("feature_shape"), py::arg("num_classes"))
      .def_static(
          "mlp",
          [](const py::object& shape, const py::object& hidden, int classes) {
            if (py::isinstance<py::str>(hidden))
              return std::make_shared<Head>(
                  Head::mlp(shape_from(shape), hidden.cast<std::string>(), classes));
            return std::make_shared<Head>(
                Head::mlp(shape_from(shape), hidden.cast<std::vector<int>>(), classes));
          },
          py::arg("feature_shape"), py::arg("hidden"), py::arg("num_classes"))
      .def_static(
          "cnn",
          [](const py::object& shape, int classes, std::vector<int> channels, int max_pool, bool input_norm) {
            CnnHeadConfig c;
            c.channels = std::move(channels);
            c.max_pool = max_pool;
            c.input_norm = input_norm;
            return std::make_shared<Head>(Head::cnn(shape_from(shape), classes, c));
          },
          py::arg("feature_shape"), py::arg("num_classes"), py::arg("channels") = std::vector<int>{256, 256},
          py::arg("max_pool") = 16, py::arg("input_norm") = true)
      .def_static(
          "attention",
          [](const py::object& shape, int classes, int dim, int depth, int heads, int mlp_ratio,
             int max_pool) {
            AttentionHeadConfig c;
            c.dim = dim;
            c.depth = depth;
            c.heads = heads;
            c.mlp_ratio = mlp_ratio;
            c.max_pool = max_pool;
            return std::make_shared<Head>(Head::attention(shape_from(shape), classes, c));
          },
          py::arg("feature_shape"), py::arg("num_classes"), py::arg("dim") = 1024, py::arg("depth") = 2,
          py::arg("heads") = 8, py::arg("mlp_ratio") = 4, py::arg("max_pool") = 16)
      .def_static(
          "from_spec",
          [](const std::string& json, std::uint64_t seed) {
            return std::make_shared<Head>(Head::from_spec(HeadSpec::from_json(json), seed));
          },
          py::arg("spec_json"), py::arg("init_seed") = 0)
      .def_static(
          "load", [](const std::filesystem::path& p) { return std::make_shared<Head>(Head::load(p)); },
          py::arg("path"))
      .def_property_readonly("spec", [](const Head& h) { return h.spec().to_json(); })
      .def_property_readonly("kind", [](const Head& h) { return std::string(head_kind_name(h.spec().kind)); })
      .def_property_readonly("num_classes", &Head::num_classes)
      .def_property_readonly("num_parameters", &Head::num_parameters)
      .def_property("threads", &Head::threads, &Head::set_threads)
      .def_property(
          "metadata", [](const Head& h) { return h.metadata(); },
          [](Head& h, const std::map<std::string, std::string>& md) { h.metadata() = md; })
      .def("reset_parameters", &Head::reset_parameters, py::arg("seed"))
      .def(
          "fit",
          [](Head& h, const py::object& features, const py::object& labels, const py::object& config,
             const py::object& on_epoch, const py::kwargs& kwargs) {
            const HeadInput in = head_input(features);
            const Labels y = labels_from(labels);
            TrainConfig c = train_config(config, kwargs);
            // Between epochs: Ctrl-C, then the user's on_epoch(stats).
            c.on_epoch = [&on_epoch](const EpochStats& st) {
              py::gil_scoped_acquire gil;
              if (PyErr_CheckSignals() != 0) throw PythonErrorPending{};
              if (on_epoch.is_none()) return;
              try {
                on_epoch(st);
              } catch (py::error_already_set& err) {
                err.restore();
                throw PythonErrorPending{};
              }
            };
            return without_gil([&] {
              if (in.is_rows) return in.many ? h.fit(in.rows, y, c) : h.fit(*in.rows[0], y, c);
              return in.many ? h.fit(in.tensors, y, c) : h.fit(in.tensors[0], y, c);
            });
          },
          py::arg("features"), py::arg("labels"), py::arg("config") = py::none(),
          py::arg("on_epoch") = py::none(),
          "Trains from the current parameters; config is a TrainConfig (default: the paper's linear recipe), "
          "keyword arguments override its fields. Returns the TrainHistory.")
      .def(
          "logits",
          [](const Head& h, const py::object& features) {
            const HeadInput in = head_input(features);
            return to_numpy(without_gil([&] {
              if (in.is_rows) return in.many ? h.logits(in.rows) : h.logits(*in.rows[0]);
              return in.many ? h.logits(in.tensors) : h.logits(in.tensors[0]);
            }));
          },
          py::arg("features"))
      .def(
          "predict",
          [](const Head& h, const py::object& features) {
            const HeadInput in = head_input(features);
            if (in.is_rows)
              throw ArgumentError("Head.predict", "predict takes arrays (logits takes FeatureRows)");
            const std::vector<int> p =
                without_gil([&] { return in.many ? h.predict(in.tensors) : h.predict(in.tensors[0]); });
            py::array_t<std::int64_t> a(static_cast<py::ssize_t>(p.size()));
            std::copy(p.begin(), p.end(), a.mutable_data());
            return a;
          },
          py::arg("features"))
      .def(
          "evaluate",
          [](const Head& h, const py::object& features, const py::object& labels) {
            const HeadInput in = head_input(features);
            const Labels y = labels_from(labels);
            return without_gil([&] {
              if (in.is_rows) return in.many ? h.evaluate(in.rows, y) : h.evaluate(*in.rows[0], y);
              return in.many ? h.evaluate(in.tensors, y) : h.evaluate(in.tensors[0], y);
            });
          },
          py::arg("features"), py::arg("labels"))
      .def("state_dict",
           [](const Head& h) {
             py::dict d;
             for (const auto& [name, t] : h.state_dict()) d[py::str(name)] = to_numpy(t);
             return d;
           })
      .def(
          "save",
          [](const Head& h, const std::filesystem::path& p, const std::string& store) {
            h.save(p, parse_dtype(store));
          },
          py::arg("path"), py::arg("store") = "f32")
      .def("__repr__", [](const Head& h) {
        return "<diffprobe.Head " + std::string(head_kind_name(h.spec().kind)) + ", " +
               std::to_string(h.num_parameters()) + " parameters, " + std::to_string(h.num_classes()) +
               " classes>";
      });
}

}  // namespace diffprobe::python

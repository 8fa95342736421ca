// The Python module's core: the error hierarchy, diffprobe.Tensor (buffer protocol and DLPack),
// NumPy views, image preprocessing, and the module definition.
#include <Python.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include "python/common.hpp"

namespace diffprobe::python {

// ---- Interrupts -------------------------------------------------------------------------------

void poll_signals() {
  py::gil_scoped_acquire gil;
  if (PyErr_Occurred() != nullptr || PyErr_CheckSignals() != 0) throw PythonErrorPending{};
}

// ---- Errors -----------------------------------------------------------------------------------

namespace {

// Python classes by ErrorKind (created once at import; owned by the module).
PyObject* g_error = nullptr;
PyObject* g_kind_classes[10] = {};

PyObject* new_exception(py::module_& m, const char* name, PyObject* bases, const char* doc) {
  const std::string qualified = std::string("diffprobe.") + name;
  PyObject* cls = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases, nullptr);
  if (cls == nullptr) throw py::error_already_set();
  m.add_object(name, py::handle(cls));  // the module keeps a reference
  return cls;
}

void raise_error(const Error& e) {
  PyObject* cls = g_kind_classes[static_cast<int>(e.kind())];
  if (cls == nullptr) cls = g_error;
  py::object exc = py::reinterpret_steal<py::object>(PyObject_CallFunction(cls, "s", e.what()));
  if (!exc) return;  // the call failed and set its own error
  exc.attr("where") = e.where();
  exc.attr("why") = e.why();
  exc.attr("kind") = error_kind_name(e.kind());
  PyErr_SetObject(cls, exc.ptr());
}

void bind_errors(py::module_& m) {
  g_error =
      new_exception(m, "Error", PyExc_Exception,
                    "Base of every diffprobe error (C++ diffprobe::Error): attributes where, why, kind.");
  struct Spec {
    ErrorKind kind;
    const char* name;
    PyObject* builtin;  // a standard exception it also is, so generic handlers catch it
    const char* doc;
  };
  const Spec specs[] = {
      {ErrorKind::Shape, "ShapeError", PyExc_ValueError,
       "Array or tensor shapes disagree with what is needed."},
      {ErrorKind::DType, "DTypeError", PyExc_TypeError, "Unsupported or mismatched element type."},
      {ErrorKind::Device, "DeviceError", PyExc_RuntimeError, "Wrong device, no GPU, CUDA failure."},
      {ErrorKind::Io, "IoError", PyExc_OSError, "A file missing, unreadable, or a short read or write."},
      {ErrorKind::Format, "FormatError", PyExc_ValueError, "A file's content is corrupt or hostile."},
      {ErrorKind::Config, "ConfigError", PyExc_ValueError, "Invalid model or pipeline configuration."},
      {ErrorKind::Argument, "ArgumentError", PyExc_ValueError, "An argument out of its allowed range."},
      {ErrorKind::Numeric, "NumericError", PyExc_ArithmeticError,
       "NaN or Inf where finite values are needed."},
      {ErrorKind::Unsupported, "UnsupportedError", PyExc_NotImplementedError,
       "A valid request this build cannot serve."},
      {ErrorKind::Cancelled, "CancelledError", PyExc_RuntimeError, "A long call was asked to stop."},
  };
  for (const auto& s : specs) {
    py::tuple bases = py::make_tuple(py::handle(g_error), py::handle(s.builtin));
    g_kind_classes[static_cast<int>(s.kind)] = new_exception(m, s.name, bases.ptr(), s.doc);
  }
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      raise_error(e);
    }
  });
}

// ---- DLPack (the stable v0.x ABI that torch.from_dlpack and NumPy read) -------------------------

extern "C" {
enum DLDeviceType : std::int32_t { kDLCPU = 1, kDLCUDA = 2 };
struct DLDevice {
  DLDeviceType device_type;
  std::int32_t device_id;
};
struct DLDataType {
  std::uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat
  std::uint8_t bits;
  std::uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  std::int32_t ndim;
  DLDataType dtype;
  std::int64_t* shape;
  std::int64_t* strides;  // in elements
  std::uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
}

// What a DLPack capsule owns: the tensor (a handle sharing its storage) and the shape arrays.
struct DlpackOwner {
  DLManagedTensor managed{};
  Tensor tensor;
  std::vector<std::int64_t> shape, strides;
};

DLDataType dl_dtype(DType d) {
  switch (d) {
    case DType::F32: return {2, 32, 1};
    case DType::F16: return {2, 16, 1};
    case DType::BF16: return {4, 16, 1};
    case DType::I32: return {0, 32, 1};
    case DType::I64: return {0, 64, 1};
  }
  return {2, 32, 1};
}

DLDevice dl_device(const Device& d) { return d.is_cuda() ? DLDevice{kDLCUDA, d.index} : DLDevice{kDLCPU, 0}; }

// Element strides of the logical shape (NHWC tensors have permuted strides).
std::vector<std::int64_t> element_strides(const Tensor& t) {
  const int r = t.rank();
  std::vector<std::int64_t> s(static_cast<std::size_t>(r));
  if (t.layout() == Layout::NHWC && r == 4) {
    const std::int64_t C = t.dim(1), H = t.dim(2), W = t.dim(3);
    s = {H * W * C, 1, W * C, C};
    return s;
  }
  std::int64_t acc = 1;
  for (int i = r - 1; i >= 0; --i) {
    s[static_cast<std::size_t>(i)] = acc;
    acc *= t.dim(i);
  }
  return s;
}

py::capsule to_dlpack(const Tensor& t) {
  if (!t.defined()) throw ArgumentError("Tensor.__dlpack__", "the tensor is undefined");
  auto* owner = new DlpackOwner;
  owner->tensor = t;
  owner->shape = t.shape().vec();
  owner->strides = element_strides(t);
  DLTensor& dl = owner->managed.dl_tensor;
  dl.data = t.raw();
  dl.device = dl_device(t.device());
  dl.ndim = t.rank();
  dl.dtype = dl_dtype(t.dtype());
  dl.shape = owner->shape.data();
  dl.strides = owner->strides.data();
  dl.byte_offset = 0;
  owner->managed.manager_ctx = owner;
  // Called by the consumer, possibly without the GIL: only C++ objects are released.
  owner->managed.deleter = [](DLManagedTensor* self) { delete static_cast<DlpackOwner*>(self->manager_ctx); };
  // An unconsumed capsule (still named "dltensor") frees the tensor itself.
  PyObject* cap = PyCapsule_New(&owner->managed, "dltensor", [](PyObject* c) {
    if (PyCapsule_IsValid(c, "dltensor")) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
      if (m != nullptr && m->deleter != nullptr) m->deleter(m);
    } else {
      PyErr_Clear();
    }
  });
  if (cap == nullptr) {
    delete owner;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}

const char* numpy_format(DType d) {
  switch (d) {
    case DType::F32: return "f";
    case DType::F16: return "e";
    case DType::I32: return "i";
    case DType::I64: return "q";
    case DType::BF16: return nullptr;
  }
  return nullptr;
}

// The buffer protocol cannot report errors through pybind11 (an exception there aborts), so it
// never throws: bfloat16 is exported as its raw 16-bit patterns ("H"), and a tensor that is not
// in CPU memory (which the module never hands out) as an empty buffer.
py::buffer_info tensor_buffer(const Tensor& t) {
  if (!t.defined() || !t.device().is_cpu()) return py::buffer_info(nullptr, 4, "f", 1, {0}, {4}, true);
  const char* fmt = t.dtype() == DType::BF16 ? "H" : numpy_format(t.dtype());
  const auto es = element_strides(t);
  std::vector<py::ssize_t> shape, strides;
  for (int i = 0; i < t.rank(); ++i) {
    shape.push_back(static_cast<py::ssize_t>(t.dim(i)));
    strides.push_back(static_cast<py::ssize_t>(es[static_cast<std::size_t>(i)] *
                                               static_cast<std::int64_t>(dtype_size(t.dtype()))));
  }
  return py::buffer_info(t.raw(), static_cast<py::ssize_t>(dtype_size(t.dtype())), fmt, t.rank(), shape,
                         strides, /*readonly=*/false);
}

}  // namespace

// ---- NumPy <-> Tensor ---------------------------------------------------------------------------

DType dtype_of_numpy(const py::dtype& d) {
  if (d.is(py::dtype::of<float>())) return DType::F32;
  if (d.kind() == 'f' && d.itemsize() == 4) return DType::F32;
  if (d.kind() == 'f' && d.itemsize() == 2) return DType::F16;
  if (d.kind() == 'i' && d.itemsize() == 4) return DType::I32;
  if (d.kind() == 'i' && d.itemsize() == 8) return DType::I64;
  throw DTypeError("diffprobe", "no diffprobe element type for NumPy dtype " +
                                    std::string(py::str(py::handle(d))) +
                                    " (float32, float16, int32, int64)");
}

const char* dtype_python_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
  }
  return "?";
}

py::array to_numpy(const Tensor& t) {
  if (!t.defined()) throw ArgumentError("diffprobe", "the tensor is undefined");
  if (!t.device().is_cpu()) return to_numpy(t.to_device(Device::cpu()));
  if (t.dtype() == DType::BF16) return to_numpy(t.to_dtype(DType::F32));
  py::object base = py::cast(t);  // a diffprobe.Tensor sharing the storage: the array's owner
  const py::buffer_info info = tensor_buffer(t);
  return py::array(py::dtype(info), info.shape, info.strides, info.ptr, base);
}

Tensor view_numpy(const py::array& a, bool keep_alive) {
  if (!(a.flags() & py::array::c_style))
    throw ShapeError("diffprobe", "the array is not C-contiguous (np.ascontiguousarray makes it so)");
  const DType dt = dtype_of_numpy(a.dtype());
  std::vector<std::int64_t> dims(a.shape(), a.shape() + a.ndim());
  std::shared_ptr<void> owner;
  if (keep_alive) {
    // The reference may be dropped on a thread without the GIL (a tensor released inside a
    // GIL-free call): take it for the decrement.
    owner = std::shared_ptr<void>(new py::object(a), [](void* p) {
      py::gil_scoped_acquire gil;
      delete static_cast<py::object*>(p);
    });
  }
  return Tensor::view_of(const_cast<void*>(a.data()), Shape(dims), dt, Layout::Contiguous, Device::cpu(),
                         std::move(owner));
}

// guided-diffusion / IdxDataset scaling of one 8-bit image (H, W, C interleaved) to C x S x S.
void preprocess_image(const std::uint8_t* src, int h, int w, int c, int channels, int size,
                      const std::string& mode, float* out) {
  const std::size_t plane = static_cast<std::size_t>(size) * static_cast<std::size_t>(size);
  const bool can_pad = h == w && size >= h && (size - h) % 2 == 0 && c == 1;
  if (mode == "pad" || (mode == "auto" && can_pad)) {
    if (!can_pad)
      throw ArgumentError(
          "diffprobe.preprocess",
          "preprocess='pad' needs grey square images of side s with S - s even (S = " + std::to_string(size) +
              "), got " + std::to_string(h) + "x" + std::to_string(w) + "x" + std::to_string(c));
    // The IDX rule (data/idx_dataset.hpp): pad with -1, v / 127.5 - 1, grey replicated.
    const int pad = (size - h) / 2;
    std::fill(out, out + plane, -1.0f);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        out[static_cast<std::size_t>(y + pad) * static_cast<std::size_t>(size) +
            static_cast<std::size_t>(x + pad)] = static_cast<float>(src[y * w + x]) / 127.5f - 1.0f;
    for (int k = 1; k < channels; ++k) std::copy(out, out + plane, out + static_cast<std::size_t>(k) * plane);
    return;
  }
  const data::Preprocess p = data::parse_preprocess(mode == "auto" ? "adm" : mode);
  data::Image img = data::Image::blank(w, h, c);
  std::copy(src,
            src + static_cast<std::size_t>(h) * static_cast<std::size_t>(w) * static_cast<std::size_t>(c),
            img.samples.begin());
  data::Transform::eval(p).apply(img, data::InputSpec{channels, size}, out);
}

Tensor model_inputs(const py::array& images, int channels, int size, const std::string& preprocess,
                    const char* where) {
  const std::string want = "float32 [N, " + std::to_string(channels) + ", " + std::to_string(size) + ", " +
                           std::to_string(size) +
                           "] model inputs in [-1, 1], or uint8 images [N, H, W] / [N, H, W, C]";
  std::string got = std::string(py::str(py::handle(images.dtype()))) + " [";
  for (py::ssize_t i = 0; i < images.ndim(); ++i) got += (i ? ", " : "") + std::to_string(images.shape(i));
  got += "]";
  const auto& dt = images.dtype();
  if (dt.kind() == 'f' && dt.itemsize() == 4) {
    if (images.ndim() != 4 || images.shape(1) != channels || images.shape(2) != size ||
        images.shape(3) != size || images.shape(0) < 1)
      throw ShapeError(where, "images must be " + want + ", got " + got);
    if (!(images.flags() & py::array::c_style))
      throw ShapeError(where, "images must be C-contiguous (np.ascontiguousarray), got a strided " + got);
    return view_numpy(images, false);  // the caller holds the array for the whole call
  }
  if (dt.kind() == 'u' && dt.itemsize() == 1) {
    if ((images.ndim() != 3 && images.ndim() != 4) || images.shape(0) < 1 ||
        (images.ndim() == 4 && (images.shape(3) < 1 || images.shape(3) > 4)))
      throw ShapeError(where, "images must be " + want + ", got " + got);
    if (preprocess != "auto" && preprocess != "pad" && preprocess != "adm" && preprocess != "torchvision")
      throw ArgumentError(
          where, "preprocess must be 'auto', 'pad', 'adm' or 'torchvision', got '" + preprocess + "'");
    const py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast> px(images);
    const std::int64_t n = px.shape(0);
    const int h = static_cast<int>(px.shape(1)), w = static_cast<int>(px.shape(2));
    const int c = px.ndim() == 4 ? static_cast<int>(px.shape(3)) : 1;
    Tensor x = Tensor::empty(Shape{n, channels, size, size});
    const std::uint8_t* src = px.data();
    float* dst = x.data<float>();
    const std::size_t per_in =
        static_cast<std::size_t>(h) * static_cast<std::size_t>(w) * static_cast<std::size_t>(c);
    const std::size_t per_out =
        static_cast<std::size_t>(channels) * static_cast<std::size_t>(size) * static_cast<std::size_t>(size);
    py::gil_scoped_release release;
    for (std::int64_t i = 0; i < n; ++i)
      preprocess_image(src + static_cast<std::size_t>(i) * per_in, h, w, c, channels, size, preprocess,
                       dst + static_cast<std::size_t>(i) * per_out);
    return x;
  }
  throw ShapeError(where, "images must be " + want + ", got " + got);
}

Labels labels_from(const py::handle& labels) {
  const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> a =
      py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(labels);
  if (!a) throw DTypeError("labels", "labels must be integers [N]");
  if (a.ndim() != 1) throw ShapeError("labels", "labels must be one-dimensional [N]");
  std::vector<int> v(static_cast<std::size_t>(a.shape(0)));
  for (py::ssize_t i = 0; i < a.shape(0); ++i) {
    const std::int64_t y = a.at(i);
    if (y < 0 || y > std::numeric_limits<int>::max())
      throw ArgumentError("labels",
                          "label " + std::to_string(y) + " at " + std::to_string(i) + " is out of range");
    v[static_cast<std::size_t>(i)] = static_cast<int>(y);
  }
  return Labels(std::move(v));
}

// ---- Bindings -----------------------------------------------------------------------------------

void bind_core(py::module_& m) {
  bind_errors(m);

  py::class_<Tensor>(m, "Tensor", py::buffer_protocol(), R"doc(
A diffprobe tensor: the memory of a C++ diffprobe::Tensor, shared, never copied. NumPy reads it
through the buffer protocol (np.asarray(t)), PyTorch through DLPack (torch.from_dlpack(t)). Arrays
the module returns are NumPy views whose .base is the Tensor that owns the memory.)doc")
      .def_buffer([](const Tensor& t) { return tensor_buffer(t); })
      .def_property_readonly("shape", [](const Tensor& t) { return py::tuple(py::cast(t.shape().vec())); })
      .def_property_readonly("dtype", [](const Tensor& t) { return dtype_python_name(t.dtype()); })
      .def_property_readonly("layout", [](const Tensor& t) { return std::string(layout_name(t.layout())); })
      .def_property_readonly("device", [](const Tensor& t) { return t.device().str(); })
      .def_property_readonly("data_ptr",
                             [](const Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.raw()); })
      .def_property_readonly("nbytes", &Tensor::nbytes)
      .def("numpy", &to_numpy, "A NumPy view of the memory (bfloat16: a float32 copy).")
      .def(
          "__dlpack__", [](const Tensor& t, const py::object& /*stream*/) { return to_dlpack(t); },
          py::arg("stream") = py::none())
      .def("__dlpack_device__",
           [](const Tensor& t) {
             const DLDevice d = dl_device(t.device());
             return py::make_tuple(static_cast<int>(d.device_type), d.device_id);
           })
      .def("__repr__", [](const Tensor& t) { return "<diffprobe.Tensor " + t.str() + ">"; });

  m.def(
      "as_tensor", [](const py::array& a) { return view_numpy(a, true); }, py::arg("array"),
      "A diffprobe.Tensor viewing a C-contiguous float32/float16/int32/int64 array (no copy; it keeps the "
      "array alive).");
  m.def(
      "preprocess",
      [](const py::array& images, int channels, int size, const std::string& mode) {
        return to_numpy(model_inputs(images, channels, size, mode, "diffprobe.preprocess"));
      },
      py::arg("images"), py::arg("channels"), py::arg("size"), py::arg("mode") = "auto",
      "uint8 images [N, H, W] or [N, H, W, C] -> float32 model inputs [N, channels, size, size]. mode: "
      "'pad' (the IDX rule: pad with -1 to size, v / 127.5 - 1), 'adm' (guided-diffusion's "
      "center_crop_arr), 'torchvision', or 'auto' (pad when it applies, else adm).");
  m.def("hardware_threads", &hardware_threads);
  m.def("default_threads", &default_threads);
  m.def("set_default_threads", &set_default_threads, py::arg("threads"));
  m.def("cuda_available", &cuda_available);
}

}  // namespace diffprobe::python

PYBIND11_MODULE(_diffprobe, m) {
  namespace dpy = diffprobe::python;
  m.doc() = "diffprobe: ADM diffusion U-Net features for linear probes (C++ engine)";
  m.attr("__version__") = DIFFPROBE_VERSION_STRING;
  dpy::bind_core(m);
  dpy::bind_model(m);
  dpy::bind_features(m);
  dpy::bind_heads(m);
}

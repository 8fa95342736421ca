#pragma once
// Shared pieces of the Python binding (src/python/*.cpp): tensors <-> NumPy without copies,
// interrupt polling, the error translation.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <diffprobe/diffprobe.hpp>
#include <string>

namespace diffprobe::python {

namespace py = pybind11;

/// Thrown from a callback (progress, epoch) that runs inside a GIL-released call when Python has
/// an exception pending (Ctrl-C's KeyboardInterrupt, or one the user's callback raised). The
/// Python error indicator stays set; the binding re-raises it once it holds the GIL again.
struct PythonErrorPending {};

/// Called from a C++ callback without the GIL: takes the GIL, lets Python run its signal handlers
/// (Ctrl-C), and throws PythonErrorPending when one raised.
void poll_signals();
/// Runs a GIL-released C++ call; a PythonErrorPending is turned back into the Python exception.
template <class F> auto without_gil(F&& f) {
  try {
    py::gil_scoped_release release;
    return f();
  } catch (const PythonErrorPending&) {
    throw py::error_already_set();
  }
}

/// A NumPy array that views `t` (any layout: NHWC tensors get NHWC strides for their logical
/// NCHW shape) and keeps it alive through its base object, a diffprobe.Tensor. No copy, except
/// for bf16 (NumPy has no bf16: converted to float32).
py::array to_numpy(const Tensor& t);
/// A CPU tensor viewing the memory of a C-contiguous array of a supported dtype (no copy).
/// keep_alive: the tensor holds a reference to the array (released under the GIL); without it
/// the caller guarantees that the array outlives the tensor.
Tensor view_numpy(const py::array& a, bool keep_alive);
/// DType of a NumPy dtype; DTypeError when diffprobe has none.
DType dtype_of_numpy(const py::dtype& d);
/// DType names as Python sees them: "float32", "float16", "bfloat16", "int32", "int64".
const char* dtype_python_name(DType d);

/// Model inputs from a Python images argument: float32 [N, C, S, S] C-contiguous (viewed, no
/// copy) or uint8 images [N, H, W] / [N, H, W, C] (preprocessed with `preprocess`). ShapeError
/// (naming `where`) for anything else.
Tensor model_inputs(const py::array& images, int channels, int size, const std::string& preprocess,
                    const char* where);

/// One 8-bit image (h x w x c interleaved) to channels x size x size floats, by `mode` ("auto",
/// "pad", "adm", "torchvision"); no GIL needed.
void preprocess_image(const std::uint8_t* src, int h, int w, int c, int channels, int size,
                      const std::string& mode, float* out);

/// Labels from an integer array or sequence.
Labels labels_from(const py::handle& labels);

void bind_core(py::module_& m);
void bind_model(py::module_& m);
void bind_features(py::module_& m);
void bind_heads(py::module_& m);

}  // namespace diffprobe::python

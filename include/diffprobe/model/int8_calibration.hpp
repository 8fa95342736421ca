#pragma once
// Calibration of the int8 precision: one activation scale per convolution input, measured on a
// few batches of the user's own images and kept beside the model in a small JSON file, so that
// every image of a data set is quantised with the same scales (its features then depend neither
// on its batch nor on the other images), on every machine of a sharded run.
//
//   UNet net = UNet::load("model.safetensors");
//   Int8CalibrationRecorder rec(net);            // watches every int8 convolution's input
//   extractor.extract(calibration_images);         // any forwards (fp32 or bf16)
//   Int8Calibration cal = rec.result();            // scale = max over images of max |x| / 127
//   cal.save("model.int8.json");
//   net.set_int8_calibration(Int8Calibration::load("model.int8.json"));  // then precision INT8
//
// Without a calibration, an int8 convolution takes each image's own scale at run time.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace diffprobe {

class UNet;

/// How a convolution's scale is made from the max |x| of each calibration image.
enum class Int8ScaleMethod : std::uint8_t {
  Max,   // the largest over the images: no calibration image saturates
  Mean,  // their mean: a finer step, the largest values of some images saturate
};
const char* int8_scale_method_name(Int8ScaleMethod m) noexcept;
/// "max" | "mean"; ArgumentError otherwise.
Int8ScaleMethod parse_int8_scale_method(const std::string& text);

struct Int8Calibration {
  /// Convolution (state-dict prefix, e.g. "input_blocks.1.0.in_layers.2") -> its input's scale s:
  /// x ~ s * q, q = round(x / s) in [-127, 127]. In [1e-30, 1e30].
  std::map<std::string, float> scales;
  // Provenance, kept in the file and shown by tools.
  Int8ScaleMethod method = Int8ScaleMethod::Max;
  std::int64_t images = 0;     // calibration images (each seen once per timestep)
  std::vector<int> timesteps;  // the t they were noised to
  std::string weights_sha256;  // of the weights file, when the tool knew it
  std::string config_json;     // the model's UNetConfig as JSON

  /// Writes the JSON file atomically (a temporary, then renamed); IoError on failure.
  void save(const std::filesystem::path& path) const;
  /// Reads one; IoError when unreadable, FormatError (naming the field) when it is not a valid
  /// calibration file.
  static Int8Calibration load(const std::filesystem::path& path);
  std::string to_json() const;
  static Int8Calibration from_json(const std::string& text);  // FormatError
};

/// While alive, records the max |x| of each image at the input of every int8 convolution of the
/// model, from every forward run by any thread (calibrate in fp32 or bf16: an int8 forward would
/// see its own rounding). One recorder per model at a time (ArgumentError otherwise). Only the
/// convolutions the forwards reach get a scale (a forward stops at its deepest block).
class Int8CalibrationRecorder {
 public:
  explicit Int8CalibrationRecorder(const UNet& model);
  ~Int8CalibrationRecorder();
  Int8CalibrationRecorder(const Int8CalibrationRecorder&) = delete;
  Int8CalibrationRecorder& operator=(const Int8CalibrationRecorder&) = delete;

  /// The scales of what was seen so far. ArgumentError when nothing was recorded; NumericError
  /// when an input held NaN or an infinity.
  Int8Calibration result(Int8ScaleMethod method = Int8ScaleMethod::Max) const;
  /// Images seen by the first convolution (batch rows of the forwards).
  std::int64_t images_seen() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace diffprobe

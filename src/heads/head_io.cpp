// Saving and loading heads: weights, standardisation and the spec (as JSON metadata) in one
// safetensors file. Kept apart from head.cpp so that only code that saves pulls in io/.
#include <cmath>
#include <set>
#include <string>

#include "diffprobe/io/safetensors.hpp"
#include "heads/head_impl.hpp"

namespace diffprobe {
namespace {

constexpr const char* kFormatKey = "diffprobe.format";
constexpr const char* kSpecKey = "diffprobe.head";
constexpr const char* kVersionKey = "diffprobe.head_version";

std::string std_name(std::size_t i, const char* what) {
  return "standardize." + std::to_string(i) + "." + what;
}

bool reserved(const std::string& key) { return key.rfind("diffprobe.", 0) == 0; }

}  // namespace

io::NamedTensors Head::state_dict() const {
  io::NamedTensors out;
  for (const auto& p : impl_->params)
    out.set(p.name, Tensor::from_vector(Shape(p.param->shape), p.param->value));
  for (std::size_t i = 0; i < impl_->standardize.size(); ++i) {
    const Shape& s = impl_->spec.inputs[i];
    out.set(std_name(i, "mean"), Tensor::from_vector(s, impl_->standardize[i].mean));
    out.set(std_name(i, "std"), Tensor::from_vector(s, impl_->standardize[i].std));
  }
  return out;
}

void Head::load_state_dict(const io::NamedTensors& tensors) {
  const char* where = "Head::load_state_dict";
  auto values_of = [&](const std::string& name, const Shape& want) {
    const Tensor& t = tensors.at(name);
    if (t.shape() != want)
      throw FormatError(where,
                        "'" + name + "' has shape " + t.shape().str() + ", the head needs " + want.str());
    if (!is_floating(t.dtype()))
      throw FormatError(
          where, "'" + name + "' has dtype " + std::string(dtype_name(t.dtype())) + ", expected a float");
    return t.to_vector();
  };
  std::set<std::string> used;
  std::vector<std::vector<float>> values;
  for (const auto& p : impl_->params) {
    if (!tensors.contains(p.name)) throw FormatError(where, "missing parameter '" + p.name + "'");
    values.push_back(values_of(p.name, Shape(p.param->shape)));
    used.insert(p.name);
  }
  std::vector<Standardizer> st;
  const std::size_t inputs = impl_->spec.inputs.size();
  for (std::size_t i = 0; i < inputs; ++i) {
    const bool has_mean = tensors.contains(std_name(i, "mean")),
               has_std = tensors.contains(std_name(i, "std"));
    if (!has_mean && !has_std) continue;
    if (!has_mean || !has_std || (i > 0 && st.size() != i))
      throw FormatError(where, "incomplete feature standardisation (every input needs both mean and std)");
    Standardizer s;
    s.mean = values_of(std_name(i, "mean"), impl_->spec.inputs[i]);
    s.std = values_of(std_name(i, "std"), impl_->spec.inputs[i]);
    for (float v : s.std)
      if (!(v > 0) || !std::isfinite(v))
        throw FormatError(where, "standardisation std must be positive and finite");
    used.insert(std_name(i, "mean"));
    used.insert(std_name(i, "std"));
    st.push_back(std::move(s));
  }
  if (!st.empty() && st.size() != inputs)
    throw FormatError(where, "incomplete feature standardisation (every input needs both mean and std)");
  for (const auto& [name, t] : tensors)
    if (!used.count(name)) throw FormatError(where, "unexpected tensor '" + name + "' for this head");
  for (std::size_t i = 0; i < values.size(); ++i) impl_->params[i].param->value = std::move(values[i]);
  impl_->standardize = std::move(st);
}

void Head::save(const std::filesystem::path& path, DType store) const {
  if (!is_floating(store))
    throw ArgumentError("Head::save",
                        "weights are stored as f32, f16 or bf16, not " + std::string(dtype_name(store)));
  io::NamedTensors nt = state_dict();
  for (const auto& [k, v] : impl_->metadata) {
    if (reserved(k)) throw ArgumentError("Head::save", "metadata key '" + k + "' is reserved");
    nt.metadata[k] = v;
  }
  // insert_or_assign with std::string values: assigning a literal trips GCC 12's bogus -Wrestrict.
  nt.metadata.insert_or_assign(kFormatKey, std::string("head"));
  nt.metadata.insert_or_assign(kVersionKey, std::string("1"));
  nt.metadata.insert_or_assign(kSpecKey, impl_->spec.to_json());
  io::save_safetensors(path, nt, store);
}

Head Head::load(const std::filesystem::path& path) {
  const std::string where = "Head::load(" + path.string() + ")";
  const io::NamedTensors nt = io::load_safetensors(path);
  const auto fmt = nt.metadata.find(kFormatKey);
  const auto spec = nt.metadata.find(kSpecKey);
  if (fmt == nt.metadata.end() || fmt->second != "head" || spec == nt.metadata.end())
    throw FormatError(where, "not a diffprobe head file (no '" + std::string(kSpecKey) + "' metadata)");
  const auto version = nt.metadata.find(kVersionKey);
  if (version != nt.metadata.end() && version->second != "1")
    throw FormatError(where,
                      "head format version " + version->second + " is newer than this build understands (1)");
  HeadSpec s;
  try {
    s = HeadSpec::from_json(spec->second);
  } catch (const ConfigError& e) {
    throw FormatError(where, "invalid head spec: " + e.why());
  }
  Head h = from_spec(s);
  h.load_state_dict(nt);
  for (const auto& [k, v] : nt.metadata)
    if (!reserved(k)) h.impl_->metadata[k] = v;
  return h;
}

}  // namespace diffprobe

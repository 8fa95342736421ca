#include "diffprobe/heads/head_spec.hpp"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "core/text.hpp"
#include "diffprobe/core/error.hpp"

namespace diffprobe {
namespace {

using json = nlohmann::json;

// An integer field: JSON integers only, within T's range. nlohmann's get<int>() converts with a
// static_cast, so 1e300 was undefined behaviour and 2^32 + 3 became 3 (found by fuzz_head).
template <class T> T int_field(const json& v, const char* field) {
  std::int64_t x = 0;
  const bool ok =
      v.is_number_integer() &&
      (!v.is_number_unsigned() ||
       v.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
  if (ok)
    x = v.is_number_unsigned() ? static_cast<std::int64_t>(v.get<std::uint64_t>()) : v.get<std::int64_t>();
  if (!ok || x < std::numeric_limits<T>::min() || x > std::numeric_limits<T>::max())
    throw FormatError("HeadSpec::from_json", std::string("malformed head spec: '") + field +
                                                 "' must be an integer in the range of " +
                                                 (sizeof(T) == 4 ? "int32" : "int64") + ", got " + v.dump());
  return static_cast<T>(x);
}

template <class T> std::vector<T> int_list(const json& v, const char* field) {
  if (!v.is_array())
    throw FormatError("HeadSpec::from_json", std::string("malformed head spec: '") + field +
                                                 "' must be a list of integers, got " + v.dump());
  std::vector<T> out;
  for (const auto& e : v) out.push_back(int_field<T>(e, field));
  return out;
}

void require(bool ok, const std::string& why) {
  if (!ok) throw ConfigError("HeadSpec", why);
}

json shape_json(const Shape& s) { return json(s.vec()); }

}  // namespace

const char* head_kind_name(HeadKind kind) noexcept {
  switch (kind) {
    case HeadKind::Linear: return "linear";
    case HeadKind::MLP: return "mlp";
    case HeadKind::CNN: return "cnn";
    case HeadKind::Attention: return "attention";
    case HeadKind::Fusion: return "fusion";
  }
  return "?";
}

HeadKind parse_head_kind(std::string_view name) {
  for (HeadKind k : {HeadKind::Linear, HeadKind::MLP, HeadKind::CNN, HeadKind::Attention, HeadKind::Fusion})
    if (name == head_kind_name(k)) return k;
  throw ConfigError("parse_head_kind",
                    "unknown head kind '" + std::string(name) + "' (linear, mlp, cnn, attention, fusion)");
}

std::vector<int> parse_hidden_sizes(std::string_view text) {
  if (text.empty())
    throw ConfigError("parse_hidden_sizes", "empty hidden sizes (expected e.g. \"2048_1024\")");
  std::vector<int> out;
  for (const auto& part : detail::split(text, '_')) {
    const auto v = detail::parse_integer(part, 1, std::numeric_limits<int>::max());
    if (!v)
      throw ConfigError("parse_hidden_sizes", "bad hidden size '" + part + "' in \"" + std::string(text) +
                                                  "\" (expected positive integers joined by '_')");
    out.push_back(static_cast<int>(*v));
  }
  return out;
}

void HeadSpec::validate() const {
  // Upper bounds keep a spec read from a file from asking for an absurd model before its
  // tensors are checked: no weight matrix beyond 2^31 values (8 GB in f32).
  constexpr std::int64_t kMaxMatrix = std::int64_t{1} << 31;
  auto matrix = [&](std::int64_t a, std::int64_t b, const std::string& what) {
    require(a <= kMaxMatrix / std::max<std::int64_t>(b, 1),
            what + " would hold " + std::to_string(a) + " x " + std::to_string(b) + " weights (over 2^31)");
  };
  require(num_classes >= 2 && num_classes <= (1 << 20),
          "num_classes must be in [2, 2^20], got " + std::to_string(num_classes));
  require(!inputs.empty() && inputs.size() <= 256,
          "a head takes 1 to 256 input shapes, got " + std::to_string(inputs.size()));
  for (const auto& s : inputs) {
    require(s.rank() >= 1, "an input shape is empty");
    for (auto d : s.dims()) require(d >= 1, "input shape " + s.str() + " has a non-positive dimension");
    require(s.numel() <= (std::int64_t{1} << 28),
            "input shape " + s.str() + " has over 2^28 values per sample");
  }
  for (int h : hidden) require(h <= (1 << 20), "MLP hidden sizes must be <= 2^20");
  for (int c : cnn.channels) require(c <= (1 << 16), "CNN channels must be <= 65536");
  require(attention.dim <= (1 << 16) && attention.heads <= 4096 && attention.depth <= 64 &&
              attention.mlp_ratio <= 64,
          "attention dim <= 65536, heads <= 4096, depth <= 64 and mlp_ratio <= 64 are required");
  require(num_timesteps >= 1 && num_timesteps <= 256, "num_timesteps must be in [1, 256]");
  for (const auto& s : inputs) {
    const std::int64_t per = s.numel();
    switch (kind) {
      case HeadKind::Linear: matrix(per, num_classes, "the linear layer"); break;
      case HeadKind::MLP:
        if (!hidden.empty()) matrix(per, hidden.front(), "the first MLP layer");
        for (std::size_t i = 1; i < hidden.size(); ++i) matrix(hidden[i - 1], hidden[i], "an MLP layer");
        if (!hidden.empty()) matrix(hidden.back(), num_classes, "the MLP's output layer");
        break;
      case HeadKind::CNN:
        if (!cnn.channels.empty()) matrix(per, cnn.channels.back(), "the CNN's flattened classifier");
        break;
      default: matrix(s.rank() == 3 ? s.dim(0) : per, attention.dim, "the attention head's projection");
    }
  }
  const bool maps = kind == HeadKind::CNN || kind == HeadKind::Attention || kind == HeadKind::Fusion;
  if (maps)
    for (const auto& s : inputs)
      require(s.rank() == 3,
              std::string(head_kind_name(kind)) + " head needs [C, H, W] feature maps, got " + s.str());
  if (kind != HeadKind::Fusion) {
    require(inputs.size() == 1, std::string(head_kind_name(kind)) + " head takes one input, got " +
                                    std::to_string(inputs.size()));
    require(num_timesteps == 1, "num_timesteps is only for the fusion head");
  }
  if (kind == HeadKind::MLP) {
    require(!hidden.empty(), "MLP head needs at least one hidden size");
    for (int h : hidden) require(h >= 1, "MLP hidden sizes must be >= 1");
  } else {
    require(hidden.empty(), "hidden sizes are only for the MLP head");
  }
  if (kind == HeadKind::CNN) {
    require(!cnn.channels.empty(), "CNN head needs at least one conv layer");
    for (int c : cnn.channels) require(c >= 1, "CNN channels must be >= 1");
    require(cnn.max_pool >= 1, "CNN max_pool must be >= 1");
    require(cnn.norm_eps > 0, "CNN norm_eps must be > 0");
  }
  if (kind == HeadKind::Attention || kind == HeadKind::Fusion) {
    const auto& a = attention;
    require(a.dim >= 1 && a.heads >= 1 && a.dim % a.heads == 0, "attention dim " + std::to_string(a.dim) +
                                                                    " must be a positive multiple of heads " +
                                                                    std::to_string(a.heads));
    require(a.depth >= 1, "attention depth must be >= 1");
    require(a.mlp_ratio >= 1, "attention mlp_ratio must be >= 1");
    require(a.max_pool >= 1, "attention max_pool must be >= 1");
    require(a.norm_eps > 0, "attention norm_eps must be > 0");
  }
  if (kind == HeadKind::Fusion) {
    require(num_timesteps >= 1 && inputs.size() % static_cast<std::size_t>(num_timesteps) == 0,
            std::to_string(inputs.size()) + " inputs do not split into " + std::to_string(num_timesteps) +
                " timesteps");
    const std::size_t nb = inputs.size() / static_cast<std::size_t>(num_timesteps);
    for (std::size_t i = nb; i < inputs.size(); ++i)
      require(inputs[i] == inputs[i % nb], "block " + std::to_string(i % nb) + " has shape " +
                                               inputs[i % nb].str() + " at the first timestep but " +
                                               inputs[i].str() + " at timestep " + std::to_string(i / nb) +
                                               " (its tokenizer is shared across t)");
  }
}

std::string HeadSpec::to_json() const {
  json j;
  j["kind"] = head_kind_name(kind);
  j["inputs"] = json::array();
  for (const auto& s : inputs) j["inputs"].push_back(shape_json(s));
  j["num_timesteps"] = num_timesteps;
  j["num_classes"] = num_classes;
  j["hidden"] = hidden;
  j["cnn"] = {{"channels", cnn.channels},
              {"max_pool", cnn.max_pool},
              {"input_norm", cnn.input_norm},
              {"norm_eps", cnn.norm_eps}};
  j["attention"] = {{"dim", attention.dim},           {"depth", attention.depth},
                    {"heads", attention.heads},       {"mlp_ratio", attention.mlp_ratio},
                    {"max_pool", attention.max_pool}, {"norm_eps", attention.norm_eps}};
  return j.dump();
}

HeadSpec HeadSpec::from_json(std::string_view text) {
  HeadSpec s;
  try {
    const json j = json::parse(text);
    s.kind = parse_head_kind(j.at("kind").get<std::string>());
    for (const auto& shape : j.at("inputs")) s.inputs.emplace_back(int_list<std::int64_t>(shape, "inputs"));
    s.num_timesteps = int_field<int>(j.at("num_timesteps"), "num_timesteps");
    s.num_classes = int_field<int>(j.at("num_classes"), "num_classes");
    s.hidden = int_list<int>(j.at("hidden"), "hidden");
    const auto& c = j.at("cnn");
    s.cnn.channels = int_list<int>(c.at("channels"), "cnn.channels");
    s.cnn.max_pool = int_field<int>(c.at("max_pool"), "cnn.max_pool");
    s.cnn.input_norm = c.at("input_norm").get<bool>();
    s.cnn.norm_eps = c.at("norm_eps").get<double>();
    const auto& a = j.at("attention");
    s.attention.dim = int_field<int>(a.at("dim"), "attention.dim");
    s.attention.depth = int_field<int>(a.at("depth"), "attention.depth");
    s.attention.heads = int_field<int>(a.at("heads"), "attention.heads");
    s.attention.mlp_ratio = int_field<int>(a.at("mlp_ratio"), "attention.mlp_ratio");
    s.attention.max_pool = int_field<int>(a.at("max_pool"), "attention.max_pool");
    s.attention.norm_eps = a.at("norm_eps").get<double>();
  } catch (const json::exception& e) {
    throw FormatError("HeadSpec::from_json", std::string("malformed head spec: ") + e.what());
  } catch (const ShapeError& e) {
    throw FormatError("HeadSpec::from_json", std::string("malformed input shape: ") + e.why());
  }
  s.validate();
  return s;
}

}  // namespace diffprobe

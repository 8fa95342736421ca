#include "features/writer_progress.hpp"

#include <nlohmann/json.hpp>

#include "diffprobe/core/error.hpp"

namespace diffprobe::detail {
namespace {

using Json = nlohmann::ordered_json;

constexpr const char* kPartialFormat = "diffprobe.features.partial";

// An integer of a progress record: JSON integers only, within int64 (nlohmann's get<int64_t>()
// static_casts a float, so 1e300 in a corrupt record was undefined behaviour).
std::int64_t record_int(const nlohmann::json& v, const std::string& where) {
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
    throw FormatError(where, "malformed progress record: " + v.dump() + " is out of range");
  if (!v.is_number_integer())
    throw FormatError(where, "malformed progress record: " + v.dump() + " is not an integer");
  return v.is_number_unsigned() ? static_cast<std::int64_t>(v.get<std::uint64_t>()) : v.get<std::int64_t>();
}

}  // namespace

std::string WriterProgress::to_json() const {
  Json j = Json::object();
  j["format"] = kPartialFormat;
  j["total"] = total;
  j["chunk_size"] = chunk_size;
  j["labels"] = labels;
  j["store"] = store;
  j["metadata"] = metadata;
  Json ts = Json::array();
  for (const auto& t : tensors)
    ts.push_back(
        {{"name", t.name}, {"dtype", std::string(dtype_name(t.dtype))}, {"sample_shape", t.sample_shape}});
  j["tensors"] = std::move(ts);
  j["done"] = done;
  if (!skipped.empty()) {  // absent when none: records of runs without skips are unchanged
    Json s = Json::array();
    for (const auto& k : skipped) s.push_back({{"row", k.row}, {"error", k.error}});
    j["skipped"] = std::move(s);
  }
  return j.dump(1);
}

WriterProgress WriterProgress::from_json(const std::string& text, const std::string& where,
                                         const std::string& partial_dir) {
  Json j;
  try {
    j = Json::parse(text);
  } catch (const Json::exception& e) {
    throw FormatError(where,
                      "corrupt progress record (delete " + partial_dir + " to start over): " + e.what());
  }
  try {
    if (!j.is_object() || j.at("format").get<std::string>() != kPartialFormat)
      throw FormatError(where, "not a feature-writer progress record");
    WriterProgress p;
    p.total = record_int(j.at("total"), where);
    p.chunk_size = record_int(j.at("chunk_size"), where);
    p.labels = j.at("labels").get<bool>();
    p.store = j.at("store").get<std::string>();
    p.metadata = j.at("metadata").get<std::map<std::string, std::string>>();
    for (const auto& t : j.at("tensors")) {
      ChunkTensor info;
      info.name = t.at("name").get<std::string>();
      info.dtype = parse_dtype(t.at("dtype").get<std::string>());
      for (const auto& d : t.at("sample_shape")) info.sample_shape.push_back(record_int(d, where));
      p.tensors.push_back(std::move(info));
    }
    for (const auto& c : j.at("done")) p.done.push_back(record_int(c, where));
    if (j.contains("skipped"))
      for (const auto& k : j.at("skipped"))
        p.skipped.push_back({record_int(k.at("row"), where), k.at("error").get<std::string>()});
    return p;
  } catch (const Json::exception& e) {
    throw FormatError(where,
                      "malformed progress record (delete " + partial_dir + " to start over): " + e.what());
  }
}

}  // namespace diffprobe::detail

// NamedTensors: insertion order, replacement, erase, and the "did you mean" error of at().
#include <gtest/gtest.h>

#include "diffprobe/core/error.hpp"
#include "diffprobe/io/named_tensors.hpp"

namespace {

using namespace diffprobe;
using io::NamedTensors;

Tensor filled(float v, std::int64_t n = 2) {
  return Tensor::from_vector({n}, std::vector<float>(static_cast<std::size_t>(n), v));
}

TEST(NamedTensors, KeepsInsertionOrderAndReplacesInPlace) {
  NamedTensors nt;
  EXPECT_TRUE(nt.empty());
  nt.set("c", filled(1));
  nt.set("a", filled(2));
  nt.set("b", filled(3));
  nt.set("a", filled(4, 3));  // replaced, keeps its position
  EXPECT_EQ(nt.names(), (std::vector<std::string>{"c", "a", "b"}));
  EXPECT_EQ(nt.size(), 3u);
  EXPECT_EQ(nt.at("a").numel(), 3);
  EXPECT_EQ(nt.at("a").item_at(0), 4.0);
  std::vector<std::string> iterated;
  for (const auto& [name, t] : nt) iterated.push_back(name);
  EXPECT_EQ(iterated, nt.names());
}

TEST(NamedTensors, EraseKeepsTheOthersReachable) {
  NamedTensors nt;
  for (int i = 0; i < 6; ++i) {
    std::string name = "t";  // (not "t" + to_string: GCC 12 warns falsely about that)
    name += std::to_string(i);
    nt.set(name, filled(static_cast<float>(i)));
  }
  nt.erase("t2");
  nt.erase("t0");
  nt.erase("not-there");  // no-op
  EXPECT_EQ(nt.names(), (std::vector<std::string>{"t1", "t3", "t4", "t5"}));
  for (const char* n : {"t1", "t3", "t4", "t5"})
    EXPECT_EQ(nt.at(n).item_at(0), static_cast<double>(n[1] - '0')) << n;
  EXPECT_FALSE(nt.contains("t2"));
  nt.set("t2", filled(9));
  EXPECT_EQ(nt.names().back(), "t2");
  EXPECT_EQ(nt.at("t2").item_at(1), 9.0);
}

TEST(NamedTensors, AtNamesTheClosestKeys) {
  NamedTensors nt;
  const std::vector<std::string> keys = {"input_blocks.0.0.weight",
                                         "input_blocks.0.0.bias",
                                         "input_blocks.1.0.in_layers.0.weight",
                                         "out.0.weight",
                                         "out.0.bias",
                                         "out.2.weight",
                                         "out.2.bias",
                                         "time_embed.0.weight",
                                         "time_embed.0.bias",
                                         "label_emb.weight"};
  for (const auto& k : keys) nt.set(k, filled(0));
  try {
    nt.at("input_blocks.0.0.weigth");
    FAIL() << "no exception";
  } catch (const ArgumentError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'input_blocks.0.0.weigth'"), std::string::npos) << what;
    const auto closest = what.find("closest: ");
    ASSERT_NE(closest, std::string::npos) << what;
    // The best match comes first, and at most five are listed.
    EXPECT_EQ(what.compare(closest + 9, 25, "'input_blocks.0.0.weight'"), 0) << what;
    std::size_t quotes = 0;
    for (std::size_t p = closest; p < what.size(); ++p) quotes += what[p] == '\'';
    EXPECT_EQ(quotes, 10u) << what;
  }
  NamedTensors empty;
  EXPECT_THROW(empty.at("x"), ArgumentError);
}

}  // namespace

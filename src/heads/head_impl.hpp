#pragma once
// Head's private state, shared by head.cpp (training, inference) and head_io.cpp (files).
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "diffprobe/heads/head.hpp"
#include "heads/model.hpp"

namespace diffprobe {

/// Per-feature standardisation of one input: x' = (x - mean) / std, fitted on training data.
struct Standardizer {
  std::vector<float> mean, std;
};

struct Head::Impl {
  HeadSpec spec;
  std::unique_ptr<heads::Model<float>> model;
  std::vector<heads::ParamRef<float>> params;  // model->parameters(), cached
  std::vector<Standardizer> standardize;       // empty, or one per input
  std::map<std::string, std::string> metadata;
  int threads = 0;  // inference; <= 0: default_threads()
};

}  // namespace diffprobe

// The library's data flow in one short program:
//   weights -> UNet -> FeatureExtractor (noise to t, run to block b) -> Pooler -> Head (linear probe).
// Usage: example_feature_pipeline MODEL.safetensors TRAIN-IMAGES.idx.gz TRAIN-LABELS.idx.gz
//                                 TEST-IMAGES.idx.gz TEST-LABELS.idx.gz [N_TRAIN] [N_TEST]
// e.g. with the bundled model and Debian's dataset-fashion-mnist:
//   example_feature_pipeline models/fmnist_default.safetensors
//     /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
//     /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz
//     /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
//     /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
#include <fmt/core.h>

#include <diffprobe/diffprobe.hpp>

namespace dp = diffprobe;

int main(int argc, char** argv) try {
  if (argc < 6) {
    fmt::print(stderr,
               "usage: {} MODEL TRAIN-IMAGES TRAIN-LABELS TEST-IMAGES TEST-LABELS [N_TRAIN] [N_TEST]\n",
               argv[0]);
    return 2;
  }
  const std::int64_t n_train = argc > 6 ? std::stoll(argv[6]) : 2000;
  const std::int64_t n_test = argc > 7 ? std::stoll(argv[7]) : 1000;

  const auto model = dp::UNet::load(argv[1]);  // config from the file's metadata, a preset or the shapes
  dp::FeatureExtractor fx(model,
                          {.timesteps = {50}, .blocks = {model.num_input_blocks() + 3}, .noise_seed = 0});
  const dp::Pooler pool({.kind = dp::PoolKind::Average, .size = 2});

  const auto spec = dp::data::InputSpec::from_shape(fx.input_spec());
  const dp::data::IdxDataset train(argv[2], argv[3], spec, {.limit = n_train});
  const dp::data::IdxDataset test(argv[4], argv[5], spec, {.limit = n_test});
  const int t = fx.options().timesteps[0], b = fx.options().blocks[0];

  const dp::Tensor x_train = pool(fx.extract(train.images(0, train.size())).at(t, b));  // [N, C*2*2]
  const dp::Tensor x_test = pool(fx.extract(test.images(0, test.size())).at(t, b));

  auto head = dp::Head::linear(x_train.shape(), train.num_classes());
  auto cfg = dp::TrainConfig::paper_linear();
  cfg.epochs = 12;
  cfg.step_epochs = 4;
  cfg.standardize = true;
  head.fit(x_train, *train.labels(), cfg);
  const auto report = head.evaluate(x_test, *test.labels());
  fmt::print("t={} block={} features={}  linear probe top-1 {:.2f}% on {} test images\n", t, b,
             x_train.dim(1), 100 * report.top1, test.size());
  return 0;
} catch (const dp::Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 1;
}

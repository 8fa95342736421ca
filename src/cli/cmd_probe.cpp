// `diffprobe probe`: train a head on extracted features, evaluate it on the test features.
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "cli/commands.hpp"
#include "cli/parse_list.hpp"
#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/features/feature_rows.hpp"
#include "diffprobe/heads/head.hpp"
#include "io/atomic_file.hpp"

namespace diffprobe::cli {

Runner add_probe(CLI::App& app) {
  struct Opts {
    std::string train, test, feature, head = "linear", optimizer, schedule, save, json;
    std::optional<int> epochs, batch;
    std::optional<double> lr, momentum, weight_decay;
    double val_fraction = 0;
    int patience = 0, threads = 0, attn_dim = 0;
    std::uint64_t seed = 0;
    bool standardize = false, confusion = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--train", o->train, "training feature file (or its shard parts, comma-separated)")
      ->required();
  app.add_option("--test", o->test, "test feature file (or its shard parts, comma-separated)")->required();
  app.add_option("--feature", o->feature,
                 "feature name(s), e.g. t90.b24 (fusion: t90.b19,t90.b24,t150.b19,...)")
      ->required();
  app.add_option("--head", o->head, "linear | mlp:H1_H2 | cnn | attention | fusion");
  app.add_option("--epochs", o->epochs, "epochs (default: the paper's 28)");
  app.add_option("--lr", o->lr,
                 "learning rate (default: 1e-2 linear/MLP/CNN, 5e-2 attention/fusion with SGD)");
  app.add_option("--batch", o->batch, "mini-batch size (default 128)");
  app.add_option("--optimizer", o->optimizer, "sgd or adamw (default sgd)")
      ->check(CLI::IsMember({"sgd", "adamw"}));
  app.add_option("--schedule", o->schedule, "step, cosine or constant (default step: x0.1 every 7 epochs)")
      ->check(CLI::IsMember({"step", "cosine", "constant"}));
  app.add_option("--momentum", o->momentum, "SGD momentum (default 0)");
  app.add_option("--weight-decay", o->weight_decay, "weight decay (default 0)");
  app.add_option("--val-fraction", o->val_fraction, "hold out this fraction of training data for validation");
  app.add_option("--patience", o->patience, "early stopping patience in epochs (needs --val-fraction)");
  app.add_flag("--standardize", o->standardize,
               "standardise features (fitted on training data, saved with the head)");
  app.add_option("--attention-dim", o->attn_dim, "attention/fusion head width (default 1024, the paper's)")
      ->check(at_least(1));
  app.add_option("--seed", o->seed, "seed for initialisation and shuffling")->check(at_least(0));
  app.add_option("--threads", o->threads, "CPU threads (default: all cores)")->check(at_least(0));
  app.add_option("--save", o->save, "save the trained head (.safetensors)");
  app.add_option("--json", o->json, "write the results as JSON");
  app.add_flag("--confusion", o->confusion, "print the confusion matrix");
  return [o]() {
    // The destinations are checked before training, which can take hours, not after it.
    if (!o->save.empty()) io::detail::check_writable(o->save);
    if (!o->json.empty()) io::detail::check_writable(o->json);
    // Features are read from disk batch by batch (FeatureRows), never loaded whole: memory does
    // not grow with the files. A comma-separated list is the parts of a sharded extraction.
    auto paths = [](const std::string& list) {
      const auto v = split(list);
      return std::vector<std::filesystem::path>(v.begin(), v.end());
    };
    const auto train_paths = paths(o->train), test_paths = paths(o->test);
    const FeatureMetadata train_meta = FeatureFile::open(train_paths[0]).metadata();
    const int test_copies = FeatureFile::open(test_paths[0]).metadata().copies;
    const auto names = split(o->feature);
    std::vector<FeatureRows> ftr, fte;
    for (const auto& n : names) {
      ftr.push_back(FeatureRows::open(train_paths, n));
      fte.push_back(FeatureRows::open(test_paths, n));
      if (ftr.back().sample_shape() != fte.back().sample_shape())
        throw ShapeError("--feature", n + " has different shapes in the two files");
    }
    for (const auto* set : {&ftr, &fte})
      if ((*set)[0].skipped_rows() > 0)
        fmt::print(stderr,
                   "left out {} rows of the {} features whose image could not be read (extract "
                   "--on-bad-image skip)\n",
                   (*set)[0].skipped_rows(), set == &ftr ? "training" : "test");
    const auto& ltr = ftr[0].labels();
    const auto& lte = fte[0].labels();
    if (!ltr || !lte) throw ArgumentError("diffprobe probe", "both feature files need labels");
    int classes = 0;
    for (const auto* y : {&*ltr, &*lte})
      for (const std::int64_t v : *y) classes = std::max<int>(classes, static_cast<int>(v) + 1);
    auto as_tensor = [](const std::vector<std::int64_t>& v) {
      Tensor t = Tensor::empty(Shape{static_cast<std::int64_t>(v.size())}, DType::I64);
      std::copy(v.begin(), v.end(), t.data<std::int64_t>());
      return t;
    };
    const Tensor ytr = as_tensor(*ltr), yte = as_tensor(*lte);
    auto with_rows = [](const FeatureRows& f) {
      std::vector<std::int64_t> d{f.rows()};
      const auto sample = f.sample_shape().vec();
      d.insert(d.end(), sample.begin(), sample.end());
      return Shape(d);
    };
    std::vector<const FeatureRows*> xtr, xte;
    for (std::size_t i = 0; i < names.size(); ++i) {
      xtr.push_back(&ftr[i]);
      xte.push_back(&fte[i]);
    }

    const std::string kind = o->head.substr(0, o->head.find(':'));
    AttentionHeadConfig ac;
    if (o->attn_dim > 0) ac.dim = o->attn_dim;
    const Shape s = with_rows(*xtr[0]);
    auto head = [&]() -> Head {
      if (kind == "linear") return Head::linear(s, classes);
      if (kind == "mlp") {
        const auto colon = o->head.find(':');
        if (colon == std::string::npos)
          throw ArgumentError("--head", "mlp needs hidden sizes, e.g. mlp:2048_1024");
        return Head::mlp(s, std::string_view(o->head).substr(colon + 1), classes);
      }
      if (kind == "cnn") return Head::cnn(s, classes);
      if (kind == "attention") return Head::attention(s, classes, ac);
      if (kind == "fusion") {
        // Group the names by t (t-major), blocks in the order given.
        std::vector<int> ts;
        std::vector<std::vector<Shape>> shapes;
        for (std::size_t i = 0; i < names.size(); ++i) {
          const auto [t, b] = parse_feature_name(names[i]);
          (void)b;
          auto it = std::find(ts.begin(), ts.end(), t);
          if (it == ts.end()) {
            ts.push_back(t);
            shapes.emplace_back();
            it = ts.end() - 1;
          }
          shapes[static_cast<std::size_t>(it - ts.begin())].push_back(with_rows(*xtr[i]));
        }
        std::vector<const FeatureRows*> rtr, rte;
        for (int t : ts)
          for (std::size_t i = 0; i < names.size(); ++i)
            if (parse_feature_name(names[i]).first == t) {
              rtr.push_back(xtr[i]);
              rte.push_back(xte[i]);
            }
        xtr = rtr;
        xte = rte;
        return Head::fusion(shapes, classes, ac);
      }
      throw ArgumentError("--head",
                          "unknown head '" + o->head + "' (linear, mlp:H1_H2, cnn, attention, fusion)");
    }();
    if (kind != "fusion" && names.size() != 1)
      throw ArgumentError("--feature", "only the fusion head takes several features");

    TrainConfig tc = (kind == "attention" || kind == "fusion") ? TrainConfig::paper_attention()
                                                               : TrainConfig::paper_linear();
    if (o->epochs) tc.epochs = *o->epochs;
    if (o->lr) tc.lr = *o->lr;
    if (o->batch) tc.batch_size = *o->batch;
    if (!o->optimizer.empty()) tc.optimizer = parse_optimizer(o->optimizer.c_str());
    if (!o->schedule.empty()) tc.schedule = parse_schedule(o->schedule.c_str());
    if (o->momentum) tc.momentum = *o->momentum;
    if (o->weight_decay) tc.weight_decay = *o->weight_decay;
    tc.val_fraction = o->val_fraction;
    tc.patience = o->patience;
    tc.standardize = o->standardize;
    // Augmented training features: one copy per epoch, cycling (the paper recomputes the frozen
    // U-Net on fresh augmentations every epoch; K cached copies are the practical form).
    tc.copies = train_meta.copies;
    if (test_copies != 1)
      throw ArgumentError("--test",
                          fmt::format("{} holds {} augmented copies per image; evaluate on features "
                                      "extracted without --augment",
                                      o->test, test_copies));
    tc.seed = o->seed;
    tc.threads = o->threads;
    // The paper's step schedule divides lr by 10 at each quarter of training (every 7 of 28 epochs).
    tc.step_epochs = std::max(1, tc.epochs / 4);
    tc.on_epoch = [](const EpochStats& e) {
      fmt::print(stderr, "epoch {:>3}  lr {:.2e}  loss {:.4f}  train acc {:.2f}%{}\n", e.epoch + 1, e.lr,
                 e.train_loss, 100 * e.train_accuracy,
                 std::isnan(e.val_accuracy) ? std::string()
                                            : fmt::format("  val acc {:.2f}%", 100 * e.val_accuracy));
    };
    head.reset_parameters(o->seed);
    fmt::print(
        stderr, "training a {} head ({} parameters) on {} samples{} of {}, {} classes\n", o->head,
        head.num_parameters(), xtr[0]->rows() / tc.copies,
        tc.copies > 1 ? fmt::format(" x {} augmented copies (one per epoch)", tc.copies) : std::string(),
        o->feature, classes);
    const TrainHistory hist = kind == "fusion" ? head.fit(xtr, ytr, tc) : head.fit(*xtr[0], ytr, tc);
    const Report rep = kind == "fusion" ? head.evaluate(xte, yte) : head.evaluate(*xte[0], yte);
    fmt::print("head {}  feature {}  train {}  test {}  top-1 {:.2f}%  top-5 {:.2f}%\n", o->head, o->feature,
               xtr[0]->rows() / tc.copies, xte[0]->rows(), 100 * rep.top1, 100 * rep.top5);
    if (o->confusion) {
      fmt::print("confusion (rows: true class, columns: predicted)\n");
      for (int i = 0; i < rep.num_classes; ++i) {
        for (int j = 0; j < rep.num_classes; ++j) fmt::print("{:>6}", rep.confusion_at(i, j));
        fmt::print("\n");
      }
    }
    if (!o->save.empty()) {
      head.metadata()["feature"] = o->feature;
      head.metadata()["features_config"] = train_meta.config_json;
      head.metadata()["pooling"] = train_meta.pooling;
      head.save(o->save);
      fmt::print(stderr, "saved the head to {}\n", o->save);
    }
    if (!o->json.empty()) {
      std::ofstream f(o->json);
      if (!f) throw IoError("--json", "cannot write " + o->json);
      f << fmt::format(
          "{{\"head\": \"{}\", \"feature\": \"{}\", \"train\": {}, \"test\": {}, \"top1\": {:.6f}, \"top5\": "
          "{:.6f}, \"epochs\": {}}}\n",
          o->head, o->feature, xtr[0]->rows() / tc.copies, xte[0]->rows(), rep.top1, rep.top5,
          hist.epochs.size());
    }
    return 0;
  };
}

}  // namespace diffprobe::cli

// The sweep: extraction jobs per (split, pool, t) into resumable feature files, then one probe per
// cell, each cell's scores saved as soon as they exist, so a killed sweep resumes where it stopped.
#include "diffprobe/studies/sweep.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <type_traits>

#include "diffprobe/core/error.hpp"
#include "diffprobe/features/extraction_job.hpp"
#include "diffprobe/features/feature_file.hpp"
#include "diffprobe/heads/head.hpp"
#include "io/atomic_file.hpp"
#include "studies/heatmap.hpp"

namespace diffprobe {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kWhere = "run_sweep";

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// "avg:2" -> "avg2": file names without colons.
std::string pool_tag(const PoolSpec& p) {
  std::string s = p.str();
  s.erase(std::remove(s.begin(), s.end(), ':'), s.end());
  return s;
}

fs::path features_path(const fs::path& dir, const char* split, int t, const PoolSpec& pool) {
  return dir / "features" / fmt::format("{}_t{}_{}.safetensors", split, t, pool_tag(pool));
}

fs::path cell_path(const fs::path& dir, int t, int block, const PoolSpec& pool) {
  return dir / "cells" / fmt::format("t{}_b{}_{}.json", t, block, pool_tag(pool));
}

std::string join_doubles(const std::vector<double>& v) {
  std::string s;
  for (double x : v) s += (s.empty() ? "" : ",") + fmt::format("{:g}", x);
  return s;
}

// What identifies a probe's result: a cell scored with other settings is scored again.
std::string describe_trained(const TrainConfig& c) {
  return fmt::format(
      "trained linear: {} lr {:g} momentum {:g} weight_decay {:g} {} epochs {} step {}x{:g} warmup {} batch "
      "{} "
      "standardize {} seed {}",
      optimizer_name(c.optimizer), c.lr, c.momentum, c.weight_decay, schedule_name(c.schedule), c.epochs,
      c.step_epochs, c.step_gamma, c.warmup_epochs, c.batch_size, c.standardize ? "yes" : "no", c.seed);
}

std::string describe_probe(const SweepOptions& o) {
  if (o.probe == SweepProbe::Trained) return describe_trained(o.trained);
  return fmt::format("ridge: alphas {} val_fraction {:g} seed {}", join_doubles(o.ridge.alphas),
                     o.ridge.val_fraction, o.ridge.seed);
}

void write_text_atomically(const fs::path& path, const std::string& text) {
  io::detail::AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

std::vector<int> labels_of(const FeatureFile& f, const char* split) {
  const auto l = f.labels();
  if (!l)
    throw ArgumentError(kWhere, fmt::format("the {} data has no labels ({}): a sweep scores classifiers",
                                            split, f.path().string()));
  return Labels(*l).values();
}

double nan() { return std::numeric_limits<double>::quiet_NaN(); }

json cell_json(const SweepCell& c, const std::string& probe, const std::string& refined_probe) {
  json j = {{"t", c.t},       {"block", c.block}, {"pool", c.pool}, {"features", c.features},
            {"probe", probe}, {"top1", c.top1},   {"top5", c.top5}, {"seconds", c.probe_seconds}};
  if (std::isfinite(c.alpha)) j["alpha"] = c.alpha;
  if (c.refined_top1)
    j["refined"] = {{"probe", refined_probe}, {"top1", *c.refined_top1}, {"top5", *c.refined_top5}};
  return j;
}

}  // namespace

const char* sweep_probe_name(SweepProbe p) noexcept { return p == SweepProbe::Ridge ? "ridge" : "trained"; }

SweepProbe parse_sweep_probe(const std::string& name) {
  if (name == "ridge") return SweepProbe::Ridge;
  if (name == "trained") return SweepProbe::Trained;
  throw ArgumentError("parse_sweep_probe", "unknown probe '" + name + "' (ridge or trained)");
}

TrainConfig SweepOptions::default_trained() {
  TrainConfig c = TrainConfig::paper_linear();
  c.optimizer = OptimizerKind::AdamW;
  c.lr = 1e-3;
  c.schedule = ScheduleKind::Cosine;
  c.epochs = 30;
  c.standardize = true;
  c.step_epochs = std::max(1, c.epochs / 4);  // as `diffprobe probe` sets it (unused by cosine)
  return c;
}

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size() || a.size() < 2)
    throw ArgumentError(
        "spearman", fmt::format("need two lists of equal length >= 2, got {} and {}", a.size(), b.size()));
  auto ranks = [](const std::vector<double>& v) {
    std::vector<std::size_t> idx(v.size());
    std::iota(idx.begin(), idx.end(), std::size_t{0});
    std::stable_sort(idx.begin(), idx.end(), [&](std::size_t i, std::size_t j) { return v[i] < v[j]; });
    std::vector<double> r(v.size());
    for (std::size_t i = 0; i < idx.size();) {
      std::size_t j = i;
      while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
      const double mean_rank = 0.5 * static_cast<double>(i + j) + 1.0;
      for (std::size_t k = i; k <= j; ++k) r[idx[k]] = mean_rank;
      i = j + 1;
    }
    return r;
  };
  const auto ra = ranks(a), rb = ranks(b);
  const double n = static_cast<double>(a.size());
  const double ma = std::accumulate(ra.begin(), ra.end(), 0.0) / n,
               mb = std::accumulate(rb.begin(), rb.end(), 0.0) / n;
  double sab = 0, saa = 0, sbb = 0;
  for (std::size_t i = 0; i < ra.size(); ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  if (saa == 0 || sbb == 0) return nan();  // a constant list has no ranking
  return sab / std::sqrt(saa * sbb);
}

SweepResult run_sweep(const UNet& model, data::Dataset& train, data::Dataset& test, const fs::path& dir,
                      const SweepOptions& options) {
  const double t_start = now_seconds();
  if (options.timesteps.empty()) throw ArgumentError(kWhere, "no timesteps given");
  if (options.pools.empty()) throw ArgumentError(kWhere, "no pooling given");
  if (options.refine < 0) throw ArgumentError(kWhere, "refine must be >= 0");
  if (options.limit_train < 0 || options.limit_test < 0) throw ArgumentError(kWhere, "limits must be >= 0");
  auto distinct = [](const auto& v, const char* what) {
    std::set<std::string> seen;
    for (const auto& x : v) {
      std::string key;
      if constexpr (std::is_same_v<std::decay_t<decltype(x)>, PoolSpec>)
        key = x.str();
      else
        key = std::to_string(x);
      if (!seen.insert(key).second)
        throw ArgumentError(kWhere, fmt::format("{} {} is given twice", what, key));
    }
  };
  distinct(options.timesteps, "timestep");
  distinct(options.blocks, "block");
  distinct(options.pools, "pooling");
  if (options.probe == SweepProbe::Ridge) {
    // Checked before any forward pass, not at the first cell.
    if (options.ridge.alphas.empty()) throw ArgumentError(kWhere, "no ridge strengths given");
  }
  if (options.probe == SweepProbe::Trained || options.refine > 0) options.trained.validate();
  std::vector<int> blocks = options.blocks;
  if (blocks.empty())
    for (int b = 1; b <= model.num_blocks(); ++b) blocks.push_back(b);

  auto cancelled = [&] { return options.cancel && options.cancel->load(); };
  auto report = [&](const char* phase, const std::string& what, std::int64_t done, std::int64_t total,
                    std::int64_t resumed) {
    if (!options.on_progress) return;
    SweepProgress p;
    p.phase = phase;
    p.what = what;
    p.done = done;
    p.total = total;
    p.resumed = resumed;
    p.seconds = now_seconds() - t_start;
    options.on_progress(p);
  };

  SweepResult result;
  const std::int64_t n_train =
      options.limit_train > 0 ? std::min(options.limit_train, train.size()) : train.size();
  const std::int64_t n_test =
      options.limit_test > 0 ? std::min(options.limit_test, test.size()) : test.size();
  result.train_samples = n_train;
  result.test_samples = n_test;

  // ---- Phase 1: features. One job per (pool, split, t); each serves every block. ----
  for (const char* sub : {"features", "cells"}) {
    std::error_code ec;
    fs::create_directories(dir / sub, ec);
    if (ec) throw IoError((dir / sub).string(), "cannot create the folder: " + ec.message());
  }
  const std::int64_t extract_total =
      static_cast<std::int64_t>(options.pools.size() * options.timesteps.size()) * (n_train + n_test);
  std::int64_t extract_done = 0, extract_resumed = 0;
  const double t_extract = now_seconds();
  {
    // Feature files finished by an earlier run, announced before the first job starts.
    std::int64_t finished = 0;
    for (const PoolSpec& pool : options.pools)
      for (int t : options.timesteps) {
        if (fs::exists(features_path(dir, "train", t, pool))) finished += n_train;
        if (fs::exists(features_path(dir, "test", t, pool))) finished += n_test;
      }
    report("extract", "", 0, extract_total, finished);
  }
  for (const PoolSpec& pool : options.pools) {
    for (int split = 0; split < 2; ++split) {
      data::Dataset& ds = split == 0 ? train : test;
      const char* name = split == 0 ? "train" : "test";
      for (int t : options.timesteps) {
        ExtractOptions eo;
        eo.timesteps = {t};
        eo.blocks = blocks;
        eo.noise = NoiseMode::Seeded;
        eo.noise_seed =
            split == 0 ? options.noise_seed : options.test_noise_seed.value_or(options.noise_seed + 1);
        if (pool.kind != PoolKind::None) eo.pool = pool;
        eo.batch_size = options.batch_size;
        eo.exec.device = options.device;
        eo.exec.threads = options.threads;
        eo.exec.precision = options.precision;
        const FeatureExtractor fx(model, eo);
        ExtractionJobOptions jo;
        jo.limit = split == 0 ? options.limit_train : options.limit_test;
        jo.weights = options.weights;
        jo.cancel = options.cancel;
        const std::string what = fmt::format("{} t={} {}", name, t, pool.str());
        const std::int64_t base = extract_done;
        jo.on_progress = [&](const ExtractionProgress& p) {
          report("extract", what, base + p.rows_done, extract_total, extract_resumed + p.rows_resumed);
        };
        const fs::path out = features_path(dir, name, t, pool);
        ExtractionResult r;
        try {
          r = run_extraction(fx, ds, out, jo);
        } catch (const ConfigError& e) {
          throw ConfigError(kWhere, fmt::format("{} holds features made with other settings ({}); sweep into "
                                                "another folder, or remove {} to recompute it",
                                                dir.string(), e.what(), out.string()));
        }
        extract_done += r.rows_total;
        extract_resumed += r.rows_total - r.rows_computed;
        report("extract", what, extract_done, extract_total, extract_resumed);
      }
    }
  }
  result.extract_seconds = now_seconds() - t_extract;

  // ---- Phase 2: one probe per cell, resumed from DIR/cells. ----
  const double t_probe = now_seconds();
  const std::string probe_desc = describe_probe(options);
  const std::string refine_desc = describe_trained(options.trained);
  struct Files {
    FeatureFile train, test;
  };
  std::vector<int> ytr, yte;
  {
    const Files f{FeatureFile::open(features_path(dir, "train", options.timesteps[0], options.pools[0])),
                  FeatureFile::open(features_path(dir, "test", options.timesteps[0], options.pools[0]))};
    ytr = labels_of(f.train, "training");
    yte = labels_of(f.test, "test");
  }
  int classes = 0;
  for (const auto* y : {&ytr, &yte})
    for (int v : *y) classes = std::max(classes, v + 1);
  if (classes < 2) throw ArgumentError(kWhere, "the labels name fewer than 2 classes");
  result.num_classes = classes;

  const std::int64_t cells_total =
      static_cast<std::int64_t>(options.pools.size() * options.timesteps.size() * blocks.size());
  std::int64_t cells_done = 0, cells_resumed = 0;
  auto read_cell = [&](const fs::path& p) -> std::optional<json> {
    std::ifstream in(p);
    if (!in) return std::nullopt;
    try {
      json j = json::parse(in);
      if (j.value("probe", "") == probe_desc && j.contains("top1") && j.contains("top5")) return j;
    } catch (const json::exception&) {
    }
    return std::nullopt;  // another probe's cell, or a damaged file: computed again
  };
  // Every cell an earlier run finished, read once (in the loop's order) and announced up front.
  std::vector<std::optional<json>> earlier;
  std::int64_t finished = 0;
  for (const PoolSpec& pool : options.pools)
    for (int t : options.timesteps)
      for (int b : blocks) {
        earlier.push_back(read_cell(cell_path(dir, t, b, pool)));
        finished += earlier.back().has_value();
      }
  report("probe", "", 0, cells_total, finished);
  for (const PoolSpec& pool : options.pools) {
    for (int t : options.timesteps) {
      std::optional<Files> files;  // opened only when a cell of this (pool, t) needs computing
      for (int b : blocks) {
        SweepCell cell;
        cell.t = t;
        cell.block = b;
        cell.pool = pool.str();
        cell.alpha = nan();
        const fs::path cp = cell_path(dir, t, b, pool);
        const auto& old = earlier[result.cells.size()];
        if (old) {
          cell.top1 = (*old)["top1"].get<double>();
          cell.top5 = (*old)["top5"].get<double>();
          cell.features = old->value("features", std::int64_t{0});
          cell.alpha = old->contains("alpha") ? (*old)["alpha"].get<double>() : nan();
          cell.probe_seconds = old->value("seconds", 0.0);
          if (old->contains("refined") && (*old)["refined"].value("probe", "") == refine_desc) {
            cell.refined_top1 = (*old)["refined"]["top1"].get<double>();
            cell.refined_top5 = (*old)["refined"]["top5"].get<double>();
          }
          cell.resumed = true;
          ++cells_resumed;
        } else {
          if (cancelled())
            throw CancelledError(
                kWhere, "cancelled; the cells finished so far are kept in " + (dir / "cells").string());
          if (!files)
            files.emplace(Files{FeatureFile::open(features_path(dir, "train", t, pool)),
                                FeatureFile::open(features_path(dir, "test", t, pool))});
          const Tensor& xtr = files->train.feature(t, b);
          const Tensor& xte = files->test.feature(t, b);
          cell.features = xtr.numel() / std::max<std::int64_t>(1, xtr.dim(0));
          const double c0 = now_seconds();
          Report rep;
          if (options.probe == SweepProbe::Ridge) {
            RidgeFit fit = fit_ridge_probe(xtr, ytr, classes, options.ridge);
            fit.head.set_threads(options.threads);
            rep = fit.head.evaluate(xte, yte);
            cell.alpha = fit.alpha;
          } else {
            Head head = Head::linear(xtr.shape(), classes);
            head.reset_parameters(options.trained.seed);
            TrainConfig tc = options.trained;
            tc.threads = options.threads;
            head.fit(xtr, ytr, tc);
            head.set_threads(options.threads);
            rep = head.evaluate(xte, yte);
          }
          cell.top1 = rep.top1;
          cell.top5 = rep.top5;
          cell.probe_seconds = now_seconds() - c0;
          write_text_atomically(cp, cell_json(cell, probe_desc, refine_desc).dump(1) + "\n");
        }
        result.cells.push_back(cell);
        ++cells_done;
        report("probe", fmt::format("t{}.b{} {}", t, b, pool.str()), cells_done, cells_total, cells_resumed);
      }
    }
  }

  // ---- Refinement: the best cells by the probe, scored again by the trained probe. ----
  if (options.refine > 0) {
    std::vector<std::size_t> order(result.cells.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return result.cells[a].top1 > result.cells[b].top1;
    });
    order.resize(std::min<std::size_t>(order.size(), static_cast<std::size_t>(options.refine)));
    std::int64_t done = 0, already = 0;
    for (std::size_t i : order) already += result.cells[i].refined_top1.has_value();
    report("refine", "", 0, static_cast<std::int64_t>(order.size()), already);
    for (std::size_t i : order) {
      SweepCell& cell = result.cells[i];
      if (!cell.refined_top1) {
        if (cancelled())
          throw CancelledError(
              kWhere, "cancelled; the cells finished so far are kept in " + (dir / "cells").string());
        const PoolSpec pool = PoolSpec::parse(cell.pool);
        const FeatureFile ftr = FeatureFile::open(features_path(dir, "train", cell.t, pool));
        const FeatureFile fte = FeatureFile::open(features_path(dir, "test", cell.t, pool));
        const Tensor& xtr = ftr.feature(cell.t, cell.block);
        Head head = Head::linear(xtr.shape(), classes);
        head.reset_parameters(options.trained.seed);
        TrainConfig tc = options.trained;
        tc.threads = options.threads;
        head.fit(xtr, ytr, tc);
        head.set_threads(options.threads);
        const Report rep = head.evaluate(fte.feature(cell.t, cell.block), yte);
        cell.refined_top1 = rep.top1;
        cell.refined_top5 = rep.top5;
        write_text_atomically(cell_path(dir, cell.t, cell.block, pool),
                              cell_json(cell, probe_desc, refine_desc).dump(1) + "\n");
      }
      report("refine", fmt::format("t{}.b{} {}", cell.t, cell.block, cell.pool), ++done,
             static_cast<std::int64_t>(order.size()), already);
    }
  }
  result.probe_seconds = now_seconds() - t_probe;

  // ---- The best cell, the table, the heatmaps. ----
  const SweepCell* best = nullptr;
  for (const SweepCell& c : result.cells) {
    const double v = options.refine > 0 ? c.refined_top1.value_or(-1.0) : c.top1;
    const double bv = best ? (options.refine > 0 ? best->refined_top1.value_or(-1.0) : best->top1) : -2.0;
    if (v > bv) best = &c;
  }
  result.best = *best;

  result.csv = dir / "sweep.csv";
  {
    std::string csv = "t,block,pool,features,top1,top5,alpha,refined_top1,refined_top5,probe_seconds\n";
    for (const SweepCell& c : result.cells)
      csv += fmt::format("{},{},{},{},{:.6f},{:.6f},{},{},{},{:.3f}\n", c.t, c.block, c.pool, c.features,
                         c.top1, c.top5, std::isfinite(c.alpha) ? fmt::format("{:g}", c.alpha) : "",
                         c.refined_top1 ? fmt::format("{:.6f}", *c.refined_top1) : "",
                         c.refined_top5 ? fmt::format("{:.6f}", *c.refined_top5) : "", c.probe_seconds);
    write_text_atomically(result.csv, csv);
  }
  result.seconds = now_seconds() - t_start;
  result.json = dir / "sweep.json";
  {
    json cells = json::array();
    for (const SweepCell& c : result.cells) cells.push_back(cell_json(c, probe_desc, refine_desc));
    json pools = json::array();
    for (const PoolSpec& p : options.pools) pools.push_back(p.str());
    const json j = {
        {"format", "diffprobe.sweep"},
        {"probe", probe_desc},
        {"refine", options.refine},
        {"refine_probe", refine_desc},
        {"timesteps", options.timesteps},
        {"blocks", blocks},
        {"pools", pools},
        {"train_samples", n_train},
        {"test_samples", n_test},
        {"classes", classes},
        {"noise_seed", options.noise_seed},
        {"test_noise_seed", options.test_noise_seed.value_or(options.noise_seed + 1)},
        {"best", cell_json(result.best, probe_desc, refine_desc)},
        {"cells", cells},
        {"seconds",
         {{"total", result.seconds}, {"extract", result.extract_seconds}, {"probe", result.probe_seconds}}}};
    write_text_atomically(result.json, j.dump(1) + "\n");
  }
  for (const PoolSpec& pool : options.pools) {
    detail::Heatmap map;
    map.title = fmt::format("top-1 % ({} probe, pool {}){}", sweep_probe_name(options.probe), pool.str(),
                            options.refine > 0 ? "; framed: best by the trained probe" : "");
    map.row_axis = "t";
    map.column_axis = "block";
    for (int t : options.timesteps) map.row_labels.push_back(std::to_string(t));
    for (int b : blocks) map.column_labels.push_back(std::to_string(b));
    map.values.assign(options.timesteps.size(), std::vector<double>(blocks.size(), nan()));
    for (const SweepCell& c : result.cells) {
      if (c.pool != pool.str()) continue;
      const auto r =
          std::find(options.timesteps.begin(), options.timesteps.end(), c.t) - options.timesteps.begin();
      const auto k = std::find(blocks.begin(), blocks.end(), c.block) - blocks.begin();
      map.values[static_cast<std::size_t>(r)][static_cast<std::size_t>(k)] = c.top1;
      if (&c == best) {
        map.best_row = static_cast<int>(r);
        map.best_column = static_cast<int>(k);
      }
    }
    const fs::path png = dir / fmt::format("heatmap_{}.png", pool_tag(pool));
    detail::write_heatmap_png(png, map);
    result.heatmaps.push_back(png);
  }
  return result;
}

}  // namespace diffprobe

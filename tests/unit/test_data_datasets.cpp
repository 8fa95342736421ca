// Datasets: ImageFolder (listing, labels, batches, threads, errors), IdxDataset on the real
// Fashion-MNIST files (labels, the pad rule, the resize rule, limit, errors on hand-made IDX
// files) and NpyDataset.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "diffprobe/core/error.hpp"
#include "diffprobe/data/idx_dataset.hpp"
#include "diffprobe/data/image_folder.hpp"
#include "diffprobe/data/npy_dataset.hpp"
#include "diffprobe/io/idx.hpp"
#include "diffprobe/io/npy.hpp"

using namespace diffprobe;
using namespace diffprobe::data;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  const fs::path d =
      fs::temp_directory_path() / ("diffprobe_test_data_ds_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A constant image: its eval-transformed value is exactly value / 127.5 - 1 everywhere, so
// every sample identifies its file.
void constant_png(const fs::path& p, int w, int h, int value) {
  Image img = Image::blank(w, h, 3);
  for (auto& s : img.samples) s = static_cast<std::uint16_t>(value);
  fs::create_directories(p.parent_path());
  write_png(p, img);
}

float id_value(int v) { return static_cast<float>(v) / 127.5f - 1.0f; }

const fs::path kFashion = "/usr/share/datasets/fashion-mnist";

void write_bytes(const fs::path& p, const std::vector<std::uint8_t>& b) {
  std::ofstream(p, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// Plain (not gzipped) IDX: magic 0 0 type rank, big-endian dims, data.
std::vector<std::uint8_t> idx_file(std::uint8_t type, const std::vector<std::uint32_t>& dims,
                                   const std::vector<std::uint8_t>& data) {
  std::vector<std::uint8_t> b = {0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (const auto d : dims)
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(d >> s));
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

}  // namespace

TEST(DataImageFolder, ListsClassesAndFilesLikeTorchvision) {
  const fs::path root = temp_dir("folder");
  // Classes sorted by name; inside a class, folders in sorted path order ("b/" < "b/sub/" < "b_x/"
  // because '/' < '_'), names sorted within each folder; extensions case-insensitive.
  constant_png(root / "dog" / "b.png", 8, 8, 10);
  constant_png(root / "dog" / "A.PNG", 9, 8, 20);
  constant_png(root / "cat" / "z.png", 8, 12, 30);
  constant_png(root / "cat" / "sub" / "a.png", 8, 8, 40);
  constant_png(root / "cat" / "sub_x" / "a.png", 8, 8, 50);
  constant_png(root / "cat" / "a.png", 8, 8, 60);
  std::ofstream(root / "cat" / "readme.txt") << "ignored";
  std::ofstream(root / "stray.png") << "not in a class folder: ignored";
  // JPEG too.
  Image j = Image::blank(10, 10, 3);
  for (auto& s : j.samples) s = 200;
  write_jpeg(root / "dog" / "c.jpg", j, 100);

  ImageFolder ds(root, InputSpec{3, 4});
  EXPECT_EQ(ds.num_classes(), 2);
  EXPECT_EQ(ds.class_names(), (std::vector<std::string>{"cat", "dog"}));
  ASSERT_EQ(ds.size(), 7);
  const std::vector<std::string> expect_files = {"cat/a.png", "cat/z.png", "cat/sub/a.png", "cat/sub_x/a.png",
                                                 "dog/A.PNG", "dog/b.png", "dog/c.jpg"};
  const std::vector<int> expect_values = {60, 30, 40, 50, 20, 10, 200};
  for (std::int64_t i = 0; i < 7; ++i)
    EXPECT_EQ(fs::relative(ds.file(i), root).generic_string(), expect_files[static_cast<std::size_t>(i)])
        << i;
  const Tensor labels = *ds.labels();
  ASSERT_EQ(labels.dtype(), DType::I64);
  ASSERT_EQ(labels.shape(), (Shape{7}));
  const std::vector<std::int64_t> expect_labels = {0, 0, 0, 0, 1, 1, 1};
  for (std::int64_t i = 0; i < 7; ++i)
    EXPECT_EQ(labels.data<std::int64_t>()[i], expect_labels[static_cast<std::size_t>(i)]);
  EXPECT_EQ(ds.label(4), 1);

  const Tensor x = ds.images(0, 7);
  ASSERT_EQ(x.shape(), (Shape{7, 3, 4, 4}));
  EXPECT_EQ(x.layout(), Layout::Contiguous);
  const float* p = x.data<float>();
  for (std::int64_t i = 0; i < 7; ++i) {
    const int v = expect_values[static_cast<std::size_t>(i)];
    for (int k = 0; k < 48; ++k) {
      if (i == 6) {
        ASSERT_NEAR(p[i * 48 + k], id_value(v), 2.0 / 127.5) << "jpeg";  // lossy
      } else {
        ASSERT_EQ(p[i * 48 + k], id_value(v)) << i;
      }
    }
  }
  // images_at: any order, repeats; images(b, e) == the same slice.
  const std::vector<std::int64_t> idx = {5, 1, 1};
  const Tensor y = ds.images_at(idx);
  ASSERT_EQ(y.shape(), (Shape{3, 3, 4, 4}));
  EXPECT_EQ(y.data<float>()[0], id_value(10));
  EXPECT_EQ(y.data<float>()[48], id_value(30));
  EXPECT_EQ(y.data<float>()[96], id_value(30));
  const Tensor mid = ds.images(2, 4);
  EXPECT_EQ(mid.data<float>()[0], id_value(40));
  EXPECT_EQ(ds.images(3, 3).shape(), (Shape{0, 3, 4, 4}));
  EXPECT_THROW(ds.images(5, 8), ArgumentError);
  EXPECT_THROW(ds.images(-1, 2), ArgumentError);
  EXPECT_THROW(ds.images(3, 2), ArgumentError);
  EXPECT_THROW(ds.images_at(std::vector<std::int64_t>{7}), ArgumentError);
  EXPECT_THROW(ds.file(7), ArgumentError);
  EXPECT_NE(ds.describe().find("7 images"), std::string::npos);

  // The model's input shape works as the spec, and grey models get one channel.
  ImageFolder grey(root, Shape{1, 1, 4, 4});
  EXPECT_EQ(grey.spec(), (InputSpec{1, 4}));
  EXPECT_EQ(grey.images(0, 1).shape(), (Shape{1, 1, 4, 4}));
  fs::remove_all(root);
}

TEST(DataImageFolder, ThreadsAndBatchingDoNotChangeResults) {
  const fs::path root = temp_dir("threads");
  std::mt19937 rng(3);
  for (int i = 0; i < 12; ++i) {
    Image img = Image::blank(20 + i * 3, 17 + i, 3);
    for (auto& s : img.samples) s = static_cast<std::uint16_t>(rng() % 256);
    fs::create_directories(root / std::to_string(i % 3));
    write_png(root / std::to_string(i % 3) / ("img" + std::to_string(i) + ".png"), img);
  }
  for (const Transform& t : {Transform::eval(), Transform::torchvision_train(11), Transform::adm_train(12)}) {
    ImageFolder ds(root, InputSpec{3, 16}, t);
    ds.set_epoch(4);
    ds.set_threads(1);
    const Tensor serial = ds.images(0, 12);
    ds.set_threads(4);
    const Tensor parallel = ds.images(0, 12);
    EXPECT_EQ(serial.to_vector(), parallel.to_vector());
    // Sample i is the same whichever batch it comes in.
    const Tensor one = ds.images(7, 8);
    const auto all = serial.to_vector(), single = one.to_vector();
    for (std::size_t k = 0; k < single.size(); ++k) ASSERT_EQ(single[k], all[7 * single.size() + k]);
    if (t.random()) {
      ds.set_epoch(5);
      EXPECT_NE(ds.images(0, 12).to_vector(), serial.to_vector());
    }
  }
  fs::remove_all(root);
}

TEST(DataImageFolder, Errors) {
  const fs::path root = temp_dir("errors");
  EXPECT_THROW(ImageFolder(root / "missing", InputSpec{3, 8}), IoError);
  std::ofstream(root / "file.txt") << "x";
  EXPECT_THROW(ImageFolder(root / "file.txt", InputSpec{3, 8}), IoError);
  // No class folder.
  EXPECT_THROW(ImageFolder(root, InputSpec{3, 8}), ArgumentError);
  // A class without images: named in the message.
  constant_png(root / "full" / "a.png", 8, 8, 1);
  fs::create_directories(root / "hollow");
  std::ofstream(root / "hollow" / "notes.md") << "x";
  try {
    ImageFolder ds(root, InputSpec{3, 8});
    FAIL() << "no error";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("hollow"), std::string::npos) << e.what();
  }
  fs::remove_all(root / "hollow");
  // Unsupported image formats are refused, not silently skipped.
  std::ofstream(root / "full" / "b.gif") << "GIF89a";
  EXPECT_THROW(ImageFolder(root, InputSpec{3, 8}), UnsupportedError);
  fs::remove(root / "full" / "b.gif");
  // A model with 2 input channels cannot take images.
  EXPECT_THROW(ImageFolder(root, InputSpec{2, 8}), UnsupportedError);
  EXPECT_THROW(ImageFolder(root, InputSpec{3, 0}), ArgumentError);
  // A corrupt file fails when read, naming the file.
  std::ofstream(root / "full" / "broken.png") << "\x89PNG\r\n\x1a\n garbage";
  ImageFolder ds(root, InputSpec{3, 8});
  ASSERT_EQ(ds.size(), 2);
  EXPECT_NO_THROW(ds.images(0, 1));
  try {
    ds.images(0, 2);
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("broken.png"), std::string::npos) << e.what();
  }
  // A file that vanished after listing.
  fs::remove(root / "full" / "broken.png");
  EXPECT_THROW(ds.images(1, 2), IoError);
  fs::remove_all(root);
}

TEST(DataIdx, FashionMnistFirstTenImagesAndLabels) {
  const fs::path images = kFashion / "t10k-images-idx3-ubyte.gz",
                 labels = kFashion / "t10k-labels-idx1-ubyte.gz";
  ASSERT_TRUE(fs::exists(images)) << "Fashion-MNIST is missing: run scripts/setup.sh (dataset-fashion-mnist)";
  IdxDataset ds(images, labels, InputSpec{1, 32}, {.limit = 10});
  ASSERT_EQ(ds.size(), 10);
  EXPECT_EQ(ds.num_classes(), 10);  // from the whole labels file, not just the first ten
  EXPECT_EQ(ds.image_height(), 28);
  EXPECT_TRUE(ds.pads());
  const Tensor l = *ds.labels();
  const std::vector<std::int64_t> expect = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(l.data<std::int64_t>()[i], expect[static_cast<std::size_t>(i)]);

  // The pad rule, exactly: 2 px of -1 around v / 127.5 - 1. The raw pixels come from the IDX
  // reader; their per-image sums were computed independently with Python's gzip + numpy.
  const Tensor raw = io::load_idx(images, 10);
  const Tensor x = ds.images(0, 10);
  ASSERT_EQ(x.shape(), (Shape{10, 1, 32, 32}));
  const std::int64_t sums[10] = {33456, 100994, 51520, 35377, 62655, 50259, 28111, 47766, 10246, 25492};
  const float* p = x.data<float>();
  for (int n = 0; n < 10; ++n) {
    std::int64_t sum = 0;
    for (int y = 0; y < 32; ++y)
      for (int xx = 0; xx < 32; ++xx) {
        const float v = p[(n * 32 + y) * 32 + xx];
        if (y < 2 || y >= 30 || xx < 2 || xx >= 30) {
          ASSERT_EQ(v, -1.0f);
        } else {
          const int r = raw.data<std::int32_t>()[(n * 28 + y - 2) * 28 + xx - 2];
          ASSERT_EQ(v, static_cast<float>(r) / 127.5f - 1.0f);
          sum += r;
        }
      }
    EXPECT_EQ(sum, sums[n]) << "image " << n;
  }

  // Three channels: grey replicated. S = 28: no padding; S = 64: 18 px.
  IdxDataset rgb(images, labels, InputSpec{3, 32}, {.limit = 2});
  const Tensor xr = rgb.images(0, 2);
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 3; ++c)
      for (int k = 0; k < 1024; ++k) ASSERT_EQ(xr.data<float>()[(n * 3 + c) * 1024 + k], p[n * 1024 + k]);
  IdxDataset s28(images, std::nullopt, InputSpec{1, 28}, {.limit = 1});
  EXPECT_FALSE(s28.labels().has_value());
  EXPECT_EQ(s28.num_classes(), 0);
  EXPECT_EQ(s28.images(0, 1).data<float>()[14 * 28 + 14], p[16 * 32 + 16]);
  IdxDataset s64(images, labels, InputSpec{1, 64}, {.limit = 1});
  EXPECT_EQ(s64.images(0, 1).data<float>()[17 * 64 + 17], -1.0f);
  EXPECT_EQ(s64.images(0, 1).data<float>()[(18 + 14) * 64 + 18 + 7], p[(2 + 14) * 32 + 2 + 7]);
  EXPECT_NE(ds.describe().find("pad 2"), std::string::npos);
}

TEST(DataIdx, AugmentationAppliesToThePaddedImage) {
  // With a random transform the padded S x S image (background 0 -> -1) goes through it: the
  // eval transform of a padded image is the identity, so adm_train without its randomness
  // (crop fractions 1 and no flip) gives back the padded image exactly.
  const fs::path images = kFashion / "t10k-images-idx3-ubyte.gz";
  ASSERT_TRUE(fs::exists(images));
  IdxDataset plain(images, std::nullopt, InputSpec{1, 32}, {.limit = 4});
  Transform fixed = Transform::adm_train(3);
  fixed.hflip = false;
  fixed.min_crop_frac = 1.0;  // side = 32 exactly, crop at (0, 0)
  IdxDataset same(images, std::nullopt, InputSpec{1, 32}, {.limit = 4, .transform = fixed});
  EXPECT_EQ(same.images(0, 4).to_vector(), plain.images(0, 4).to_vector());
  // The paper's augmentation: in range, deterministic per (seed, copy, sample), copies differ.
  IdxDataset aug(images, std::nullopt, InputSpec{3, 32}, {.limit = 4, .transform = Transform::adm_train(3)});
  aug.set_epoch(1);
  const auto a = aug.images(0, 4).to_vector();
  EXPECT_EQ(a, aug.images(0, 4).to_vector());
  for (const float v : a) ASSERT_TRUE(v >= -1.0f && v <= 1.0f);
  aug.set_epoch(2);
  EXPECT_NE(a, aug.images(0, 4).to_vector());
  EXPECT_NE(aug.describe().find("random_crop_arr"), std::string::npos) << aug.describe();
  EXPECT_THROW(IdxDataset(images, std::nullopt, InputSpec{1, 32},
                          {.limit = 1,
                           .transform =
                               [] {
                                 Transform t = Transform::adm_train(0);
                                 t.crop = CropMode::RandomResized;
                                 return t;
                               }()}),
               ArgumentError);
}

TEST(DataIdx, ResizeRuleEqualsImageFolderOfTheSameImage) {
  const fs::path images = kFashion / "t10k-images-idx3-ubyte.gz";
  ASSERT_TRUE(fs::exists(images));
  const fs::path root = temp_dir("idx_resize");
  const Tensor raw = io::load_idx(images, 3);
  for (int n = 0; n < 3; ++n) {
    Image img = Image::blank(28, 28, 1);
    for (int k = 0; k < 784; ++k)
      img.samples[static_cast<std::size_t>(k)] =
          static_cast<std::uint16_t>(raw.data<std::int32_t>()[n * 784 + k]);
    fs::create_directories(root / "c");
    write_png(root / "c" / ("i" + std::to_string(n) + ".png"), img);
  }
  for (int S : {31, 16, 40 + 1}) {  // odd difference or smaller: resized, not padded
    IdxDataset ds(images, std::nullopt, InputSpec{3, S}, {.limit = 3});
    EXPECT_FALSE(ds.pads());
    ImageFolder folder(root, InputSpec{3, S});
    EXPECT_EQ(ds.images(0, 3).to_vector(), folder.images(0, 3).to_vector()) << "S = " << S;
  }
  fs::remove_all(root);
}

TEST(DataIdx, LimitAndErrors) {
  const fs::path d = temp_dir("idx");
  std::vector<std::uint8_t> px(5 * 4 * 4);
  for (std::size_t i = 0; i < px.size(); ++i) px[i] = static_cast<std::uint8_t>(i * 3);
  write_bytes(d / "img", idx_file(0x08, {5, 4, 4}, px));
  write_bytes(d / "lab", idx_file(0x08, {5}, {0, 1, 2, 1, 0}));
  write_bytes(d / "lab4", idx_file(0x08, {4}, {0, 1, 2, 1}));
  write_bytes(d / "lab2d", idx_file(0x08, {5, 1}, {0, 1, 2, 1, 0}));
  write_bytes(d / "labneg", idx_file(0x09, {5}, {0, 1, 0xff, 1, 0}));
  write_bytes(d / "float", idx_file(0x0D, {1, 1, 1}, {0, 0, 0, 0}));
  write_bytes(d / "junk", {1, 2, 3});

  IdxDataset ds(d / "img", d / "lab", InputSpec{1, 6}, {.limit = 100});
  EXPECT_EQ(ds.size(), 5);
  EXPECT_EQ(ds.num_classes(), 3);
  EXPECT_EQ(ds.class_names(), (std::vector<std::string>{"0", "1", "2"}));
  EXPECT_EQ(ds.images(1, 2).data<float>()[7],
            static_cast<float>(16 * 3 + 0) / 127.5f - 1.0f);  // (1, 1) of image 1
  IdxDataset named(d / "img", d / "lab", InputSpec{1, 4}, {.limit = 2, .class_names = {"a", "b", "c", "d"}});
  EXPECT_EQ(named.num_classes(), 4);
  EXPECT_EQ(named.class_names()[3], "d");
  EXPECT_EQ(IdxDataset::fashion_mnist_classes().size(), 10u);

  EXPECT_THROW(IdxDataset(d / "img", d / "lab4", InputSpec{1, 4}), FormatError);
  EXPECT_THROW(IdxDataset(d / "img", d / "lab4", InputSpec{1, 4}, {.limit = 2}),
               FormatError);  // full counts checked
  EXPECT_THROW(IdxDataset(d / "img", d / "lab2d", InputSpec{1, 4}), FormatError);
  EXPECT_THROW(IdxDataset(d / "img", d / "labneg", InputSpec{1, 4}), FormatError);
  EXPECT_THROW(IdxDataset(d / "img", d / "lab", InputSpec{1, 4}, {.class_names = {"a", "b"}}), FormatError);
  EXPECT_THROW(IdxDataset(d / "float", std::nullopt, InputSpec{1, 4}), FormatError);
  EXPECT_THROW(IdxDataset(d / "lab", std::nullopt, InputSpec{1, 4}), FormatError);  // rank 1 as images
  EXPECT_THROW(IdxDataset(d / "junk", std::nullopt, InputSpec{1, 4}), FormatError);
  EXPECT_THROW(IdxDataset(d / "missing", std::nullopt, InputSpec{1, 4}), IoError);
  EXPECT_THROW(IdxDataset(d / "img", d / "missing", InputSpec{1, 4}), IoError);
  EXPECT_THROW(IdxDataset(d / "img", std::nullopt, InputSpec{1, 4}, {.limit = -1}), ArgumentError);
  EXPECT_THROW(IdxDataset(d / "img", std::nullopt, InputSpec{0, 4}), ArgumentError);
  fs::remove_all(d);
}

TEST(DataNpy, ImagesAndLabelsAsStored) {
  const fs::path d = temp_dir("npy");
  std::vector<float> v(5 * 3 * 4 * 4);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) * 0.01f - 1.0f;
  io::save_npy(d / "x.npy", Tensor::from_vector({5, 3, 4, 4}, v));
  Tensor lab = Tensor::empty({5}, DType::I64);
  for (int i = 0; i < 5; ++i) lab.data<std::int64_t>()[i] = 4 - i;
  io::save_npy(d / "y.npy", lab);
  NpyDataset ds(d / "x.npy", d / "y.npy", InputSpec{3, 4});
  EXPECT_EQ(ds.size(), 5);
  EXPECT_EQ(ds.spec(), (InputSpec{3, 4}));
  EXPECT_EQ(ds.num_classes(), 5);
  const auto got = ds.images(1, 3).to_vector();
  ASSERT_EQ(got.size(), 96u);
  for (std::size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], v[48 + i]);
  EXPECT_EQ(ds.labels()->data<std::int64_t>()[0], 4);

  // f16 arrays are widened; i32 labels accepted.
  io::save_npy(d / "h.npy", Tensor::from_vector({5, 3, 4, 4}, v).to_dtype(DType::F16));
  io::save_npy(d / "y32.npy", lab.to_dtype(DType::I32));
  NpyDataset h(d / "h.npy", d / "y32.npy");
  EXPECT_NEAR(h.images(4, 5).to_vector()[47], v.back(), 1e-3);
  EXPECT_EQ(h.labels()->dtype(), DType::I64);

  io::save_npy(d / "rank3.npy", Tensor::from_vector({5, 12, 4}, v));
  io::save_npy(d / "rect.npy", Tensor::from_vector({5, 3, 2, 8}, v));
  io::save_npy(d / "int.npy", lab);
  Tensor lab4 = Tensor::zeros({4}, DType::I64);
  io::save_npy(d / "y4.npy", lab4);
  EXPECT_THROW(NpyDataset(d / "rank3.npy"), ShapeError);
  EXPECT_THROW(NpyDataset(d / "rect.npy"), ShapeError);
  EXPECT_THROW(NpyDataset(d / "int.npy"), DTypeError);
  EXPECT_THROW(NpyDataset(d / "x.npy", d / "y4.npy"), ShapeError);
  EXPECT_THROW(NpyDataset(d / "x.npy", d / "x.npy"), DTypeError);
  EXPECT_THROW(NpyDataset(d / "x.npy", std::nullopt, InputSpec{3, 8}), ShapeError);
  EXPECT_THROW(NpyDataset(d / "missing.npy"), IoError);
  fs::remove_all(d);
}

// Tensor core: shapes, layouts, dtypes, views, allocators, errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "diffprobe/diffprobe.hpp"

using namespace diffprobe;

TEST(Shape, BasicsAndErrors) {
  Shape s{2, 3, 5, 7};
  EXPECT_EQ(s.rank(), 4);
  EXPECT_EQ(s.numel(), 210);
  EXPECT_EQ(s.dim(-1), 7);
  EXPECT_EQ(s.str(), "[2, 3, 5, 7]");
  EXPECT_THROW(s.dim(4), ArgumentError);
  EXPECT_THROW((Shape{1, -2}), ShapeError);
  EXPECT_THROW((Shape{1, 1, 1, 1, 1, 1, 1, 1, 1}), ShapeError);
}

TEST(DType, HalfRoundTripIsExactForAllHalfValues) {
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const auto hh = static_cast<std::uint16_t>(h);
    const float f = half_to_float(hh);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(half_to_float(float_to_half(f))));
      continue;
    }
    EXPECT_EQ(float_to_half(f), hh) << "half bits " << h;
  }
}

TEST(DType, HalfRoundsToNearestEven) {
  // 1 + 2^-11 is exactly halfway between 1 and the next half (1 + 2^-10): ties to even -> 1.
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);               // overflow to inf
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -26)), 0x0000);  // rounds to zero
}

TEST(DType, BF16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie -> even
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(parse_dtype("bfloat16"), DType::BF16);
  EXPECT_THROW(parse_dtype("f8"), ArgumentError);
}

TEST(Tensor, LayoutConversionPreservesLogicalValues) {
  const Shape s{3, 5, 4, 7};
  std::vector<float> v(static_cast<std::size_t>(s.numel()));
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (auto& x : v) x = nd(rng);
  Tensor a = Tensor::from_vector(s, v);
  Tensor b = a.to_layout(Layout::NHWC);
  EXPECT_EQ(b.layout(), Layout::NHWC);
  for (std::int64_t i = 0; i < s.numel(); ++i) ASSERT_EQ(b.item_at(i), v[static_cast<std::size_t>(i)]);
  // physical order really is NHWC: element (n=1, c=2, h=3, w=4)
  const float* p = b.data<float>();
  EXPECT_EQ(p[((1 * 4 + 3) * 7 + 4) * 5 + 2], v[static_cast<std::size_t>(((1 * 5 + 2) * 4 + 3) * 7 + 4)]);
  EXPECT_EQ(b.to_vector(), v);
  EXPECT_EQ(b.to_layout(Layout::Contiguous).to_vector(), v);
}

TEST(Tensor, SliceBatchSharesMemory) {
  Tensor a = Tensor::zeros({4, 2, 3, 3}, DType::F32, Layout::NHWC);
  Tensor s = a.slice_batch(1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 2, 3, 3}));
  s.data<float>()[0] = 5.0f;
  EXPECT_EQ(a.data<float>()[18], 5.0f);
  EXPECT_THROW(a.slice_batch(3, 5), ArgumentError);
}

TEST(Tensor, TypedErrors) {
  Tensor a = Tensor::zeros({2, 3});
  EXPECT_THROW(a.data<std::int64_t>(), DTypeError);
  EXPECT_THROW(a.reshape({4, 2}), ShapeError);
  EXPECT_THROW(Tensor::empty({2, 3}, DType::F32, Layout::NHWC), ShapeError);
  EXPECT_THROW(Tensor().data<float>(), ArgumentError);
  const std::vector<float> three(3, 1.0f);
  EXPECT_THROW(Tensor::from_vector({2, 2}, three), ShapeError);
  EXPECT_THROW(parse_device("gpu"), ArgumentError);
  EXPECT_EQ(parse_device("cuda:1"), Device::cuda(1));
  if (!cuda_available()) {
    EXPECT_THROW(Tensor::empty({2}, DType::F32, Layout::Contiguous, Device::cuda(0)), DeviceError);
  }
  try {
    a.reshape({5});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Shape);
    EXPECT_EQ(e.where(), "Tensor::reshape");
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos);
  }
}

TEST(Tensor, DTypeConversion) {
  const std::vector<float> v = {1.0f, -2.5f, 65504.0f, 1e-3f};
  Tensor a = Tensor::from_vector({4}, v);
  Tensor h = a.to_dtype(DType::F16);
  Tensor b = a.to_dtype(DType::BF16);
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(h.item_at(i), v[static_cast<std::size_t>(i)],
                std::abs(v[static_cast<std::size_t>(i)]) * 1e-3);
    EXPECT_NEAR(b.item_at(i), v[static_cast<std::size_t>(i)],
                std::abs(v[static_cast<std::size_t>(i)]) * 8e-3);
  }
  Tensor i64 = a.to_dtype(DType::I64);
  EXPECT_EQ(i64.data<std::int64_t>()[1], -2);
}

TEST(CachingAllocator, ReusesFreedBlocks) {
  CachingAllocator alloc;
  {
    Tensor a = Tensor::empty({1, 64, 32, 32}, DType::F32, Layout::NHWC, Device::cpu(), &alloc);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.raw()) % kTensorAlignment, 0u);
    EXPECT_GE(alloc.bytes_in_use(), a.nbytes());
  }
  EXPECT_EQ(alloc.bytes_in_use(), 0u);
  const auto sys = alloc.system_allocations();
  for (int i = 0; i < 10; ++i) {
    Tensor b = Tensor::empty({1, 64, 32, 32}, DType::F32, Layout::NHWC, Device::cpu(), &alloc);
    Tensor c = Tensor::empty({1, 60, 32, 32}, DType::F32, Layout::NHWC, Device::cpu(), &alloc);
  }
  EXPECT_LE(alloc.system_allocations(), sys + 1);  // the second size needed one new block at most
  EXPECT_GE(alloc.peak_bytes_in_use(), std::size_t{64 * 32 * 32 * 4});
  alloc.release_cached();
  EXPECT_EQ(alloc.bytes_reserved(), 0u);
}

TEST(HeapAllocator, LargeBlocksAreHugePageAlignedMappings) {
  // cpu_allocator() maps blocks of 2 MiB and more itself, on 2 MiB boundaries (for transparent
  // huge pages); smaller ones come from the heap. Both are fully writable, and tensors of either
  // size keep their values.
  Allocator& heap = cpu_allocator();
  for (const std::size_t bytes :
       {std::size_t{2} << 20, (std::size_t{7} << 20) + 100, std::size_t{65} << 20}) {
    auto* p = static_cast<unsigned char*>(heap.allocate(bytes));
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % (std::uintptr_t{2} << 20), 0u) << bytes;
    std::fill(p, p + bytes, static_cast<unsigned char>(0xa5));
    EXPECT_EQ(std::count(p, p + bytes, static_cast<unsigned char>(0xa5)), static_cast<std::ptrdiff_t>(bytes));
    heap.deallocate(p, bytes);
  }
  auto* q = static_cast<unsigned char*>(heap.allocate(1000));
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(q) % kTensorAlignment, 0u);
  heap.deallocate(q, 1000);
  std::vector<float> v(std::size_t{3} << 20);  // 12 MiB
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 1000);
  const Tensor t = Tensor::from_vector(Shape{static_cast<std::int64_t>(v.size())}, v);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.raw()) % (std::uintptr_t{2} << 20), 0u);
  EXPECT_EQ(t.data<float>()[v.size() - 1], static_cast<float>((v.size() - 1) % 1000));
}

TEST(Threads, ScopeSetsAndRestores) {
  EXPECT_GE(hardware_threads(), 1);
  EXPECT_THROW(set_default_threads(0), ArgumentError);
  {
    ThreadScope scope(1);
    EXPECT_EQ(scope.threads(), 1);
  }
}

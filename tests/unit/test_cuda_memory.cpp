// The CUDA side of the tensor core: host <-> device copies (direct and through the pinned staging
// buffers), device clones, zeros and batch slices, the caching pool, and the errors when there is no
// device or a bad one. Written against the public API only, so it builds without CUDA too; the GPU
// tests skip without a device, the no-device tests skip with one.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "diffprobe/diffprobe.hpp"

using namespace diffprobe;

namespace {

std::vector<float> random_values(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-100.0f, 100.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace

TEST(CudaDevice, CountAgreesWithAvailability) {
  const int n = cuda_device_count();
  EXPECT_GE(n, 0);
  EXPECT_EQ(cuda_available(), n > 0);
}

TEST(CudaNoDevice, MovingToCudaThrowsDeviceError) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  const Tensor t = Tensor::from_vector(Shape{2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});
  EXPECT_THROW((void)t.to_device(Device::cuda()), DeviceError);
  EXPECT_THROW((void)Tensor::empty(Shape{4}, DType::F32, Layout::Contiguous, Device::cuda()), DeviceError);
  EXPECT_THROW((void)default_allocator(Device::cuda()), DeviceError);
  // An op asked to run on the GPU with CPU operands is refused before any backend is involved.
  ExecContext ctx;
  ctx.device = Device::cuda();
  EXPECT_THROW((void)ops::silu(t, ctx), DeviceError);
}

TEST(CudaMemory, RoundTripIsBitwiseForManySizes) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  // Below, at and above the staging threshold (1 MiB) and over several 4 MiB staging chunks.
  for (std::size_t n :
       {std::size_t{1}, std::size_t{3}, std::size_t{1000}, std::size_t{262143}, std::size_t{262144},
        std::size_t{262147}, std::size_t{1048576}, std::size_t{2621443}}) {
    const std::vector<float> v = random_values(n, static_cast<std::uint32_t>(n));
    const Tensor h = Tensor::from_vector(Shape{static_cast<std::int64_t>(n)}, v);
    const Tensor d = h.to_device(Device::cuda());
    EXPECT_TRUE(d.device() == Device::cuda());
    EXPECT_EQ(d.shape(), h.shape());
    const Tensor back = d.to_device(Device::cpu());
    ASSERT_TRUE(back.device().is_cpu());
    EXPECT_EQ(std::memcmp(back.raw(), h.raw(), h.nbytes()), 0) << n << " floats";
  }
}

TEST(CudaMemory, RoundTripKeepsDTypeAndLayout) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<float> v = random_values(2 * 5 * 3 * 7, 7);
  const Tensor nhwc = Tensor::from_vector(Shape{2, 5, 3, 7}, v, Layout::NHWC);
  const Tensor back = nhwc.to_device(Device::cuda()).to_device(Device::cpu());
  EXPECT_EQ(back.layout(), Layout::NHWC);
  EXPECT_EQ(back.to_vector(), v);

  const Tensor h16 = Tensor::from_vector(Shape{33}, random_values(33, 8)).to_dtype(DType::BF16);
  const Tensor b16 = h16.to_device(Device::cuda()).to_device(Device::cpu());
  EXPECT_EQ(b16.dtype(), DType::BF16);
  EXPECT_EQ(std::memcmp(b16.raw(), h16.raw(), h16.nbytes()), 0);
}

TEST(CudaMemory, CloneZerosAndSlicesOnTheDevice) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::vector<float> v = random_values(6 * 4 * 5 * 3, 9);
  const Tensor d = Tensor::from_vector(Shape{6, 4, 5, 3}, v, Layout::NHWC).to_device(Device::cuda());
  const Tensor c = d.clone();
  EXPECT_NE(c.raw(), d.raw());
  EXPECT_EQ(c.to_device(Device::cpu()).to_vector(), v);
  const Tensor same_device = d.to_device(Device::cuda());  // a copy, as for CPU -> CPU
  EXPECT_NE(same_device.raw(), d.raw());
  EXPECT_EQ(same_device.to_device(Device::cpu()).to_vector(), v);

  const Tensor slice = d.slice_batch(2, 5).to_device(Device::cpu());
  const std::vector<float> want(v.begin() + 2 * 60, v.begin() + 5 * 60);
  EXPECT_EQ(slice.to_vector(), want);

  const Tensor z = Tensor::zeros(Shape{1000, 3}, DType::F32, Layout::Contiguous, Device::cuda());
  for (float x : z.to_device(Device::cpu()).to_vector()) ASSERT_EQ(x, 0.0f);
}

TEST(CudaMemory, PoolReusesFreedBlocks) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  Allocator& a = default_allocator(Device::cuda());
  EXPECT_TRUE(a.device() == Device::cuda());
  // A size no other test of this program uses, so the cache holds no other block of its bucket.
  void* p = a.allocate(5000000);
  ASSERT_NE(p, nullptr);
  a.deallocate(p, 5000000);
  void* q = a.allocate(4900000);  // same bucket: the cached block comes back
  EXPECT_EQ(p, q);
  void* r = a.allocate(5000000);  // the block is taken: a different one
  EXPECT_NE(q, r);
  a.deallocate(q, 4900000);
  a.deallocate(r, 5000000);
}

TEST(CudaMemory, UnknownDeviceIndexThrows) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const Tensor t = Tensor::from_vector(Shape{2}, std::vector<float>{1, 2});
  EXPECT_THROW((void)t.to_device(Device::cuda(cuda_device_count())), DeviceError);
  EXPECT_THROW((void)default_allocator(Device::cuda(-1)), DeviceError);
}

TEST(CudaMemory, OpsRefuseMixedDevices) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const Tensor h = Tensor::from_vector(Shape{1, 2, 2, 2}, random_values(8, 1), Layout::NHWC);
  const Tensor d = h.to_device(Device::cuda());
  ExecContext gpu;
  gpu.device = Device::cuda();
  EXPECT_THROW((void)ops::add(d, h, gpu), DeviceError);
  EXPECT_THROW((void)ops::silu(d), DeviceError);  // default context is the CPU
  const ops::Conv2d conv(Tensor::from_vector(Shape{2, 2, 1, 1}, random_values(4, 2)), Tensor{}, {1, 0});
  EXPECT_THROW((void)conv.forward(d, gpu), DeviceError);  // weights still on the CPU
  EXPECT_THROW(conv.prepare(gpu), DeviceError);
}

#include "cpu/onednn_common.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>

#include "core/page_mapping.hpp"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21  // Linux >= 5.4; older kernels answer EINVAL, which is ignored
#endif

namespace diffprobe::cpu::onednn {

dnnl::engine& engine() {
  // Never destroyed: packed weights and primitives in ops that outlive main's statics (a model
  // held in a global) still refer to it when they are released.
  static dnnl::engine* const eng = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *eng;
}

dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

bool bf16_native() noexcept {
  // cpu_isa values are bit sets: an ISA includes another when it has all of its bits.
  const auto want = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  const auto have = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  return (have & want) == want;
}

void check_precision(Precision p, const char* where) {
  if (p == Precision::FP16)
    throw UnsupportedError(where, "fp16 is not supported on the CPU; use fp32, bf16 or int8");
  if (p == Precision::BF16 && !bf16_native())
    throw UnsupportedError(where,
                           "bf16 needs a CPU with AVX512-BF16 (oneDNN would only emulate it here); use fp32");
  // int8 runs the other matmuls and the activations in bf16; every CPU with AVX512-BF16 has VNNI.
  if (p == Precision::INT8 && !bf16_native())
    throw UnsupportedError(where, "int8 needs a CPU with AVX512-VNNI and AVX512-BF16; use fp32");
}

void rethrow(const dnnl::error& e, const char* where, const std::string& what) {
  const std::string why = what + ": oneDNN: " + e.what();
  if (e.status == dnnl_unimplemented) throw UnsupportedError(where, why);
  if (e.status == dnnl_invalid_arguments) throw ArgumentError(where, why);
  throw UnsupportedError(where, why + " (status " + std::to_string(static_cast<int>(e.status)) + ")");
}

dnnl::primitive_attr user_scratchpad_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

WithScratch<dnnl::reorder> make_reorder(const dnnl::memory::desc& from, const dnnl::memory::desc& to,
                                        const std::vector<float>& scales) {
  dnnl::primitive_attr attr = user_scratchpad_attr();
  if (!scales.empty()) attr.set_output_scales(1, scales);
  dnnl::reorder::primitive_desc pd(engine(), from, engine(), to, attr);
  return {dnnl::reorder(pd), pd.scratchpad_desc()};
}

Scratch::Scratch(std::size_t bytes, Allocator* alloc) {
  if (bytes == 0) return;
  block_ = Tensor::empty(Shape{static_cast<std::int64_t>((bytes + 3) / 4)}, DType::F32, Layout::Contiguous,
                         Device::cpu(), alloc);
}

void execute(const WithScratch<dnnl::reorder>& r, const dnnl::memory& from, const dnnl::memory& to,
             const Scratch& scratch) {
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
  scratch.bind(args, r.scratchpad);
  r.prim.execute(stream(), args);
}

void Scratch::bind(std::unordered_map<int, dnnl::memory>& args, const dnnl::memory::desc& md) const {
  if (md.get_size() == 0) return;
  args.insert_or_assign(DNNL_ARG_SCRATCHPAD, dnnl::memory(md, engine(), data()));
}

// Once packed, the user's weights are read again only if another layout is asked for. Let the
// kernel reclaim their pages: for a memory-mapped checkpoint these are clean file pages, dropped
// and re-read on demand, so a loaded model does not hold its weights twice. MADV_PAGEOUT never
// changes contents (anonymous pages without swap simply stay); only whole pages inside the
// tensor are advised, and errors are ignored: this is a hint.
void release_pages(const void* data, std::size_t bytes) {
  static const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto b = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t first = (b + page - 1) / page * page, last = (b + bytes) / page * page;
  if (last > first) (void)::madvise(reinterpret_cast<void*>(first), last - first, MADV_PAGEOUT);
}

namespace {
// Packed weights of 4 MiB and more get their own mapping, advised for transparent huge pages.
// A batch-1 forward streams every weight once (1.7 GB to block 24 of the 256x256 model), which
// with 4 KiB pages is one TLB miss per 4 KiB read. The kernel backs every 2 MiB-aligned
// stretch of the mapping with a huge page and the ends with small ones, so nothing is rounded up.
constexpr std::size_t kHugeWeightBytes = std::size_t{4} << 20;

std::shared_ptr<void> map_weight_storage(std::size_t bytes) {
  void* p = diffprobe::detail::map_anonymous(bytes);
  diffprobe::detail::advise_huge_pages(p, bytes);
  return std::shared_ptr<void>(p, [bytes](void* q) { ::munmap(q, bytes); });
}
}  // namespace

PackedWeights::Variant& PackedWeights::find_or_pack(const dnnl::memory::desc& want,
                                                    const dnnl::memory& user) {
  for (auto& v : variants_)
    if (v.packed.get_desc() == want) return v;
  std::shared_ptr<void> storage;
  dnnl::memory packed;
  if (want.get_size() >= kHugeWeightBytes) {
    storage = map_weight_storage(want.get_size());
    packed = dnnl::memory(want, engine(), storage.get());
  } else {
    packed = dnnl::memory(want, engine());
  }
  const auto r = make_reorder(user.get_desc(), want, scales_);
  execute(r, user, packed, Scratch(r.scratchpad.get_size(), nullptr));
  stream().wait();
  release_pages(user.get_data_handle(), user.get_desc().get_size());
  return variants_.emplace_back(Variant{packed, std::move(storage), false});
}

dnnl::memory PackedWeights::get(const dnnl::memory::desc& want, const dnnl::memory& user) {
  std::lock_guard lock(mu_);
  Variant& v = find_or_pack(want, user);
  v.used = true;
  dnnl::memory out = v.packed;
  // A guess made at prepare time that the real shapes did not take would only hold memory.
  std::erase_if(variants_, [](const Variant& x) { return !x.used; });
  return out;
}

void PackedWeights::prepack(const dnnl::memory::desc& want, const dnnl::memory& user) {
  std::lock_guard lock(mu_);
  find_or_pack(want, user);
}

bool PackedWeights::has(const dnnl::memory::desc& want) const {
  std::lock_guard lock(mu_);
  return std::any_of(variants_.begin(), variants_.end(),
                     [&](const Variant& v) { return v.packed.get_desc() == want; });
}

dnnl::memory PackedWeights::any() const {
  std::lock_guard lock(mu_);
  return variants_.empty() ? dnnl::memory() : variants_.front().packed;
}

std::vector<dnnl::memory::desc> PackedWeights::layouts() const {
  std::lock_guard lock(mu_);
  std::vector<dnnl::memory::desc> out;
  out.reserve(variants_.size());
  for (const auto& v : variants_) out.push_back(v.packed.get_desc());
  return out;
}

std::size_t PackedWeights::count() const {
  std::lock_guard lock(mu_);
  return variants_.size();
}

}  // namespace diffprobe::cpu::onednn

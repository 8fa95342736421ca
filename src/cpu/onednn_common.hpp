#pragma once
// oneDNN plumbing shared by the CPU convolution and linear ops: the engine and streams, the
// precision checks, error translation, scratch memory from the context's allocator, and the
// store of weights packed into the layouts the primitives asked for.
#include <cstddef>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "diffprobe/core/context.hpp"
#include "diffprobe/core/tensor.hpp"

namespace diffprobe::cpu::onednn {

/// The one CPU engine of the process.
dnnl::engine& engine();
/// A stream per calling thread, so that ops may run concurrently from several threads.
dnnl::stream& stream();

/// True when oneDNN runs bf16 natively here (AVX512-BF16 or better), not emulated.
bool bf16_native() noexcept;

/// Throws UnsupportedError for precisions the CPU backend cannot serve (fp16; bf16 without
/// native support).
void check_precision(Precision p, const char* where);

/// Whether the matmuls that are not int8 convolutions take bf16 operands (BF16, and INT8's others).
inline bool bf16_operands(Precision p) { return p == Precision::BF16 || p == Precision::INT8; }

/// The oneDNN data type convolutions and matmuls read their operands in (an int8 convolution's
/// own s8 types are chosen where it is built).
inline dnnl::memory::data_type compute_type(Precision p) {
  return bf16_operands(p) ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}

/// The oneDNN data type of an activation dtype (f32 or bf16).
inline dnnl::memory::data_type data_type(DType d) {
  return d == DType::BF16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}

/// Translates a oneDNN failure into our error hierarchy (unimplemented -> UnsupportedError).
[[noreturn]] void rethrow(const dnnl::error& e, const char* where, const std::string& what);

/// Attributes every primitive of ours is created with: scratch memory supplied by the caller,
/// so primitives can run concurrently and their scratch comes from the context's allocator.
dnnl::primitive_attr user_scratchpad_attr();

/// A primitive with the scratchpad it needs (executed with memory from a Scratch).
template <class P> struct WithScratch {
  P prim;
  dnnl::memory::desc scratchpad;
};

/// Reorder primitive between two descriptors, with a user scratchpad (and per-channel output
/// scales along dim 0 when `scales` is not empty).
WithScratch<dnnl::reorder> make_reorder(const dnnl::memory::desc& from, const dnnl::memory::desc& to,
                                        const std::vector<float>& scales = {});

/// Scratch memory for one call, taken from (and returned to) the context's allocator.
class Scratch {
 public:
  Scratch(std::size_t bytes, Allocator* alloc);
  void* data() const noexcept { return block_.defined() ? block_.raw() : nullptr; }
  /// Adds the scratchpad argument for a primitive whose scratchpad descriptor is `md`
  /// (nothing when it needs none). The block must be at least md's size.
  void bind(std::unordered_map<int, dnnl::memory>& args, const dnnl::memory::desc& md) const;

 private:
  Tensor block_;
};

/// Runs `r` from -> to on this thread's stream, its scratchpad from `scratch` (which must be at
/// least as large); does not wait.
void execute(const WithScratch<dnnl::reorder>& r, const dnnl::memory& from, const dnnl::memory& to,
             const Scratch& scratch);

/// One op's weights packed for the primitives that use them. Primitives of different input
/// shapes usually want the same layout; each distinct layout is packed once and kept.
class PackedWeights {
 public:
  PackedWeights() = default;
  /// Weights quantised on packing: each output channel o (dim 0) multiplied by scales[o] (int8:
  /// 1 / that channel's weight scale), as the reorder to a s8 layout rounds and saturates.
  explicit PackedWeights(std::vector<float> scales) : scales_(std::move(scales)) {}

  /// For a primitive: the weights in layout `want`, packed from `user` (the plain f32 weights)
  /// the first time. Packing a new layout drops the layouts packed ahead that no primitive took.
  dnnl::memory get(const dnnl::memory::desc& want, const dnnl::memory& user);
  /// Whether layout `want` is packed already.
  bool has(const dnnl::memory::desc& want) const;
  /// One of the packed layouts (the first), or an empty memory when none is.
  dnnl::memory any() const;
  /// Packs ahead of use (at model load), in the layout a typical input shape wants.
  void prepack(const dnnl::memory::desc& want, const dnnl::memory& user);
  /// The layouts packed so far.
  std::vector<dnnl::memory::desc> layouts() const;
  std::size_t count() const;

 private:
  struct Variant {
    dnnl::memory packed;
    std::shared_ptr<void> storage;  // packed's buffer when we mapped it (large weights)
    bool used;                      // taken by a primitive (else only packed ahead)
  };
  Variant& find_or_pack(const dnnl::memory::desc& want, const dnnl::memory& user);  // mu_ held

  mutable std::mutex mu_;
  std::vector<Variant> variants_;
  std::vector<float> scales_;
};

/// Hands the whole pages inside [data, data + bytes) back to the kernel (MADV_PAGEOUT; a hint:
/// contents never change). Used on a layer's original weights once they are packed.
void release_pages(const void* data, std::size_t bytes);

/// Creates a primitive descriptor through make(weights_desc). First lets oneDNN choose the
/// weights layout (format any); when `packed` already holds another layout that the same
/// implementation accepts, that one is used instead, so the weights are not stored twice.
template <class PD, class Make>
PD create_preferring_packed(const PackedWeights& packed, const dnnl::memory::desc& any_weights, Make&& make) {
  PD chosen = make(any_weights);
  const std::vector<dnnl::memory::desc> have = packed.layouts();
  for (const auto& md : have)
    if (md == chosen.weights_desc()) return chosen;
  const std::string impl = chosen.impl_info_str();
  for (const auto& md : have) {
    try {
      PD alt = make(md);
      if (impl == alt.impl_info_str()) return alt;
    } catch (const dnnl::error&) {
      // This implementation cannot take that layout: keep oneDNN's own choice.
    }
  }
  return chosen;
}

}  // namespace diffprobe::cpu::onednn

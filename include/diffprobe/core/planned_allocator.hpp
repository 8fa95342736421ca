#pragma once
// A memory plan for repeated forward passes. The first pass at a given shape is recorded (every
// request's size, and when it is freed); from that record each activation gets a fixed offset in
// one arena such that activations alive at the same time never overlap (greedy by size, as in
// TFLite's arena planner). Later passes making the same requests take their memory from the
// arena: no malloc, no page faults, and a footprint close to the largest set of simultaneously
// live activations rather than the sum of the size classes a caching allocator keeps.
//
// Safe whatever the caller does: memory that outlived its pass in the record (the returned
// features) never comes from the arena; a pass whose requests differ from the plan (another batch
// size, other blocks) gets plain memory from that point and becomes the next plan; and an arena
// slot is handed out only if no slot overlapping it is still in use, so an unexpected order of
// requests costs speed, never correctness.
//
// Memory of 256 KiB and more that is freed outside the pass that asked for it (the features a
// caller held and then dropped) keeps its mapping, up to 256 MiB in all (oldest dropped first),
// for the next request of the same length: a stream of passes then maps nothing. That memory is
// held until reused or until the allocator is destroyed; stats().bytes_in_use does not count it.
#include <cstddef>
#include <memory>

#include "diffprobe/core/allocator.hpp"

namespace diffprobe {

class PlannedAllocator final : public Allocator {
 public:
  PlannedAllocator();
  ~PlannedAllocator() override;
  PlannedAllocator(const PlannedAllocator&) = delete;
  PlannedAllocator& operator=(const PlannedAllocator&) = delete;

  void* allocate(std::size_t bytes) override;
  void deallocate(void* p, std::size_t bytes) noexcept override;
  Device device() const noexcept override { return Device::cpu(); }
  void begin_pass() override;
  void end_pass(bool completed) noexcept override;

  struct Stats {
    std::size_t arena_bytes = 0;        // size of the current arena (0 before the first plan)
    std::size_t plan_bytes = 0;         // what the current plan needs (the arena: rounded to 2 MiB)
    std::size_t planned_live_peak = 0;  // the recorded pass's largest set of live requests
    std::size_t peak_bytes_in_use = 0;  // every live request (arena and plain), high-water mark
    std::size_t bytes_in_use = 0;
    std::size_t plans = 0;              // how often a pass was (re)planned
    std::size_t arena_allocations = 0;  // requests served from the arena
    std::size_t plain_allocations = 0;  // requests served by the system (first pass, misses)
  };
  Stats stats() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffprobe

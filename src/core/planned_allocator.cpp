#include "diffprobe/core/planned_allocator.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <list>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "core/page_mapping.hpp"

namespace diffprobe {
namespace {

constexpr std::size_t kAlign = kTensorAlignment;
// Plain requests this large are mapped directly, so that freeing them returns the pages to the
// system whatever malloc's settings (the first, recording pass must not leave a heap behind it).
constexpr std::size_t kMapThreshold = std::size_t{256} << 10;
constexpr std::size_t kPage = 4096;
// Mappings of requests that outlived their pass (a forward's returned features, plain by design)
// are kept once freed, at most this much in all, and serve the next plain request of the same
// length: otherwise every pass mapped its outputs afresh and the kernel zero-filled them page by
// page (1,024 faults per pass for the bundled model's block 9 at batch 256).
constexpr std::size_t kSpareBytes = std::size_t{256} << 20;
// Planning is quadratic in the number of requests of a pass; a U-Net forward makes a few hundred.
constexpr std::size_t kMaxRequests = 4096;

std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

// Plain requests of a huge page and more are mapped on a 2 MiB boundary and advised for huge
// pages. The recording pass writes every activation into fresh memory; with small pages that is
// one fault per 4 KiB (256x256 model: the recording pass took 4.6 s against 1.9 s replayed).
constexpr std::size_t kHuge = detail::kHugePageBytes;

// The arena: aligned to 2 MiB and marked for transparent huge pages (fewer TLB misses over
// hundreds of MiB of activations), and faulted in now, while planning, instead of inside the
// first replayed pass's ops. Measured on the 256x256 model: without both, the first blocks of a
// replayed pass ran 5-15 % slower than from the caching allocator's reused blocks.
char* map_arena(std::size_t bytes) {
  auto* p = static_cast<char*>(detail::map_anonymous_huge(bytes));
  bool populated = false;
#ifdef MADV_POPULATE_WRITE
  populated = madvise(p, bytes, MADV_POPULATE_WRITE) == 0;  // Linux >= 5.14
#endif
  if (!populated)
    for (std::size_t i = 0; i < bytes; i += kPage) p[i] = 0;
  return p;
}

// Freed plain mappings kept for reuse by a later request of exactly the same length, oldest
// first; whatever leaves the pool other than by take() is unmapped.
struct MappingPool {
  std::vector<std::pair<void*, std::size_t>> items;  // (address, length)
  std::size_t bytes = 0;

  void* take(std::size_t length) {
    for (auto it = items.begin(); it != items.end(); ++it)
      if (it->second == length) {
        void* p = it->first;
        bytes -= length;
        items.erase(it);
        return p;
      }
    return nullptr;
  }
  void put(void* p, std::size_t length) {
    items.emplace_back(p, length);
    bytes += length;
  }
  void unmap_oldest() {
    munmap(items.front().first, items.front().second);
    bytes -= items.front().second;
    items.erase(items.begin());
  }
  void unmap_all() {
    while (!items.empty()) unmap_oldest();
  }
};

struct Arena {
  char* base = nullptr;
  std::size_t bytes = 0;
  std::size_t live = 0;  // requests currently placed in it
};

// One recorded request of a pass: its size and its lifetime in pass-local ticks.
struct Request {
  std::size_t bytes;
  std::int64_t born, freed = -1;  // freed < 0: still alive when the pass ended (escapes)
};

struct Plan {
  std::vector<std::size_t> bytes;       // request i's size (what must match to replay)
  std::vector<std::int64_t> offset;     // < 0: served plainly (it outlived the recorded pass)
  std::vector<std::vector<int>> clash;  // slots whose bytes overlap slot i's (disjoint lifetimes)
  std::size_t arena_bytes = 0, live_peak = 0;
};

// Greedy by size: largest requests first, each at the lowest offset not overlapping any already
// placed request whose lifetime intersects its own.
Plan make_plan(const std::vector<Request>& rec) {
  Plan plan;
  const std::size_t n = rec.size();
  plan.bytes.resize(n);
  plan.offset.assign(n, -1);
  plan.clash.resize(n);
  std::vector<int> order;
  for (std::size_t i = 0; i < n; ++i) {
    plan.bytes[i] = rec[i].bytes;
    if (rec[i].freed >= 0) order.push_back(static_cast<int>(i));
  }
  auto size_of = [&](int i) { return round_up(std::max<std::size_t>(rec[i].bytes, 1), kAlign); };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return size_of(a) > size_of(b); });
  auto overlap_in_time = [&](int a, int b) {
    return rec[a].born < rec[b].freed && rec[b].born < rec[a].freed;
  };
  std::vector<int> placed, neighbours;
  for (const int i : order) {
    neighbours.clear();
    for (const int j : placed)
      if (overlap_in_time(i, j)) neighbours.push_back(j);
    std::sort(neighbours.begin(), neighbours.end(),
              [&](int a, int b) { return plan.offset[a] < plan.offset[b]; });
    std::size_t at = 0;
    for (const int j : neighbours) {
      const auto off = static_cast<std::size_t>(plan.offset[j]);
      if (at + size_of(i) <= off) break;
      at = std::max(at, off + size_of(j));
    }
    plan.offset[i] = static_cast<std::int64_t>(at);
    plan.arena_bytes = std::max(plan.arena_bytes, at + size_of(i));
    placed.push_back(i);
  }
  for (const int i : placed)
    for (const int j : placed) {
      if (i == j) continue;
      const auto a = static_cast<std::size_t>(plan.offset[i]), b = static_cast<std::size_t>(plan.offset[j]);
      if (a < b + size_of(j) && b < a + size_of(i)) plan.clash[i].push_back(j);
    }
  // The recorded pass's live peak, for comparison with the arena's size.
  std::vector<std::pair<std::int64_t, std::int64_t>> deltas;
  for (const int i : placed) {
    deltas.emplace_back(rec[i].born, static_cast<std::int64_t>(size_of(i)));
    deltas.emplace_back(rec[i].freed, -static_cast<std::int64_t>(size_of(i)));
  }
  std::sort(deltas.begin(), deltas.end());
  std::int64_t live = 0;
  for (const auto& [tick, d] : deltas) {
    live += d;
    plan.live_peak = std::max(plan.live_peak, static_cast<std::size_t>(std::max<std::int64_t>(live, 0)));
  }
  return plan;
}

}  // namespace

struct PlannedAllocator::Impl {
  enum class Kind : std::uint8_t { Heap, Mapped, InArena };
  struct Live {
    Kind kind;
    std::size_t bytes;       // what was reserved (mapped length, or the request)
    std::uint64_t pass;      // pass serial it was requested in (0: outside any pass)
    int request;             // index in that pass's record (-1 outside a pass)
    Arena* arena = nullptr;  // InArena only
  };

  mutable std::mutex mu;
  std::unordered_map<void*, Live> live;
  std::list<Arena> arenas;  // the current one and retired ones still holding live requests
  Arena* cur = nullptr;     // the arena the plan places requests in
  Plan plan;
  bool have_plan = false;
  int depth = 0;
  std::uint64_t pass = 0;  // serial of the current (or last) pass
  std::vector<Request> rec;
  std::vector<char> slot_live;  // per plan slot, during a replay
  bool following = false;       // the pass has matched the plan so far
  std::int64_t tick = 0;
  Stats stats;
  MappingPool spare;  // mappings of requests that outlived their pass (see kSpareBytes)
  // Mappings freed during the current pass, kept for its later requests of the same length and
  // unmapped when it ends. The recording pass otherwise maps every activation afresh, and the
  // kernel zero-fills each one (on this VM the bulk of the first forward's extra time). Kept
  // only while in use + pooled stays within the pass's own high-water mark of bytes in use, so
  // the process's footprint never exceeds what it was without the pool.
  MappingPool pass_pool;
  std::size_t pass_high = 0;

  void release_if_unused(Arena* a) {
    if (!a || a == cur || a->live > 0) return;
    munmap(a->base, a->bytes);
    arenas.remove_if([&](const Arena& x) { return &x == a; });
  }
  // The current arena stops serving; it is unmapped as soon as nothing placed in it is alive.
  void retire_current() {
    Arena* a = cur;
    cur = nullptr;
    release_if_unused(a);
  }
  void new_arena(std::size_t bytes) {
    bytes = round_up(bytes, kHuge);
    arenas.push_back(Arena{map_arena(bytes), bytes, 0});
    cur = &arenas.back();
  }

  void* plain(std::size_t bytes, Kind& kind, std::size_t& reserved) {
    ++stats.plain_allocations;
    if (bytes >= kMapThreshold) {
      kind = Kind::Mapped;
      reserved = round_up(bytes, kPage);
      if (void* p = pass_pool.take(reserved)) return p;
      if (void* p = spare.take(reserved)) return p;
      // A new mapping: pooled ones go first where they would lift the footprint above both the
      // pass's high-water mark and what is in use with the new one.
      const std::size_t need = stats.bytes_in_use + reserved;
      while (!pass_pool.items.empty() && need + pass_pool.bytes > std::max(pass_high, need))
        pass_pool.unmap_oldest();
      return bytes >= kHuge ? detail::map_anonymous_huge(reserved) : detail::map_anonymous(reserved);
    }
    kind = Kind::Heap;
    reserved = round_up(std::max<std::size_t>(bytes, 1), kAlign);  // what the heap allocator rounds to
    return cpu_allocator().allocate(bytes);
  }

  void count_in(std::size_t bytes) {
    stats.bytes_in_use += bytes;
    stats.peak_bytes_in_use = std::max(stats.peak_bytes_in_use, stats.bytes_in_use);
    pass_high = std::max(pass_high, stats.bytes_in_use);
  }
};

PlannedAllocator::PlannedAllocator() : impl_(std::make_unique<Impl>()) {}

PlannedAllocator::~PlannedAllocator() {
  // Tensors must not outlive their allocator; whatever is still here is released with it.
  for (auto& [p, l] : impl_->live) {
    if (l.kind == Impl::Kind::Heap) cpu_allocator().deallocate(p, l.bytes);
    if (l.kind == Impl::Kind::Mapped) munmap(p, l.bytes);
  }
  for (auto& a : impl_->arenas) munmap(a.base, a.bytes);
  impl_->spare.unmap_all();
  impl_->pass_pool.unmap_all();
}

void* PlannedAllocator::allocate(std::size_t bytes) {
  auto& m = *impl_;
  std::lock_guard lock(m.mu);
  Impl::Live l{Impl::Kind::Heap, bytes, 0, -1};
  if (m.depth > 0) {
    const int i = static_cast<int>(m.rec.size());
    m.rec.push_back({bytes, m.tick++});
    l.pass = m.pass;
    l.request = i;
    const bool matches =
        m.have_plan && static_cast<std::size_t>(i) < m.plan.bytes.size() && m.plan.bytes[i] == bytes;
    if (!matches) m.following = false;
    Arena* arena = m.cur;
    if (m.following && arena && m.plan.offset[i] >= 0) {
      const bool free_slot = std::none_of(m.plan.clash[i].begin(), m.plan.clash[i].end(),
                                          [&](int j) { return m.slot_live[j] != 0; });
      if (free_slot) {
        void* p = arena->base + m.plan.offset[i];
        m.slot_live[i] = 1;
        ++arena->live;
        ++m.stats.arena_allocations;
        l.kind = Impl::Kind::InArena;
        l.arena = arena;
        m.live.emplace(p, l);
        m.count_in(bytes);
        return p;
      }
    }
  }
  void* p = m.plain(bytes, l.kind, l.bytes);
  m.live.emplace(p, l);
  m.count_in(l.bytes);
  return p;
}

void PlannedAllocator::deallocate(void* p, std::size_t /*bytes*/) noexcept {
  if (!p) return;
  auto& m = *impl_;
  std::lock_guard lock(m.mu);
  const auto it = m.live.find(p);
  if (it == m.live.end()) return;  // not ours; ignore rather than corrupt anything
  const Impl::Live l = it->second;
  m.live.erase(it);
  const bool this_pass = m.depth > 0 && l.pass == m.pass && l.request >= 0;
  if (this_pass) m.rec[static_cast<std::size_t>(l.request)].freed = m.tick++;
  switch (l.kind) {
    case Impl::Kind::Heap:
      cpu_allocator().deallocate(p, l.bytes);
      m.stats.bytes_in_use -= l.bytes;
      break;
    case Impl::Kind::Mapped:
      // Kept for this pass's later requests within its high-water mark (see pass_pool), or, if
      // it outlived its pass (returned features), as a spare; a pass's pooled mappings are
      // unmapped when it ends, so that planning leaves nothing behind but the arena.
      if (this_pass && m.stats.bytes_in_use + m.pass_pool.bytes <= m.pass_high) {
        m.pass_pool.put(p, l.bytes);
      } else if (!this_pass && l.bytes <= kSpareBytes) {
        while (m.spare.bytes + l.bytes > kSpareBytes) m.spare.unmap_oldest();  // oldest make room
        m.spare.put(p, l.bytes);
      } else {
        munmap(p, l.bytes);
      }
      m.stats.bytes_in_use -= l.bytes;
      break;
    case Impl::Kind::InArena: {
      m.stats.bytes_in_use -= l.bytes;
      if (this_pass && l.arena == m.cur) m.slot_live[static_cast<std::size_t>(l.request)] = 0;
      --l.arena->live;
      m.release_if_unused(l.arena);
      break;
    }
  }
}

void PlannedAllocator::begin_pass() {
  auto& m = *impl_;
  std::lock_guard lock(m.mu);
  if (m.depth++ > 0) return;  // a nested or concurrent pass joins the outer one
  ++m.pass;
  m.pass_high = m.stats.bytes_in_use;
  m.rec.clear();
  m.tick = 0;
  m.following = m.have_plan;
  m.slot_live.assign(m.plan.bytes.size(), 0);
}

void PlannedAllocator::end_pass(bool completed) noexcept {
  auto& m = *impl_;
  std::lock_guard lock(m.mu);
  if (m.depth == 0 || --m.depth > 0) return;
  m.pass_pool.unmap_all();  // before a new arena is mapped: the two never add up
  // Something placed in the arena outlived the pass: the plan was wrong about it, so the arena
  // cannot be reused until that memory is given back.
  const bool stray = m.cur && m.cur->live > 0;
  if (stray) m.retire_current();
  if (!completed) return;  // an aborted pass says nothing reliable about the next one
  const bool matched = m.have_plan && m.following && m.rec.size() == m.plan.bytes.size();
  try {
    if (!matched || stray) {
      if (m.rec.size() > kMaxRequests) {  // not a repeatable forward pass: stay plain
        m.have_plan = false;
        return;
      }
      m.plan = make_plan(m.rec);
      m.have_plan = true;
      ++m.stats.plans;
      m.stats.planned_live_peak = m.plan.live_peak;
      m.stats.plan_bytes = m.plan.arena_bytes;
    }
    // (Re)create the arena when the plan outgrew it or it was retired (e.g. after an aborted
    // pass left memory in it), even if the plan itself still holds.
    if (m.cur && m.cur->bytes < m.plan.arena_bytes) m.retire_current();
    if (!m.cur && m.plan.arena_bytes > 0) m.new_arena(m.plan.arena_bytes);
    m.stats.arena_bytes = m.cur ? m.cur->bytes : 0;
  } catch (...) {
    // Out of memory while planning: keep serving plain memory.
    m.have_plan = false;
  }
}

PlannedAllocator::Stats PlannedAllocator::stats() const noexcept {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

}  // namespace diffprobe

#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "driftgate/clock.hpp"
#include "driftgate/rolling_window.hpp"
#include "driftgate/thread_shards.hpp"

namespace driftgate {

/// Rolling windows of (events, total) per policy slot and across all policies, read against a
/// clock under the bucket rule of rolling_window.hpp, with time that never runs backwards.
/// Thread-safe and lock-free to write: each writing thread owns a shard of rings and is its only
/// writer, so counts are exact under any number of threads; reads sum the shards. The global
/// counts of a window are kept as last summed and summed again only after an add or when a
/// bucket expires, so a reader that polls them (the readiness gate) costs O(shards), not
/// O(shards x buckets).
class PolicyWindows {
  public:
    PolicyWindows(std::vector<WindowSpec> windows, std::shared_ptr<const Clock> clock,
                  std::size_t slot_count);
    ~PolicyWindows();

    PolicyWindows(const PolicyWindows&) = delete;
    PolicyWindows& operator=(const PolicyWindows&) = delete;

    /// Counts `total` requests of which `events` were events, for `slot` and globally, at the
    /// clock's current time.
    void add(std::uint32_t slot, std::uint64_t events, std::uint64_t total);
    /// The same at `now`, a reading of clock() the caller took: a caller that writes several
    /// windows of one clock for one request reads the clock once. Time still never runs
    /// backwards: an older reading counts at the highest time seen.
    void add(std::uint32_t slot, std::uint64_t events, std::uint64_t total, double now);

    /// One writing thread's rings (see ShardPool).
    struct Shard;
    /// This thread's shard. A caller that adds on every request may keep it, to skip the
    /// lookup, in state of its own that only this thread uses and that forgets it when another
    /// thread takes that state over: the shard is this thread's until the thread ends.
    Shard& local_shard();
    /// add() to this thread's shard, as local_shard() gave it.
    void add(Shard& shard, std::uint32_t slot, std::uint64_t events, std::uint64_t total,
             double now);

    /// Across all policies; the sum of the last read while no add completed since.
    WindowCounts counts(std::size_t window) const;
    /// For one slot.
    WindowCounts counts(std::size_t window, std::uint32_t slot) const;

    /// Seconds until the newest event any policy has in `window` leaves it, read now;
    /// nullopt when the window holds no event.
    std::optional<double> newest_event_leaves_in(std::size_t window) const;

    /// Everything ever added for one slot: never reset, for monotonic counters.
    WindowCounts lifetime(std::uint32_t slot) const;
    /// Everything ever added, for every slot.
    WindowCounts lifetime() const;
    /// lifetime(slot) of every slot, indexed by slot, in one pass over the shards.
    std::vector<WindowCounts> lifetimes() const;

    /// A read that finds nothing to count still reads the clock: it moves every window's time
    /// to the clock's reading (the high-water mark), and returns `window`'s bucket.
    std::int64_t observe_now(std::size_t window) const;

    /// The index of a window by name; std::invalid_argument naming the known ones otherwise.
    std::size_t window_index(std::string_view name) const;
    const std::vector<WindowSpec>& windows() const { return windows_; }
    const std::shared_ptr<const Clock>& clock() const { return clock_; }

    /// Empties every window. Records racing with the reset land before or after it.
    void reset();

  private:
    struct CachedCounts;

    /// Points a shard's cursors at the buckets of clock reading `now`, as of `moves`.
    void move_cursors(Shard& shard, double now, std::uint32_t generation,
                      std::uint64_t moves) const;
    [[noreturn]] static void throw_bad_slot(std::uint32_t slot);
    /// The read or write bucket of `window` at clock reading `now`: max(k(now), highest k seen).
    std::int64_t advance_to(std::size_t window, double now) const;
    std::int64_t advance_to_bucket(std::size_t window, std::int64_t bucket) const;
    template <typename Visit>
    WindowCounts sum_shards(std::size_t window, Visit&& block_of) const;

    std::vector<WindowSpec> windows_;
    /// Where each window's ring starts in a policy's block of slots, and the block's size.
    std::vector<std::uint32_t> ring_offsets_;
    std::uint32_t block_slots_ = 0;
    std::uint32_t lifetime_slot_ = 0;
    std::shared_ptr<const Clock> clock_;
    std::size_t slot_count_;
    std::unique_ptr<std::atomic<std::int64_t>[]> highest_bucket_;
    // How many times any window's highest bucket moved: a writer checks this one word instead of
    // every window's highest bucket.
    mutable std::atomic<std::uint64_t> moves_{0};
    std::atomic<std::uint32_t> generation_{0};
    ShardPool<Shard> shards_;
    mutable std::vector<CachedCounts> global_counts_;  // per window; guarded by the pool's mutex
};

}  // namespace driftgate

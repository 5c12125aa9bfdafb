#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "driftgate/clock.hpp"
#include "driftgate/rolling_window.hpp"

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
    struct Shard;
    struct ShardPool;

    Shard& local_shard();
    /// Points a shard's cursors at the buckets of clock reading `now`.
    void move_cursors(Shard& shard, double now, std::uint32_t generation) const;
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
    std::uint64_t owner_id_;
    std::unique_ptr<std::atomic<std::int64_t>[]> highest_bucket_;
    std::atomic<std::uint32_t> generation_{0};
    std::shared_ptr<ShardPool> pool_;
};

}  // namespace driftgate

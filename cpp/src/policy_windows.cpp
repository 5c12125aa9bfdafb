#include "driftgate/policy_windows.hpp"

#include <algorithm>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>

#include "driftgate/ring_blocks.hpp"
#include "format.hpp"

namespace driftgate {

namespace {

// Below every bucket a clock can produce (bucket_index clamps), so a fresh cursor never matches.
constexpr std::int64_t kNoBucket = std::numeric_limits<std::int64_t>::min();

/// Per window and writer: the bucket of the last clock reading, and where the last
/// (generation, bucket) written lands, so a write in the same bucket divides nothing.
struct WindowCursor {
    explicit WindowCursor(double step_seconds) : clock(step_seconds) {}

    /// Points the cursor at `bucket` of `generation` in a ring of `buckets` at `ring_offset`.
    void move(std::int64_t to_bucket, std::uint32_t to_generation, std::uint32_t buckets,
              std::uint32_t ring_offset) {
        if (to_bucket == bucket && to_generation == generation) return;
        const auto at = RollingWindow::position(buckets, to_generation, to_bucket);
        bucket = to_bucket;
        generation = to_generation;
        block_slot = ring_offset + at.slot;
        tag = at.tag;
    }

    BucketCursor clock;
    std::int64_t bucket = kNoBucket;
    std::uint32_t generation = 0;
    std::uint32_t block_slot = 0;  // ring offset + slot within the ring
    std::uint64_t tag = 0;
};

}  // namespace

/// One thread's rings: for the global count and for each policy slot it has written, one block
/// holding every window's ring back to back. Only the owning thread writes them; the ShardPool
/// hands a shard to one thread at a time, and back when that thread ends.
struct PolicyWindows::Shard {
    Shard(const std::vector<WindowSpec>& windows, std::uint32_t block_slots, std::size_t slots)
        : global(std::make_unique<BucketSlot[]>(block_slots)),
          per_slot(std::make_unique<std::atomic<BucketSlot*>[]>(slots)),
          blocks(block_slots) {
        cursors.reserve(windows.size());
        for (const auto& w : windows) cursors.emplace_back(w.step_seconds);
    }

    BucketSlot* block_for(std::uint32_t slot) {
        BucketSlot* block = per_slot[slot].load(std::memory_order_relaxed);
        return block != nullptr ? block : new_block(slot);
    }

    // Allocated on a slot's first record in this shard, so memory follows use. Out of line, so
    // the add that finds its block holds no call.
    [[gnu::noinline]] BucketSlot* new_block(std::uint32_t slot) {
        BucketSlot* block = blocks.allocate();
        per_slot[slot].store(block, std::memory_order_release);
        return block;
    }

    std::unique_ptr<BucketSlot[]> global;
    std::unique_ptr<std::atomic<BucketSlot*>[]> per_slot;
    RingBlocks blocks;  // owns every block per_slot points at
    std::vector<WindowCursor> cursors;
    // Clock readings in [steady_low, steady_high) of generation steady_generation fall in every
    // cursor's bucket, so a write there skips the per-window bucket arithmetic.
    double steady_low = 0.0;
    double steady_high = -1.0;
    double steady_reading = std::numeric_limits<double>::quiet_NaN();  // a clock that stands still
    std::uint32_t steady_generation = 0;
    // PolicyWindows::moves_ when the cursors last moved: while it is unchanged, no window's
    // highest bucket moved past them.
    std::uint64_t steady_moves = ~std::uint64_t{0};
    // Adds completed by this shard's writer: never reset, only the owner writes it. On a cache
    // line of its own (the struct's alignment pads it), so writers never share it.
    alignas(64) std::atomic<std::uint64_t> writes{0};
};

/// A window's global counts as last summed, with what they were summed at: when the reset
/// generation, the read bucket, the shard count and the sum of the shards' write counts are
/// all unchanged, no add completed since and no bucket expired, so the counts still hold.
/// Each shard's write count only grows, so an equal sum means every count is equal.
struct PolicyWindows::CachedCounts {
    bool valid = false;
    std::uint32_t generation = 0;
    std::int64_t bucket = 0;
    std::size_t shards = 0;
    std::uint64_t writes = 0;
    WindowCounts counts;
};

PolicyWindows::PolicyWindows(std::vector<WindowSpec> windows, std::shared_ptr<const Clock> clock,
                             std::size_t slot_count)
    : windows_(std::move(windows)),
      clock_(clock ? std::move(clock) : SystemClock::instance()),
      slot_count_(slot_count) {
    validate_windows(windows_);
    if (slot_count_ == 0) throw std::invalid_argument("PolicyWindows needs at least one slot");
    for (const auto& w : windows_) {
        ring_offsets_.push_back(block_slots_);
        block_slots_ += w.buckets;
    }
    // One more slot after the rings: the block's lifetime counts, never recycled.
    lifetime_slot_ = block_slots_++;
    global_counts_.resize(windows_.size());
    highest_bucket_ = std::make_unique<std::atomic<std::int64_t>[]>(windows_.size());
    for (std::size_t w = 0; w < windows_.size(); ++w) highest_bucket_[w].store(kNoBucket);
}

PolicyWindows::~PolicyWindows() = default;

PolicyWindows::Shard& PolicyWindows::local_shard() {
    return shards_.local(
        [this] { return std::make_unique<Shard>(windows_, block_slots_, slot_count_); });
}

std::int64_t PolicyWindows::advance_to(std::size_t window, double now) const {
    return advance_to_bucket(window, bucket_index(now, windows_[window].step_seconds));
}

std::int64_t PolicyWindows::advance_to_bucket(std::size_t window, std::int64_t bucket) const {
    std::atomic<std::int64_t>& highest = highest_bucket_[window];
    std::int64_t seen = highest.load(std::memory_order_relaxed);
    // max(k(now), highest k seen) equals k(max(now, highest time seen)): floor is monotone.
    // The shared word is written only when a bucket starts, once per step.
    while (bucket > seen) {
        if (highest.compare_exchange_weak(seen, bucket, std::memory_order_relaxed)) {
            // After the move, and a release: a writer that sees the new count sees the move.
            moves_.fetch_add(1, std::memory_order_release);
            return bucket;
        }
    }
    return seen;
}

void PolicyWindows::add(std::uint32_t slot, std::uint64_t events, std::uint64_t total) {
    add(slot, events, total, clock_->now());
}

void PolicyWindows::add(std::uint32_t slot, std::uint64_t events, std::uint64_t total, double now) {
    add(local_shard(), slot, events, total, now);
}

void PolicyWindows::add(Shard& shard, std::uint32_t slot, std::uint64_t events, std::uint64_t total,
                        double now) {
    if (slot >= slot_count_) throw_bad_slot(slot);
    const std::uint32_t generation = generation_.load(std::memory_order_acquire);
    // Read before the cursors move: a window moved on by another thread (whose clock is ahead,
    // or a read) after this load makes the next add move the cursors again.
    const std::uint64_t moves = moves_.load(std::memory_order_acquire);
    const bool steady =
        (now >= shard.steady_low && now < shard.steady_high) || now == shard.steady_reading;
    if (!steady || generation != shard.steady_generation || moves != shard.steady_moves)
        [[unlikely]] {
        move_cursors(shard, now, generation, moves);
    }
    BucketSlot* const global = shard.global.get();
    BucketSlot* const policy = shard.block_for(slot);
    for (const WindowCursor& cursor : shard.cursors) {
        RollingWindow::add(global[cursor.block_slot], cursor.tag, events, total);
        RollingWindow::add(policy[cursor.block_slot], cursor.tag, events, total);
    }
    // Lifetime counts: tag 0 forever, so this is two plain stores on the owner's own line.
    RollingWindow::add(policy[lifetime_slot_], 0, events, total);
    // Last, and a release: a reader that sees the new count also sees the add.
    shard.writes.store(shard.writes.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

WindowCounts PolicyWindows::lifetime(std::uint32_t slot) const {
    if (slot >= slot_count_) throw std::out_of_range("slot " + std::to_string(slot));
    return shards_.with_shards([&](auto shards) {
        WindowCounts out;
        for (const auto& shard : shards) {
            if (const BucketSlot* block = shard->per_slot[slot].load(std::memory_order_acquire)) {
                const BucketSlot& counts = block[lifetime_slot_];
                out.events += counts.events.load(std::memory_order_acquire);
                out.total += counts.total.load(std::memory_order_acquire);
            }
        }
        return out;
    });
}

WindowCounts PolicyWindows::lifetime() const {
    WindowCounts out;
    for (const WindowCounts& slot : lifetimes()) out += slot;
    return out;
}

std::vector<WindowCounts> PolicyWindows::lifetimes() const {
    return shards_.with_shards([&](auto shards) {
        std::vector<WindowCounts> out(slot_count_);
        for (const auto& shard : shards) {
            for (std::size_t slot = 0; slot < slot_count_; ++slot) {
                const BucketSlot* block = shard->per_slot[slot].load(std::memory_order_acquire);
                if (block == nullptr) continue;
                const BucketSlot& counts = block[lifetime_slot_];
                out[slot].events += counts.events.load(std::memory_order_acquire);
                out[slot].total += counts.total.load(std::memory_order_acquire);
            }
        }
        return out;
    });
}

void PolicyWindows::throw_bad_slot(std::uint32_t slot) {
    throw std::out_of_range("slot " + std::to_string(slot));
}

void PolicyWindows::move_cursors(Shard& shard, double now, std::uint32_t generation,
                                 std::uint64_t moves) const {
    double low = -std::numeric_limits<double>::infinity();
    double high = std::numeric_limits<double>::infinity();
    for (std::size_t w = 0; w < windows_.size(); ++w) {
        WindowCursor& cursor = shard.cursors[w];
        cursor.move(advance_to_bucket(w, cursor.clock.bucket_at(now)), generation,
                    windows_[w].buckets, ring_offsets_[w]);
        low = std::max(low, cursor.clock.low());
        high = std::min(high, cursor.clock.high());
    }
    shard.steady_low = low;
    shard.steady_high = high;
    shard.steady_reading = now;
    shard.steady_generation = generation;
    shard.steady_moves = moves;
}

std::int64_t PolicyWindows::observe_now(std::size_t window) const {
    // The time is one high-water mark: a read moves every window to it, not only its own, so
    // a later read of another window at an earlier clock reading sees the same time.
    const double now = clock_->now();
    std::int64_t bucket = 0;
    for (std::size_t w = 0; w < windows_.size(); ++w) {
        const std::int64_t reached = advance_to(w, now);
        if (w == window) bucket = reached;
    }
    return bucket;
}

template <typename Visit>
WindowCounts PolicyWindows::sum_shards(std::size_t window, Visit&& block_of) const {
    if (window >= windows_.size()) throw std::out_of_range("window " + std::to_string(window));
    const std::uint32_t generation = generation_.load(std::memory_order_acquire);
    const std::int64_t bucket = observe_now(window);
    return shards_.with_shards([&](auto shards) {
        WindowCounts out;
        for (const auto& shard : shards) {
            if (BucketSlot* block = block_of(*shard)) {
                RollingWindow(block + ring_offsets_[window], windows_[window].buckets)
                    .read_into(out, generation, bucket);
            }
        }
        return out;
    });
}

WindowCounts PolicyWindows::counts(std::size_t window) const {
    // The readiness gate reads this on every probe, while the writers are the serving threads
    // (a threadpool can hold dozens of shards): summing every shard's ring costs O(shards x
    // buckets), checking that nothing changed costs O(shards) loads.
    if (window >= windows_.size()) throw std::out_of_range("window " + std::to_string(window));
    const std::uint32_t generation = generation_.load(std::memory_order_acquire);
    const std::int64_t bucket = observe_now(window);
    return shards_.with_shards([&](auto shards) {
        std::uint64_t writes = 0;
        // Before the rings: an add that lands between the two is summed but not in `writes`, so
        // the next read sums again.
        for (const auto& shard : shards) writes += shard->writes.load(std::memory_order_acquire);
        CachedCounts& cached = global_counts_[window];
        if (cached.valid && cached.generation == generation && cached.bucket == bucket &&
            cached.shards == shards.size() && cached.writes == writes) {
            return cached.counts;
        }
        WindowCounts out;
        for (const auto& shard : shards) {
            RollingWindow(shard->global.get() + ring_offsets_[window], windows_[window].buckets)
                .read_into(out, generation, bucket);
        }
        cached = {true, generation, bucket, shards.size(), writes, out};
        return out;
    });
}

std::optional<double> PolicyWindows::newest_event_leaves_in(std::size_t window) const {
    if (window >= windows_.size()) throw std::out_of_range("window " + std::to_string(window));
    const std::uint32_t generation = generation_.load(std::memory_order_acquire);
    const std::int64_t bucket = observe_now(window);
    const WindowSpec& spec = windows_[window];
    std::optional<std::int64_t> newest;
    shards_.with_shards([&](auto shards) {
        for (const auto& shard : shards) {
            RollingWindow(shard->global.get() + ring_offsets_[window], spec.buckets)
                .newest_event_into(newest, generation, bucket);
        }
    });
    if (!newest) return std::nullopt;
    // An event of bucket k counts until the read bucket reaches k + buckets, which starts at
    // (k + buckets) * step; the window's time is at least the start of its read bucket.
    const double leaves_at = static_cast<double>(*newest + spec.buckets) * spec.step_seconds;
    const double now = std::max(clock_->now(), static_cast<double>(bucket) * spec.step_seconds);
    return std::max(0.0, leaves_at - now);
}

WindowCounts PolicyWindows::counts(std::size_t window, std::uint32_t slot) const {
    if (slot >= slot_count_) throw std::out_of_range("slot " + std::to_string(slot));
    return sum_shards(window, [slot](const Shard& shard) {
        return shard.per_slot[slot].load(std::memory_order_acquire);
    });
}

std::size_t PolicyWindows::window_index(std::string_view name) const {
    for (std::size_t w = 0; w < windows_.size(); ++w) {
        if (windows_[w].name == name) return w;
    }
    std::string known;
    for (const auto& w : windows_) known += (known.empty() ? "" : ", ") + w.name;
    throw std::invalid_argument("unknown window " + detail::quote(name) + ": expected one of " +
                                known);
}

void PolicyWindows::reset() { generation_.fetch_add(1, std::memory_order_acq_rel); }

}  // namespace driftgate

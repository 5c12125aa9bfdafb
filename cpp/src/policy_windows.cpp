#include "driftgate/policy_windows.hpp"

#include <algorithm>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>

#include "format.hpp"

namespace driftgate {

namespace {

std::atomic<std::uint64_t> next_owner_id{1};

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
/// holding every window's ring back to back. Only the owning thread writes them; the pool hands
/// a shard to one thread at a time, and back when that thread ends.
struct PolicyWindows::Shard {
    Shard(const std::vector<WindowSpec>& windows, std::uint32_t block_slots, std::size_t slots)
        : global(std::make_unique<BucketSlot[]>(block_slots)),
          per_slot(std::make_unique<std::atomic<BucketSlot*>[]>(slots)),
          slot_count(slots) {
        cursors.reserve(windows.size());
        for (const auto& w : windows) cursors.emplace_back(w.step_seconds);
    }

    ~Shard() {
        for (std::size_t i = 0; i < slot_count; ++i) delete[] per_slot[i].load();
    }

    BucketSlot* block_for(std::uint32_t slot, std::uint32_t block_slots) {
        BucketSlot* block = per_slot[slot].load(std::memory_order_relaxed);
        if (block == nullptr) {
            // Allocated on a slot's first record in this shard, so memory follows use.
            block = new BucketSlot[block_slots];
            per_slot[slot].store(block, std::memory_order_release);
        }
        return block;
    }

    std::unique_ptr<BucketSlot[]> global;
    std::unique_ptr<std::atomic<BucketSlot*>[]> per_slot;
    std::size_t slot_count;
    std::vector<WindowCursor> cursors;
    // Clock readings in [steady_low, steady_high) of generation steady_generation fall in every
    // cursor's bucket, so a write there skips the per-window bucket arithmetic.
    double steady_low = 0.0;
    double steady_high = -1.0;
    double steady_reading = std::numeric_limits<double>::quiet_NaN();  // a clock that stands still
    std::uint32_t steady_generation = 0;
    // Adds completed by this shard's writer: never reset, only the owner writes it. On a cache
    // line of its own (the struct's alignment pads it), so writers never share it.
    alignas(64) std::atomic<std::uint64_t> writes{0};
};

/// A window's global counts as last summed, with what they were summed at: when the reset
/// generation, the read bucket, the shard count and the sum of the shards' write counts are
/// all unchanged, no add completed since and no bucket expired, so the counts still hold.
/// Each shard's write count only grows, so an equal sum means every count is equal.
struct CachedCounts {
    bool valid = false;
    std::uint32_t generation = 0;
    std::int64_t bucket = 0;
    std::size_t shards = 0;
    std::uint64_t writes = 0;
    WindowCounts counts;
};

struct PolicyWindows::ShardPool {
    std::mutex mutex;  // guards the vectors; readers hold it while summing
    std::vector<std::unique_ptr<Shard>> shards;
    std::vector<Shard*> idle;
    std::vector<CachedCounts> global_counts;  // per window

    static void release(void* pool, void* shard) {
        auto* self = static_cast<ShardPool*>(pool);
        std::lock_guard lock(self->mutex);
        self->idle.push_back(static_cast<Shard*>(shard));
    }
};

namespace {

/// This thread's shards, one per PolicyWindows it has written to; returned to their pools
/// when the thread ends, so a pool's shard count follows its live writer threads.
struct ThreadShards {
    struct Entry {
        std::uint64_t owner_id;
        void* shard;
        std::weak_ptr<void> pool;
        void (*release)(void* pool, void* shard);
    };

    std::vector<Entry> entries;

    ~ThreadShards() {
        for (auto& entry : entries) {
            if (auto pool = entry.pool.lock()) entry.release(pool.get(), entry.shard);
        }
    }
};

thread_local ThreadShards this_thread_shards;

// The last shard used, in one trivially destructible thread-local: reading it needs no
// initialisation guard, unlike this_thread_shards. (Not initial-exec: a library loaded late
// with static TLS can fail to load in a process that already used the surplus.)
struct LastShard {
    std::uint64_t owner_id = 0;
    void* shard = nullptr;
};
thread_local LastShard last_used;

}  // namespace

PolicyWindows::PolicyWindows(std::vector<WindowSpec> windows, std::shared_ptr<const Clock> clock,
                             std::size_t slot_count)
    : windows_(std::move(windows)),
      clock_(clock ? std::move(clock) : SystemClock::instance()),
      slot_count_(slot_count),
      owner_id_(next_owner_id.fetch_add(1, std::memory_order_relaxed)),
      pool_(std::make_shared<ShardPool>()) {
    validate_windows(windows_);
    if (slot_count_ == 0) throw std::invalid_argument("PolicyWindows needs at least one slot");
    for (const auto& w : windows_) {
        ring_offsets_.push_back(block_slots_);
        block_slots_ += w.buckets;
    }
    // One more slot after the rings: the block's lifetime counts, never recycled.
    lifetime_slot_ = block_slots_++;
    pool_->global_counts.resize(windows_.size());
    highest_bucket_ = std::make_unique<std::atomic<std::int64_t>[]>(windows_.size());
    for (std::size_t w = 0; w < windows_.size(); ++w) highest_bucket_[w].store(kNoBucket);
}

PolicyWindows::~PolicyWindows() = default;

PolicyWindows::Shard& PolicyWindows::local_shard() {
    LastShard& last = last_used;
    if (last.owner_id == owner_id_) return *static_cast<Shard*>(last.shard);
    ThreadShards& mine = this_thread_shards;
    for (const auto& entry : mine.entries) {
        if (entry.owner_id == owner_id_) {
            last = {owner_id_, entry.shard};
            return *static_cast<Shard*>(entry.shard);
        }
    }
    Shard* shard;
    {
        std::lock_guard lock(pool_->mutex);
        if (pool_->idle.empty()) {
            shard = pool_->shards
                        .emplace_back(std::make_unique<Shard>(windows_, block_slots_, slot_count_))
                        .get();
        } else {
            shard = pool_->idle.back();
            pool_->idle.pop_back();
        }
    }
    std::erase_if(mine.entries, [](const auto& entry) { return entry.pool.expired(); });
    mine.entries.push_back({owner_id_, shard, pool_, &ShardPool::release});
    last = {owner_id_, shard};
    return *shard;
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
        if (highest.compare_exchange_weak(seen, bucket, std::memory_order_relaxed)) return bucket;
    }
    return seen;
}

void PolicyWindows::add(std::uint32_t slot, std::uint64_t events, std::uint64_t total) {
    if (slot >= slot_count_) throw std::out_of_range("slot " + std::to_string(slot));
    Shard& shard = local_shard();
    const std::uint32_t generation = generation_.load(std::memory_order_acquire);
    const double now = clock_->now();
    const bool steady =
        (now >= shard.steady_low && now < shard.steady_high) || now == shard.steady_reading;
    if (!steady || generation != shard.steady_generation) {
        move_cursors(shard, now, generation);
    }
    BucketSlot* const global = shard.global.get();
    BucketSlot* const policy = shard.block_for(slot, block_slots_);
    WindowCursor* const cursors = shard.cursors.data();
    const std::size_t window_count = windows_.size();
    for (std::size_t w = 0; w < window_count; ++w) {
        WindowCursor& cursor = cursors[w];
        // Another thread may have moved the window on while this thread's clock lags.
        if (highest_bucket_[w].load(std::memory_order_relaxed) != cursor.bucket) {
            cursor.move(advance_to_bucket(w, cursor.clock.bucket_at(now)), generation,
                        windows_[w].buckets, ring_offsets_[w]);
        }
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
    WindowCounts out;
    std::lock_guard lock(pool_->mutex);
    for (const auto& shard : pool_->shards) {
        if (const BucketSlot* block = shard->per_slot[slot].load(std::memory_order_acquire)) {
            const BucketSlot& counts = block[lifetime_slot_];
            out.events += counts.events.load(std::memory_order_acquire);
            out.total += counts.total.load(std::memory_order_acquire);
        }
    }
    return out;
}

WindowCounts PolicyWindows::lifetime() const {
    WindowCounts out;
    std::lock_guard lock(pool_->mutex);
    for (const auto& shard : pool_->shards) {
        for (std::size_t slot = 0; slot < slot_count_; ++slot) {
            if (const BucketSlot* block = shard->per_slot[slot].load(std::memory_order_acquire)) {
                const BucketSlot& counts = block[lifetime_slot_];
                out.events += counts.events.load(std::memory_order_acquire);
                out.total += counts.total.load(std::memory_order_acquire);
            }
        }
    }
    return out;
}

void PolicyWindows::move_cursors(Shard& shard, double now, std::uint32_t generation) const {
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
    WindowCounts out;
    std::lock_guard lock(pool_->mutex);
    for (const auto& shard : pool_->shards) {
        if (BucketSlot* block = block_of(*shard)) {
            RollingWindow(block + ring_offsets_[window], windows_[window].buckets)
                .read_into(out, generation, bucket);
        }
    }
    return out;
}

WindowCounts PolicyWindows::counts(std::size_t window) const {
    // The readiness gate reads this on every probe, while the writers are the serving threads
    // (a threadpool can hold dozens of shards): summing every shard's ring costs O(shards x
    // buckets), checking that nothing changed costs O(shards) loads.
    if (window >= windows_.size()) throw std::out_of_range("window " + std::to_string(window));
    const std::uint32_t generation = generation_.load(std::memory_order_acquire);
    const std::int64_t bucket = observe_now(window);
    std::lock_guard lock(pool_->mutex);
    std::uint64_t writes = 0;
    // Before the rings: an add that lands between the two is summed but not in `writes`, so
    // the next read sums again.
    for (const auto& shard : pool_->shards) writes += shard->writes.load(std::memory_order_acquire);
    CachedCounts& cached = pool_->global_counts[window];
    if (cached.valid && cached.generation == generation && cached.bucket == bucket &&
        cached.shards == pool_->shards.size() && cached.writes == writes) {
        return cached.counts;
    }
    WindowCounts out;
    for (const auto& shard : pool_->shards) {
        RollingWindow(shard->global.get() + ring_offsets_[window], windows_[window].buckets)
            .read_into(out, generation, bucket);
    }
    cached = {true, generation, bucket, pool_->shards.size(), writes, out};
    return out;
}

std::optional<double> PolicyWindows::newest_event_leaves_in(std::size_t window) const {
    if (window >= windows_.size()) throw std::out_of_range("window " + std::to_string(window));
    const std::uint32_t generation = generation_.load(std::memory_order_acquire);
    const std::int64_t bucket = observe_now(window);
    const WindowSpec& spec = windows_[window];
    std::optional<std::int64_t> newest;
    {
        std::lock_guard lock(pool_->mutex);
        for (const auto& shard : pool_->shards) {
            RollingWindow(shard->global.get() + ring_offsets_[window], spec.buckets)
                .newest_event_into(newest, generation, bucket);
        }
    }
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

#include "driftgate/policy_windows.hpp"

#include <algorithm>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>

#include "format.hpp"

namespace driftgate {

using Rings = std::vector<RollingWindow>;  // one ring per window

namespace {

Rings make_rings(const std::vector<WindowSpec>& windows) {
    Rings rings;
    rings.reserve(windows.size());
    for (const auto& w : windows) rings.emplace_back(w.buckets);
    return rings;
}

std::atomic<std::uint64_t> next_owner_id{1};

}  // namespace

/// One thread's rings. Only the owning thread writes them; the pool hands a shard to one
/// thread at a time, and back when that thread ends.
struct PolicyWindows::Shard {
    Shard(const std::vector<WindowSpec>& windows, std::size_t slots)
        : global(make_rings(windows)),
          per_slot(std::make_unique<std::atomic<Rings*>[]>(slots)),
          slot_count(slots) {}

    ~Shard() {
        for (std::size_t i = 0; i < slot_count; ++i) delete per_slot[i].load();
    }

    Rings& rings_for(std::uint32_t slot, const std::vector<WindowSpec>& windows) {
        Rings* rings = per_slot[slot].load(std::memory_order_relaxed);
        if (rings == nullptr) {
            // Allocated on a slot's first record in this shard, so memory follows use.
            rings = new Rings(make_rings(windows));
            per_slot[slot].store(rings, std::memory_order_release);
        }
        return *rings;
    }

    Rings global;
    std::unique_ptr<std::atomic<Rings*>[]> per_slot;
    std::size_t slot_count;
};

struct PolicyWindows::ShardPool {
    std::mutex mutex;  // guards both vectors; readers hold it while summing
    std::vector<std::unique_ptr<Shard>> shards;
    std::vector<Shard*> idle;

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

    std::uint64_t last_owner_id = 0;
    void* last_shard = nullptr;
    std::vector<Entry> entries;

    ~ThreadShards() {
        for (auto& entry : entries) {
            if (auto pool = entry.pool.lock()) entry.release(pool.get(), entry.shard);
        }
    }
};

thread_local ThreadShards this_thread_shards;

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
    highest_bucket_ = std::make_unique<std::atomic<std::int64_t>[]>(windows_.size());
    for (std::size_t w = 0; w < windows_.size(); ++w) {
        highest_bucket_[w].store(std::numeric_limits<std::int64_t>::min());
    }
}

PolicyWindows::~PolicyWindows() = default;

PolicyWindows::Shard& PolicyWindows::local_shard() {
    ThreadShards& mine = this_thread_shards;
    if (mine.last_owner_id == owner_id_) return *static_cast<Shard*>(mine.last_shard);
    for (const auto& entry : mine.entries) {
        if (entry.owner_id == owner_id_) {
            mine.last_owner_id = owner_id_;
            mine.last_shard = entry.shard;
            return *static_cast<Shard*>(entry.shard);
        }
    }
    Shard* shard;
    {
        std::lock_guard lock(pool_->mutex);
        if (pool_->idle.empty()) {
            shard =
                pool_->shards.emplace_back(std::make_unique<Shard>(windows_, slot_count_)).get();
        } else {
            shard = pool_->idle.back();
            pool_->idle.pop_back();
        }
    }
    std::erase_if(mine.entries, [](const auto& entry) { return entry.pool.expired(); });
    mine.entries.push_back({owner_id_, shard, pool_, &ShardPool::release});
    mine.last_owner_id = owner_id_;
    mine.last_shard = shard;
    return *shard;
}

std::int64_t PolicyWindows::advance_to(std::size_t window, double now) const {
    const std::int64_t bucket = bucket_index(now, windows_[window].step_seconds);
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
    Rings& rings = shard.rings_for(slot, windows_);
    for (std::size_t w = 0; w < windows_.size(); ++w) {
        const std::int64_t bucket = advance_to(w, now);
        shard.global[w].add(generation, bucket, events, total);
        rings[w].add(generation, bucket, events, total);
    }
}

template <typename Visit>
WindowCounts PolicyWindows::sum_shards(std::size_t window, Visit&& rings_of) const {
    if (window >= windows_.size()) throw std::out_of_range("window " + std::to_string(window));
    const std::uint32_t generation = generation_.load(std::memory_order_acquire);
    const std::int64_t bucket = advance_to(window, clock_->now());
    WindowCounts out;
    std::lock_guard lock(pool_->mutex);
    for (const auto& shard : pool_->shards) {
        if (const Rings* rings = rings_of(*shard))
            (*rings)[window].read_into(out, generation, bucket);
    }
    return out;
}

WindowCounts PolicyWindows::counts(std::size_t window) const {
    return sum_shards(window, [](const Shard& shard) { return &shard.global; });
}

WindowCounts PolicyWindows::counts(std::size_t window, std::uint32_t slot) const {
    if (slot >= slot_count_) throw std::out_of_range("slot " + std::to_string(slot));
    return sum_shards(window, [slot](const Shard& shard) -> const Rings* {
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

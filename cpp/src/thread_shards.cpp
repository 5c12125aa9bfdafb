#include "driftgate/thread_shards.hpp"

#include <array>
#include <atomic>

namespace driftgate::detail {

namespace {

std::atomic<std::uint64_t> next_pool_id{1};

/// This thread's shards, one per pool it has written to; handed back to their pools when the
/// thread ends.
struct HeldShards {
    struct Entry {
        std::uint64_t pool_id;
        void* shard;
        std::weak_ptr<void> pool;
        void (*release)(void* pool, void* shard);
    };

    std::vector<Entry> entries;

    ~HeldShards() {
        for (auto& entry : entries) {
            if (auto pool = entry.pool.lock()) entry.release(pool.get(), entry.shard);
        }
    }
};

thread_local HeldShards held_shards;

/// The shards of the pools this thread used last, in trivially destructible thread-locals:
/// reading them needs no initialisation guard, unlike held_shards. A pool id is never reused,
/// so an entry of a pool that is gone matches nothing. (Not initial-exec: a library loaded late
/// with static TLS can fail to load in a process that already used the surplus.)
constexpr std::size_t kRecent = 4;
struct RecentShards {
    struct Entry {
        std::uint64_t pool_id = 0;
        void* shard = nullptr;
    };
    std::array<Entry, kRecent> entries{};
    std::size_t next = 0;  // the entry to replace

    void remember(std::uint64_t pool_id, void* shard) noexcept {
        entries[next] = {pool_id, shard};
        next = (next + 1) % kRecent;
    }
};
thread_local RecentShards recent_shards;

}  // namespace

std::uint64_t new_shard_pool_id() noexcept {
    return next_pool_id.fetch_add(1, std::memory_order_relaxed);
}

namespace {

// Apart from thread_shard, so that its common path touches one thread-local only.
[[gnu::noinline]] void* held_shard(std::uint64_t pool_id) noexcept {
    for (const auto& entry : held_shards.entries) {
        if (entry.pool_id == pool_id) {
            recent_shards.remember(pool_id, entry.shard);
            return entry.shard;
        }
    }
    return nullptr;
}

}  // namespace

void* thread_shard(std::uint64_t pool_id) noexcept {
    for (const auto& entry : recent_shards.entries) {
        if (entry.pool_id == pool_id) return entry.shard;
    }
    return held_shard(pool_id);
}

void keep_thread_shard(std::uint64_t pool_id, void* shard, std::weak_ptr<void> pool,
                       void (*release)(void* pool, void* shard)) {
    HeldShards& held = held_shards;
    std::erase_if(held.entries, [](const auto& entry) { return entry.pool.expired(); });
    held.entries.push_back({pool_id, shard, std::move(pool), release});
    recent_shards.remember(pool_id, shard);
}

}  // namespace driftgate::detail

#include <catch2/catch.hpp>

#include <atomic>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "driftgate/thread_shards.hpp"

using driftgate::ShardPool;

namespace {

/// A shard that counts how often another thread took it over.
struct Tracked {
    std::atomic<int> value{0};
    int handovers = 0;
    void handed_over() { ++handovers; }
};

int sum(const ShardPool<Tracked>& pool) {
    return pool.with_shards([](auto shards) {
        int total = 0;
        for (const auto& shard : shards) total += shard->value.load();
        return total;
    });
}

std::size_t size(const ShardPool<Tracked>& pool) {
    return pool.with_shards([](auto shards) { return shards.size(); });
}

Tracked& local(ShardPool<Tracked>& pool) {
    return pool.local([] { return std::make_unique<Tracked>(); });
}

}  // namespace

TEST_CASE("a thread gets the same shard on every call", "[thread_shards]") {
    ShardPool<Tracked> pool;
    Tracked& first = local(pool);
    CHECK(&local(pool) == &first);
    CHECK(size(pool) == 1);
}

TEST_CASE("threads that live at once hold shards of their own", "[thread_shards][threads]") {
    ShardPool<Tracked> pool;
    constexpr int kThreads = 4;
    std::atomic<int> arrived{0};
    std::vector<Tracked*> seen(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            seen[t] = &local(pool);
            seen[t]->value.fetch_add(t + 1);
            arrived.fetch_add(1);
            while (arrived.load() < kThreads) std::this_thread::yield();  // all alive at once
        });
    }
    for (auto& thread : threads) thread.join();
    CHECK(std::set<Tracked*>(seen.begin(), seen.end()).size() == kThreads);
    CHECK(size(pool) == kThreads);
    CHECK(sum(pool) == 1 + 2 + 3 + 4);
}

TEST_CASE("a thread's shard, and what it holds, goes to the next thread after it ends",
          "[thread_shards][threads]") {
    ShardPool<Tracked> pool;
    Tracked* first = nullptr;
    std::thread([&] {
        first = &local(pool);
        first->value = 5;
    }).join();
    Tracked* second = nullptr;
    std::thread([&] {
        second = &local(pool);
        second->value.fetch_add(1);
    }).join();
    CHECK(second == first);
    CHECK(second->handovers == 1);  // told that its memo of the last thread is stale
    CHECK(size(pool) == 1);
    CHECK(sum(pool) == 6);
}

TEST_CASE("a thread using more pools than its memo holds still finds each of its shards",
          "[thread_shards]") {
    constexpr int kPools = 9;  // more than the few a thread's memo keeps
    std::vector<std::unique_ptr<ShardPool<Tracked>>> pools;
    std::vector<Tracked*> shards;
    for (int i = 0; i < kPools; ++i) {
        pools.push_back(std::make_unique<ShardPool<Tracked>>());
        shards.push_back(&local(*pools.back()));
    }
    for (int round = 0; round < 3; ++round) {
        for (int i = kPools - 1; i >= 0; --i) REQUIRE(&local(*pools[i]) == shards[i]);
    }
    for (const auto& pool : pools) CHECK(size(*pool) == 1);
}

TEST_CASE("a pool made where a dead one was never hands out the dead one's shard",
          "[thread_shards]") {
    auto pool = std::make_unique<ShardPool<Tracked>>();
    local(*pool).value = 7;
    pool.reset();
    ShardPool<Tracked> fresh;
    CHECK(local(fresh).value == 0);
    CHECK(size(fresh) == 1);
}

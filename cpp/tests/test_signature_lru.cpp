#include <catch2/catch.hpp>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "driftgate/signature_lru.hpp"

using driftgate::MetricsRegistry;
using driftgate::SignatureLRU;

TEST_CASE("a signature is new until seen, then not", "[signature_lru]") {
    SignatureLRU lru(3, std::make_shared<MetricsRegistry>());
    CHECK(lru.is_new("a"));
    CHECK_FALSE(lru.is_new("a"));
    CHECK(lru.size() == 1);
}

TEST_CASE("the least recently seen signature is evicted", "[signature_lru]") {
    SignatureLRU lru(3, std::make_shared<MetricsRegistry>());
    for (const char* s : {"a", "b", "c"}) lru.is_new(s);
    CHECK_FALSE(lru.is_new("a"));  // a is most recent now; b is the oldest
    CHECK(lru.is_new("d"));        // evicts b
    CHECK(lru.contains("a"));
    CHECK_FALSE(lru.contains("b"));
    CHECK(lru.is_new("b"));  // evicts c
    CHECK_FALSE(lru.contains("c"));
    CHECK(lru.size() == 3);
}

TEST_CASE("contains does not touch", "[signature_lru]") {
    SignatureLRU lru(2, std::make_shared<MetricsRegistry>());
    lru.is_new("a");
    lru.is_new("b");
    CHECK(lru.contains("a"));  // a stays the oldest
    lru.is_new("c");
    CHECK_FALSE(lru.contains("a"));
    CHECK(lru.contains("b"));
}

TEST_CASE("runs and unique signatures are counted", "[signature_lru][metrics]") {
    auto registry = std::make_shared<MetricsRegistry>();
    SignatureLRU lru(10, registry);
    for (const char* s : {"a", "b", "a", "c", "a"}) lru.is_new(s);
    const std::string text = registry->exposition();
    CHECK_THAT(text, Catch::Contains("solver_signature_runs_total 5"));
    CHECK_THAT(text, Catch::Contains("solver_signature_unique_total 3"));
}

TEST_CASE("capacity outside 1..10M is rejected", "[signature_lru]") {
    CHECK_THROWS_WITH(SignatureLRU(0), Catch::Contains("capacity=0"));
    CHECK_THROWS_AS(SignatureLRU(10'000'001), std::invalid_argument);
}

TEST_CASE("concurrent callers see each signature new exactly once", "[signature_lru][threads]") {
    SignatureLRU lru(100000, std::make_shared<MetricsRegistry>());
    std::atomic<int> fresh{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 20000; ++i) fresh += lru.is_new("sig-" + std::to_string(i));
        });
    }
    for (auto& thread : threads) thread.join();
    CHECK(fresh.load() == 20000);
    CHECK(lru.size() == 20000);
}

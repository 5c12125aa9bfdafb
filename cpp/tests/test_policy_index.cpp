#include <catch2/catch.hpp>

#include <atomic>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "driftgate/policy_index.hpp"

using driftgate::PolicyIndex;

TEST_CASE("policy ids are 1-64 characters of [A-Za-z0-9_.:-]", "[policy_index]") {
    CHECK(PolicyIndex::is_valid("lksg.v1"));
    CHECK(PolicyIndex::is_valid("a:b-c_d.E9"));
    CHECK(PolicyIndex::is_valid(std::string(64, 'x')));
    CHECK_FALSE(PolicyIndex::is_valid(""));
    CHECK_FALSE(PolicyIndex::is_valid(std::string(65, 'x')));
    CHECK_FALSE(PolicyIndex::is_valid("user@example.com"));
    CHECK_FALSE(PolicyIndex::is_valid("a b"));
    CHECK_THROWS_WITH(PolicyIndex::validate("a b"), Catch::Contains("'a b'"));
}

TEST_CASE("ids get dense slots and overflow past the cap", "[policy_index]") {
    PolicyIndex index(2);
    CHECK(index.slot_for("a") == 0);
    CHECK(index.slot_for("b") == 1);
    CHECK(index.slot_for("a") == 0);
    CHECK(index.slot_for("c") == index.overflow_slot());
    CHECK(index.label(index.overflow_slot()) == "__overflow__");
    CHECK(index.label(1) == "b");
    CHECK(index.ids() == std::vector<std::string>{"a", "b", "__overflow__"});
    CHECK_FALSE(index.find("c").has_value());  // not admitted: counted under __overflow__
    CHECK(index.find("__overflow__") == index.overflow_slot());
    CHECK(index.find("a") == 0u);
    CHECK_THROWS_WITH(index.slot_for("__overflow__"), Catch::Contains("reserved"));
}

TEST_CASE("find does not admit an id", "[policy_index]") {
    PolicyIndex index(4);
    CHECK_FALSE(index.find("x").has_value());
    CHECK(index.ids().empty());
}

TEST_CASE("max_policies outside 1..65536 is rejected", "[policy_index]") {
    CHECK_THROWS_WITH(PolicyIndex(0), Catch::Contains("max_policies=0"));
    CHECK_THROWS_AS(PolicyIndex(65537), std::invalid_argument);
}

TEST_CASE("an id admitted while others race for the last slot is never overflow",
          "[policy_index][threads]") {
    // Every thread asks for the same id when one slot is left: the losers of the admission
    // must find the winner's slot, even when they missed it on their first lookup.
    constexpr int kThreads = 3;
    for (int round = 0; round < 1000; ++round) {
        PolicyIndex index(1);
        std::atomic<int> ready{0};
        std::vector<std::uint32_t> slots(kThreads);
        std::vector<std::thread> threads;
        for (int t = 0; t < kThreads; ++t) {
            threads.emplace_back([&, t] {
                ready.fetch_add(1);
                while (ready.load() < kThreads) std::this_thread::yield();
                slots[t] = index.slot_for("last");
            });
        }
        for (auto& thread : threads) thread.join();
        for (std::uint32_t slot : slots) REQUIRE(slot == 0);
        REQUIRE(index.find("last") == std::optional<std::uint32_t>(0));
    }
}

TEST_CASE("concurrent admission gives every id one slot", "[policy_index][threads]") {
    PolicyIndex index(100);
    std::vector<std::thread> threads;
    std::vector<std::vector<std::uint32_t>> seen(8);
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 300; ++i)
                seen[t].push_back(index.slot_for("p" + std::to_string(i)));
        });
    }
    for (auto& thread : threads) thread.join();
    for (int t = 1; t < 8; ++t) CHECK(seen[t] == seen[0]);
    std::set<std::uint32_t> slots(seen[0].begin(), seen[0].end());
    CHECK(slots.size() == 101);  // 100 admitted ids and the overflow slot
    CHECK(index.ids().size() == 101);
}

TEST_CASE("admit_all admits every new id or none of them", "[policy_index]") {
    PolicyIndex index(3);
    CHECK(index.slot_for("a") == 0);
    const auto slots = index.admit_all({"b", "a"});
    REQUIRE(slots.has_value());
    CHECK(*slots == std::vector<std::uint32_t>{1, 0});
    CHECK(index.admitted() == 2);
    // Two new ids, one place left: nothing is admitted.
    CHECK_FALSE(index.admit_all({"c", "d"}).has_value());
    CHECK(index.admitted() == 2);
    CHECK_FALSE(index.find("c").has_value());
    // Exactly filling the cap is fine.
    CHECK(index.admit_all({"c", "b"}) == std::vector<std::uint32_t>{2, 1});
    CHECK(index.admitted() == 3);
    CHECK(index.admit_all({"a"}) == std::vector<std::uint32_t>{0});
    CHECK_FALSE(index.admit_all({"e"}).has_value());
    CHECK_THROWS_WITH(index.admit_all({"ok", "bad id"}), Catch::Contains("'bad id'"));
    CHECK_THROWS_WITH(index.admit_all({"__overflow__"}), Catch::Contains("reserved"));
}

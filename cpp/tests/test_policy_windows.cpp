#include <catch2/catch.hpp>

#include <atomic>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "driftgate/policy_windows.hpp"

using driftgate::ManualClock;
using driftgate::PolicyWindows;
using driftgate::WindowSpec;

namespace {

struct Fixture {
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(1000.0);
    PolicyWindows windows{std::vector<WindowSpec>{{"short", 3, 10.0}, {"long", 60, 60.0}}, clock,
                          4};
};

}  // namespace

TEST_CASE("counts follow the bucket rule against the clock", "[policy_windows]") {
    Fixture f;
    f.windows.add(0, 1, 2);  // t = 1000: bucket 100 of "short"
    CHECK(f.windows.counts(0).total == 2);
    f.clock->set(1029.9);  // bucket 102: still inside 3 buckets
    CHECK(f.windows.counts(0).total == 2);
    f.clock->set(1030.0);  // bucket 103: aged out
    CHECK(f.windows.counts(0).total == 0);
    CHECK(f.windows.counts(1).total == 2);
    CHECK(f.windows.counts(1, 0).events == 1);
    CHECK(f.windows.counts(1, 1).total == 0);
}

TEST_CASE("a clock that steps back neither loses nor double-counts", "[policy_windows]") {
    Fixture f;
    f.clock->set(1025.0);
    f.windows.add(0, 0, 1);  // bucket 102
    f.clock->set(900.0);     // backwards: the effective time stays at 1025
    f.windows.add(0, 0, 1);  // counted in bucket 102, not 90
    CHECK(f.windows.counts(0).total == 2);
    f.clock->set(1030.0);  // bucket 103: both still in
    CHECK(f.windows.counts(0).total == 2);
    f.clock->set(1050.0);  // bucket 105: both out
    CHECK(f.windows.counts(0).total == 0);
}

TEST_CASE("an add in a bucket that a read has moved past counts in the read's bucket",
          "[policy_windows]") {
    Fixture f;
    f.windows.add(0, 0, 1);  // t = 1000: bucket 100 of "short"; the cursor rests there
    f.clock->set(1035.0);
    CHECK(f.windows.counts(0).total == 0);  // the read moves "short" on to bucket 103
    f.clock->set(1000.0);                   // a reading inside the writer's resting bucket...
    f.windows.add(0, 0, 1);                 // ...still counts at the highest time seen
    f.clock->set(1035.0);
    CHECK(f.windows.counts(0).total == 1);
    CHECK(f.windows.counts(0, 0).total == 1);
}

TEST_CASE("an add at a reading the caller took is an add at that time", "[policy_windows]") {
    Fixture f;
    PolicyWindows::Shard& shard = f.windows.local_shard();
    f.windows.add(shard, 1, 1, 1, 1000.0);
    f.windows.add(1, 0, 1, 1010.0);
    f.clock->set(1020.0);
    CHECK(f.windows.counts(0).total == 2);  // buckets 100 and 101, both within 3
    f.clock->set(1030.0);
    CHECK(f.windows.counts(0).total == 1);  // bucket 100 has left
    f.windows.add(shard, 1, 0, 1, 990.0);   // older than the highest time seen: counts at 1030
    CHECK(f.windows.counts(0, 1).total == 2);
    CHECK(f.windows.lifetime(1).total == 3);
    CHECK(f.windows.lifetime(1).events == 1);
}

TEST_CASE("lifetimes answer every slot in one pass", "[policy_windows]") {
    Fixture f;
    f.windows.add(0, 1, 2);
    std::thread([&] { f.windows.add(3, 2, 5); }).join();
    std::thread([&] { f.windows.add(0, 0, 1); }).join();
    const auto lifetimes = f.windows.lifetimes();
    REQUIRE(lifetimes.size() == 4);
    CHECK((lifetimes[0].events == 1 && lifetimes[0].total == 3));
    CHECK((lifetimes[1].total == 0 && lifetimes[2].total == 0));
    CHECK((lifetimes[3].events == 2 && lifetimes[3].total == 5));
    CHECK(f.windows.lifetime().total == 8);
}

TEST_CASE("reset empties every window", "[policy_windows]") {
    Fixture f;
    f.windows.add(2, 3, 3);
    f.windows.reset();
    CHECK(f.windows.counts(0).total == 0);
    CHECK(f.windows.counts(1, 2).total == 0);
    f.windows.add(2, 0, 1);
    CHECK(f.windows.counts(1, 2).total == 1);
}

TEST_CASE("unknown windows are named in the error", "[policy_windows]") {
    Fixture f;
    CHECK(f.windows.window_index("long") == 1);
    CHECK_THROWS_WITH(f.windows.window_index("7m"),
                      Catch::Contains("'7m'") && Catch::Contains("short, long"));
}

TEST_CASE("counts are exact under many writer threads", "[policy_windows][threads]") {
    Fixture f;
    constexpr int kThreads = 8;
    constexpr int kPerThread = 50000;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < kPerThread; ++i) {
                f.windows.add(static_cast<std::uint32_t>(t % 4), i % 10 == 0 ? 1 : 0, 1);
                // The clock moves while others write; all of it stays inside "long".
                if (t == 0 && i % 1000 == 0) f.clock->advance(0.5);
            }
        });
    }
    // A reader racing the writers never sees more events than requests.
    std::thread reader([&] {
        for (int i = 0; i < 2000; ++i) {
            const auto counts = f.windows.counts(1);
            REQUIRE(counts.events <= counts.total);
        }
    });
    for (auto& thread : threads) thread.join();
    reader.join();
    const auto counts = f.windows.counts(1);
    CHECK(counts.total == kThreads * kPerThread);
    CHECK(counts.events == kThreads * kPerThread / 10);
    std::uint64_t per_slot = 0;
    for (std::uint32_t slot = 0; slot < 4; ++slot) per_slot += f.windows.counts(1, slot).total;
    CHECK(per_slot == kThreads * kPerThread);
}

TEST_CASE("a thread's shard is reused after the thread ends", "[policy_windows][threads]") {
    Fixture f;
    for (int round = 0; round < 20; ++round) {
        std::thread([&] { f.windows.add(1, 0, 1); }).join();
    }
    CHECK(f.windows.counts(1, 1).total == 20);
}

TEST_CASE("repeated reads of a window see every add, expiry and reset", "[policy_windows]") {
    // Global counts are kept between reads; each of these must show through them.
    Fixture f;
    f.windows.add(0, 1, 1);
    CHECK(f.windows.counts(0).total == 1);
    CHECK(f.windows.counts(0).total == 1);  // nothing added: the same counts
    f.windows.add(2, 0, 3);
    CHECK(f.windows.counts(0).total == 4);
    std::thread([&] { f.windows.add(1, 1, 1); }).join();  // a new writer's shard
    CHECK(f.windows.counts(0).events == 2);
    CHECK(f.windows.counts(0).total == 5);
    std::thread([&] { f.windows.add(1, 0, 2); }).join();  // a reused shard
    CHECK(f.windows.counts(0).total == 7);
    f.clock->advance(30.0);  // past "short" (3 x 10 s) with no add: the buckets expire
    CHECK(f.windows.counts(0).total == 0);
    CHECK(f.windows.counts(1).total == 7);
    f.windows.reset();
    CHECK(f.windows.counts(1).total == 0);
    f.windows.add(0, 0, 1);
    CHECK(f.windows.counts(1).total == 1);
}

TEST_CASE("a reader polling between writers' adds ends on the exact counts",
          "[policy_windows][threads]") {
    Fixture f;
    constexpr int kThreads = 4;
    constexpr int kPerThread = 20000;
    std::atomic<bool> done{false};
    std::thread reader([&] {
        std::uint64_t last = 0;
        while (!done.load()) {
            const auto counts = f.windows.counts(1);
            REQUIRE(counts.events <= counts.total);
            REQUIRE(counts.total >= last);  // no add is lost between two reads
            last = counts.total;
        }
    });
    std::vector<std::thread> writers;
    for (int t = 0; t < kThreads; ++t) {
        writers.emplace_back([&, t] {
            for (int i = 0; i < kPerThread; ++i) {
                f.windows.add(static_cast<std::uint32_t>(t), i % 4 == 0 ? 1 : 0, 1);
            }
        });
    }
    for (auto& writer : writers) writer.join();
    done.store(true);
    reader.join();
    CHECK(f.windows.counts(1).total == kThreads * kPerThread);
    CHECK(f.windows.counts(1).events == kThreads * kPerThread / 4);
}

// -- Boundaries: each rule at its limit, on both sides ---------------------------------------

TEST_CASE("boundary: a window index past the last is out of range", "[policy_windows][boundary]") {
    Fixture f;  // two windows: 0 and 1
    CHECK_NOTHROW(f.windows.counts(1));
    CHECK_NOTHROW(f.windows.newest_event_leaves_in(1));
    CHECK_THROWS_AS(f.windows.counts(2), std::out_of_range);
    CHECK_THROWS_AS(f.windows.counts(2, 0), std::out_of_range);
    CHECK_THROWS_AS(f.windows.newest_event_leaves_in(2), std::out_of_range);
    CHECK_THROWS_AS(f.windows.counts(0, 4), std::out_of_range);  // four slots: 0 to 3
    CHECK_THROWS_AS(f.windows.add(4, 0, 1), std::out_of_range);
}

TEST_CASE("boundary: after the clock steps back, an event leaves at the high-water mark's time",
          "[policy_windows][boundary]") {
    Fixture f;             // "short": 3 x 10 s
    f.clock->set(1025.0);  // bucket 102: the event counts until t = 1050
    f.windows.add(0, 1, 1);
    CHECK(f.windows.newest_event_leaves_in(0) == Approx(25.0));
    f.clock->set(900.0);  // back: the windows' time stays in bucket 102, which starts at 1020
    CHECK(f.windows.newest_event_leaves_in(0) == Approx(30.0));
    f.clock->set(1049.0);
    CHECK(f.windows.newest_event_leaves_in(0) == Approx(1.0));
    f.clock->set(1050.0);
    CHECK_FALSE(f.windows.newest_event_leaves_in(0).has_value());
}

TEST_CASE("boundary: a read moves every window to the clock's time, not only its own",
          "[policy_windows][boundary]") {
    Fixture f;
    f.clock->set(2000.0);
    f.windows.counts(1);  // "long" is read; "short" moves to bucket 200 with it
    f.clock->set(1000.0);
    f.windows.add(0, 1, 1);  // lands in "short"'s bucket 200, at the high-water mark
    f.clock->set(2029.0);
    CHECK(f.windows.counts(0).total == 1);
    f.clock->set(2030.0);
    CHECK(f.windows.counts(0).total == 0);
}

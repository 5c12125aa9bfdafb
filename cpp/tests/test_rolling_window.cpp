#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include "driftgate/rolling_window.hpp"

using driftgate::bucket_index;
using driftgate::RollingWindow;
using driftgate::WindowCounts;
using driftgate::WindowSpec;

namespace {

/// A ring with its own storage.
struct OwnedWindow : RollingWindow {
    explicit OwnedWindow(std::uint32_t buckets)
        : OwnedWindow(std::make_unique<driftgate::BucketSlot[]>(buckets), buckets) {}

  private:
    OwnedWindow(std::unique_ptr<driftgate::BucketSlot[]> slots, std::uint32_t buckets)
        : RollingWindow(slots.get(), buckets), storage(std::move(slots)) {}

    std::unique_ptr<driftgate::BucketSlot[]> storage;
};

WindowCounts read(const RollingWindow& window, std::int64_t now_bucket,
                  std::uint32_t generation = 0) {
    WindowCounts out;
    window.read_into(out, generation, now_bucket);
    return out;
}

}  // namespace

TEST_CASE("bucket index is floor(t / step), negatives included", "[window]") {
    CHECK(bucket_index(0.0, 5.0) == 0);
    CHECK(bucket_index(4.999, 5.0) == 0);
    CHECK(bucket_index(5.0, 5.0) == 1);
    CHECK(bucket_index(-0.1, 5.0) == -1);
    CHECK(bucket_index(-5.0, 5.0) == -1);
    CHECK(bucket_index(1e300, 1.0) == bucket_index(1e299, 1.0));
}

TEST_CASE("an event counts while 0 <= now - k < buckets", "[window]") {
    OwnedWindow window(3);
    window.add(0, 10, 1, 4);
    CHECK(read(window, 9).total == 0);  // before the event's bucket
    CHECK(read(window, 10).total == 4);
    CHECK(read(window, 12).total == 4);
    CHECK(read(window, 12).events == 1);
    CHECK(read(window, 13).total == 0);  // aged out
}

TEST_CASE("a recycled slot forgets its old bucket", "[window]") {
    OwnedWindow window(2);
    window.add(0, 0, 1, 1);
    window.add(0, 2, 0, 5);  // same slot as bucket 0
    CHECK(read(window, 2).total == 5);
    CHECK(read(window, 2).events == 0);
    CHECK(read(window, 1).total == 0);  // bucket 0 is gone, bucket 2 is in the future
}

TEST_CASE("an idle gap longer than the window reads empty", "[window]") {
    OwnedWindow window(60);
    for (int k = 0; k < 60; ++k) window.add(0, k, 1, 1);
    CHECK(read(window, 59).total == 60);
    CHECK(read(window, 1'000'000).total == 0);
    window.add(0, 1'000'000, 0, 7);
    CHECK(read(window, 1'000'000).total == 7);
}

TEST_CASE("another generation is invisible", "[window]") {
    OwnedWindow window(4);
    window.add(0, 5, 2, 2);
    CHECK(read(window, 5, 1).total == 0);
    window.add(1, 5, 0, 3);
    CHECK(read(window, 5, 1).total == 3);
    CHECK(read(window, 5, 0).total == 0);
}

TEST_CASE("window specs are validated with the bad value named", "[window]") {
    using driftgate::validate_windows;
    CHECK_NOTHROW(validate_windows(driftgate::default_windows()));
    CHECK_THROWS_WITH(validate_windows({}), Catch::Contains("at least one"));
    CHECK_THROWS_WITH(validate_windows({{"bad name", 1, 1.0}}), Catch::Contains("'bad name'"));
    CHECK_THROWS_WITH(validate_windows({{"a", 0, 1.0}}), Catch::Contains("buckets=0"));
    CHECK_THROWS_WITH(validate_windows({{"a", 1, -2.0}}), Catch::Contains("step_seconds=-2"));
    CHECK_THROWS_WITH(validate_windows({{"a", 1, 1.0}, {"a", 2, 1.0}}),
                      Catch::Contains("duplicate"));
}

TEST_CASE("default windows are 5m, 15m and 60m of 60 buckets", "[window]") {
    const auto windows = driftgate::default_windows();
    REQUIRE(windows.size() == 3);
    CHECK(windows[0].name == "5m");
    CHECK(windows[0].span_seconds() == 300.0);
    CHECK(windows[1].span_seconds() == 900.0);
    CHECK(windows[2].span_seconds() == 3600.0);
}

// -- Boundaries: each rule at its limit, on both sides ---------------------------------------

TEST_CASE("boundary: absurd clock readings share an edge bucket, real ones are exact",
          "[window][boundary]") {
    // A trillion seconds (31,700 years) still has its own bucket...
    CHECK(bucket_index(1e12, 1.0) == 1'000'000'000'000);
    CHECK(bucket_index(-1e12, 1.0) == -1'000'000'000'000);
    // ...while readings far past any clock clamp to one edge bucket each, never wrapping
    CHECK(bucket_index(1e15, 1.0) == bucket_index(1e300, 1.0));
    CHECK(bucket_index(1e15, 1.0) > bucket_index(1e12, 1.0));
    CHECK(bucket_index(std::numeric_limits<double>::quiet_NaN(), 1.0) == bucket_index(1e300, 1.0));
    CHECK(bucket_index(-1e15, 1.0) == bucket_index(-1e300, 1.0));
    CHECK(bucket_index(-1e15, 1.0) < bucket_index(-1e12, 1.0));
}

TEST_CASE("boundary: a ring counts its own buckets, not the next ring's in the block",
          "[window][boundary]") {
    // PolicyWindows lays a policy's rings back to back: a read ends at its ring's last slot.
    auto block = std::make_unique<driftgate::BucketSlot[]>(6);
    RollingWindow first(block.get(), 3);
    RollingWindow second(block.get() + 3, 3);
    for (std::int64_t k = 10; k < 13; ++k) second.add(0, k, 1, 1);  // every slot of the second
    CHECK(read(second, 12).total == 3);
    CHECK(read(first, 12).total == 0);
    first.add(0, 12, 1, 5);
    CHECK(read(first, 12).total == 5);
    CHECK(read(second, 12).total == 3);
}

TEST_CASE("boundary: a window name is 1 to 32 characters of [A-Za-z0-9_]", "[window][boundary]") {
    auto valid = [](const std::string& name) {
        try {
            driftgate::validate_windows({{name, 1, 1.0}});
            return true;
        } catch (const std::invalid_argument&) {
            return false;
        }
    };
    CHECK(valid("a"));
    CHECK(valid(std::string(32, 'w')));
    CHECK_FALSE(valid(""));
    CHECK_FALSE(valid(std::string(33, 'w')));
    // the ends of each range, and the characters just outside them
    CHECK(valid("azAZ09_"));
    for (const char* outside : {"`", "{", "@", "[", "/", ":", "-", " "}) {
        CHECK_FALSE(valid(std::string("w") + outside));
    }
}

TEST_CASE("boundary: a window has 1 to 100000 buckets of a finite step above 0",
          "[window][boundary]") {
    auto valid = [](std::uint32_t buckets, double step) {
        try {
            driftgate::validate_windows({{"w", buckets, step}});
            return true;
        } catch (const std::invalid_argument&) {
            return false;
        }
    };
    CHECK(valid(1, 1.0));
    CHECK(valid(100000, 1.0));
    CHECK_FALSE(valid(0, 1.0));
    CHECK_FALSE(valid(100001, 1.0));
    CHECK(valid(1, std::nextafter(0.0, 1.0)));
    CHECK_FALSE(valid(1, 0.0));
    CHECK_FALSE(valid(1, -1.0));
    CHECK_FALSE(valid(1, std::numeric_limits<double>::infinity()));
    CHECK_FALSE(valid(1, std::numeric_limits<double>::quiet_NaN()));
}

TEST_CASE("boundary: an empty window's ratio is 0, one request makes it events / total",
          "[window][boundary]") {
    CHECK(WindowCounts{0, 0}.ratio() == 0.0);
    CHECK(WindowCounts{0, 1}.ratio() == 0.0);
    CHECK(WindowCounts{1, 1}.ratio() == 1.0);
    CHECK(WindowCounts{1, 4}.ratio() == 0.25);
}

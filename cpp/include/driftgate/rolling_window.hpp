#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace driftgate {

/// A named rolling window of `buckets` buckets, each `step_seconds` long.
struct WindowSpec {
    std::string name;
    std::uint32_t buckets = 0;
    double step_seconds = 0.0;

    double span_seconds() const { return buckets * step_seconds; }
};

/// "5m" = 60 x 5 s, "15m" = 60 x 15 s, "60m" = 60 x 60 s.
std::vector<WindowSpec> default_windows();

/// Throws std::invalid_argument naming the first bad spec: an empty list, a name that is not
/// 1-32 characters of [A-Za-z0-9_], a duplicate name, buckets outside 1..100000, or a step that
/// is not a finite number of seconds > 0.
void validate_windows(const std::vector<WindowSpec>& windows);

/// Events among requests in one window.
struct WindowCounts {
    std::uint64_t events = 0;
    std::uint64_t total = 0;

    /// events / total; 0.0 for an empty window.
    double ratio() const {
        return total == 0 ? 0.0 : static_cast<double>(events) / static_cast<double>(total);
    }

    WindowCounts& operator+=(const WindowCounts& other) {
        events += other.events;
        total += other.total;
        return *this;
    }
};

/// The bucket rule. Time t falls in bucket k(t) = floor(t / step); an event of bucket k
/// counts in a read at bucket u iff 0 <= u - k < buckets.
std::int64_t bucket_index(double seconds, double step_seconds) noexcept;

/// A ring of buckets tagged with their bucket index and a reset generation, so a stale bucket
/// is recognised on sight: an idle gap costs nothing, and a read costs O(buckets).
/// Single writer: exactly one thread at a time may call `add`; any thread may call `read`
/// concurrently with it (a seqlock per bucket keeps each bucket's pair consistent).
class RollingWindow {
  public:
    explicit RollingWindow(std::uint32_t buckets);

    /// Adds to bucket `bucket` of reset generation `generation`. A writer's (generation,
    /// bucket) pairs never go backwards, which the owning PolicyWindows guarantees.
    void add(std::uint32_t generation, std::int64_t bucket, std::uint64_t events,
             std::uint64_t total) noexcept;

    /// Adds to `out` what a read at bucket `now_bucket` of `generation` sees.
    void read_into(WindowCounts& out, std::uint32_t generation,
                   std::int64_t now_bucket) const noexcept;

  private:
    struct Slot {
        std::atomic<std::uint64_t> tag{0};
        std::atomic<std::uint64_t> events{0};
        std::atomic<std::uint64_t> total{0};
    };

    std::uint32_t buckets_;
    std::unique_ptr<Slot[]> slots_;
};

}  // namespace driftgate

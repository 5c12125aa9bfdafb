#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
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

/// One bucket of a ring: its tag (reset generation and bucket index) and its counts.
struct BucketSlot {
    std::atomic<std::uint64_t> tag{0};
    std::atomic<std::uint64_t> events{0};
    std::atomic<std::uint64_t> total{0};
};

/// A ring of buckets tagged with their bucket index and a reset generation, so a stale bucket
/// is recognised on sight: an idle gap costs nothing, and a read costs O(buckets). A view over
/// `buckets` slots that its owner allocates (PolicyWindows keeps all windows of a policy in one
/// block).
/// Single writer: exactly one thread at a time may call `add`; any thread may call `read_into`
/// concurrently with it (a seqlock per bucket keeps each bucket's pair consistent).
class RollingWindow {
  public:
    /// Where an add lands: the slot within the ring and the tag of (generation, bucket).
    /// Computing it costs a division, so writers compute it once per bucket and reuse it.
    struct Position {
        std::uint32_t slot = 0;
        std::uint64_t tag = 0;
    };

    RollingWindow(BucketSlot* slots, std::uint32_t buckets) : slots_(slots), buckets_(buckets) {}

    static Position position(std::uint32_t buckets, std::uint32_t generation, std::int64_t bucket);

    /// Adds to a position. A writer's (generation, bucket) pairs never go backwards, which the
    /// owning PolicyWindows guarantees.
    void add(Position at, std::uint64_t events, std::uint64_t total) noexcept {
        add(slots_[at.slot], at.tag, events, total);
    }
    void add(std::uint32_t generation, std::int64_t bucket, std::uint64_t events,
             std::uint64_t total) noexcept {
        add(position(buckets_, generation, bucket), events, total);
    }

    /// The write itself, for owners that address slots directly.
    static void add(BucketSlot& slot, std::uint64_t tag, std::uint64_t events,
                    std::uint64_t total) noexcept {
        // Only this thread writes the slot, so relaxed loads of its own stores are exact and the
        // read-modify-writes need no lock prefix. Every store is a release, so a reader that sees
        // a recycled count also sees the busy tag written before it and retries (a seqlock
        // without fences, which ThreadSanitizer models exactly).
        if (slot.tag.load(std::memory_order_relaxed) != tag) {
            slot.tag.store(tag | kBusy, std::memory_order_relaxed);
            slot.total.store(0, std::memory_order_release);
            slot.events.store(0, std::memory_order_release);
            slot.tag.store(tag, std::memory_order_release);
        }
        // total before events, so a reader that sees an event also sees its request.
        slot.total.store(slot.total.load(std::memory_order_relaxed) + total,
                         std::memory_order_release);
        if (events != 0) {  // most requests are no event: one store fewer
            slot.events.store(slot.events.load(std::memory_order_relaxed) + events,
                              std::memory_order_release);
        }
    }

    /// Adds to `out` what a read at bucket `now_bucket` of `generation` sees.
    void read_into(WindowCounts& out, std::uint32_t generation,
                   std::int64_t now_bucket) const noexcept;

    /// Raises `newest` to the newest bucket that a read at `now_bucket` of `generation` sees
    /// holding an event; leaves it as it is when no such bucket is newer.
    void newest_event_into(std::optional<std::int64_t>& newest, std::uint32_t generation,
                           std::int64_t now_bucket) const noexcept;

  private:
    /// Marks a bucket being recycled, so a reader retries instead of reading a half-cleared pair.
    static constexpr std::uint64_t kBusy = std::uint64_t{1} << 63;

    /// Calls visit(bucket, events, total) with a consistent pair of each bucket that a read at
    /// `now_bucket` of `generation` counts.
    template <typename Visit>
    void for_each_counted(std::uint32_t generation, std::int64_t now_bucket,
                          Visit&& visit) const noexcept;

    BucketSlot* slots_;
    std::uint32_t buckets_;
};

/// A writer's memo of the bucket its clock readings fall in, so the common case, a reading in
/// the same bucket as the last one, needs no division. Exact: a reading close enough to a
/// bucket edge for rounding to matter is always divided out.
class BucketCursor {
  public:
    explicit BucketCursor(double step_seconds) : step_(step_seconds) {}

    /// bucket_index(seconds, step_seconds).
    std::int64_t bucket_at(double seconds) noexcept {
        if ((seconds >= low_ && seconds < high_) || seconds == last_) return bucket_;
        last_ = seconds;
        bucket_ = bucket_index(seconds, step_);
        // Shrunk by far more than the rounding error of k * step, so inside it floor(t / step)
        // is certainly k.
        const double start = static_cast<double>(bucket_) * step_;
        const double margin = 1e-9 * (std::abs(start) + step_);
        low_ = start + margin;
        high_ = start + step_ - margin;
        return bucket_;
    }

    /// The range of readings known to fall in the current bucket; empty before the first one.
    double low() const noexcept { return low_; }
    double high() const noexcept { return high_; }

  private:
    double step_;
    double low_ = 0.0;
    double high_ = -1.0;                                      // empty until the first reading
    double last_ = std::numeric_limits<double>::quiet_NaN();  // equal to no reading
    std::int64_t bucket_ = 0;
};

}  // namespace driftgate

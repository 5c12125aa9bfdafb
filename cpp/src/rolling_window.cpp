#include "driftgate/rolling_window.hpp"

#include <cmath>
#include <stdexcept>
#include <thread>
#include <unordered_set>

#include "format.hpp"

namespace driftgate {

namespace {

// A bucket's tag packs (busy bit | 19-bit generation | 44-bit biased bucket index).
constexpr int kBucketBits = 44;
constexpr std::int64_t kBucketBias = std::int64_t{1} << (kBucketBits - 1);
constexpr std::int64_t kMaxBucket = kBucketBias - 1;
constexpr std::int64_t kMinBucket = -kBucketBias;
constexpr std::uint64_t kGenerationMask = (std::uint64_t{1} << 19) - 1;

constexpr std::uint64_t make_tag(std::uint32_t generation, std::int64_t bucket) {
    return ((generation & kGenerationMask) << kBucketBits) |
           static_cast<std::uint64_t>(bucket + kBucketBias);
}

constexpr std::uint32_t tag_generation(std::uint64_t tag) {
    return static_cast<std::uint32_t>((tag >> kBucketBits) & kGenerationMask);
}

constexpr std::int64_t tag_bucket(std::uint64_t tag) {
    return static_cast<std::int64_t>(tag & ((std::uint64_t{1} << kBucketBits) - 1)) - kBucketBias;
}

bool valid_window_name(const std::string& name) {
    if (name.empty() || name.size() > 32) return false;
    for (char c : name) {
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        if (!ok) return false;
    }
    return true;
}

}  // namespace

std::vector<WindowSpec> default_windows() {
    return {{"5m", 60, 5.0}, {"15m", 60, 15.0}, {"60m", 60, 60.0}};
}

void validate_windows(const std::vector<WindowSpec>& windows) {
    if (windows.empty()) throw std::invalid_argument("windows must name at least one window");
    std::unordered_set<std::string> seen;
    for (const auto& w : windows) {
        if (!valid_window_name(w.name)) {
            throw std::invalid_argument("invalid window name " + detail::quote(w.name) +
                                        ": expected 1-32 characters of [A-Za-z0-9_]");
        }
        if (!seen.insert(w.name).second) {
            throw std::invalid_argument("duplicate window name " + detail::quote(w.name));
        }
        if (w.buckets < 1 || w.buckets > 100000) {
            throw std::invalid_argument("window " + detail::quote(w.name) + " has buckets=" +
                                        std::to_string(w.buckets) + ": expected 1..100000");
        }
        if (!std::isfinite(w.step_seconds) || w.step_seconds <= 0) {
            throw std::invalid_argument("window " + detail::quote(w.name) + " has step_seconds=" +
                                        detail::format_number(w.step_seconds) +
                                        ": expected a finite number > 0");
        }
    }
}

std::int64_t bucket_index(double seconds, double step_seconds) noexcept {
    double k = std::floor(seconds / step_seconds);
    // Clamped, so absurd clock values share an edge bucket instead of wrapping the tag.
    if (!(k < static_cast<double>(kMaxBucket))) return kMaxBucket;
    if (k < static_cast<double>(kMinBucket)) return kMinBucket;
    return static_cast<std::int64_t>(k);
}

RollingWindow::Position RollingWindow::position(std::uint32_t buckets, std::uint32_t generation,
                                                std::int64_t bucket) {
    return {static_cast<std::uint32_t>(static_cast<std::uint64_t>(bucket - kMinBucket) % buckets),
            make_tag(generation, bucket)};
}

template <typename Visit>
void RollingWindow::for_each_counted(std::uint32_t generation, std::int64_t now_bucket,
                                     Visit&& visit) const noexcept {
    const std::uint32_t wanted_generation = generation & kGenerationMask;
    for (std::uint32_t i = 0; i < buckets_; ++i) {
        const BucketSlot& slot = slots_[i];
        for (;;) {
            const std::uint64_t before = slot.tag.load(std::memory_order_acquire);
            if (before & kBusy) {
                std::this_thread::yield();
                continue;
            }
            const std::uint64_t events = slot.events.load(std::memory_order_acquire);
            const std::uint64_t total = slot.total.load(std::memory_order_acquire);
            if (slot.tag.load(std::memory_order_relaxed) != before) continue;
            const std::int64_t bucket = tag_bucket(before);
            const std::int64_t age = now_bucket - bucket;
            if (tag_generation(before) == wanted_generation && age >= 0 && age < buckets_) {
                visit(bucket, events, total);
            }
            break;
        }
    }
}

void RollingWindow::read_into(WindowCounts& out, std::uint32_t generation,
                              std::int64_t now_bucket) const noexcept {
    for_each_counted(generation, now_bucket,
                     [&out](std::int64_t, std::uint64_t events, std::uint64_t total) {
                         out.events += events;
                         out.total += total;
                     });
}

void RollingWindow::newest_event_into(std::optional<std::int64_t>& newest, std::uint32_t generation,
                                      std::int64_t now_bucket) const noexcept {
    for_each_counted(generation, now_bucket,
                     [&newest](std::int64_t bucket, std::uint64_t events, std::uint64_t) {
                         if (events > 0 && (!newest || bucket > *newest)) newest = bucket;
                     });
}

}  // namespace driftgate

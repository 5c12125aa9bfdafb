#include "driftgate/clock.hpp"

#include <time.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "format.hpp"

namespace driftgate {

namespace {

double require_finite(double seconds, const char* what) {
    if (!std::isfinite(seconds)) {
        throw std::invalid_argument(std::string(what) +
                                    " must be a finite number of seconds, got " +
                                    detail::format_number(seconds));
    }
    return seconds;
}

template <typename ClockType>
double seconds_since_epoch() {
    using Seconds = std::chrono::duration<double>;
    return std::chrono::duration_cast<Seconds>(ClockType::now().time_since_epoch()).count();
}

}  // namespace

double SystemClock::now() const {
    // The coarse monotonic clock reads in a few nanoseconds instead of tens, at a resolution of
    // a few milliseconds: far finer than any window's bucket, and this sits on record()'s path.
    timespec ts{};
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0) {
        return seconds_since_epoch<std::chrono::steady_clock>();
    }
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double SystemClock::wall() const { return seconds_since_epoch<std::chrono::system_clock>(); }

std::shared_ptr<SystemClock> SystemClock::instance() {
    static const auto clock = std::make_shared<SystemClock>();
    return clock;
}

ManualClock::ManualClock(double start) : value_(require_finite(start, "ManualClock start")) {}

void ManualClock::advance(double seconds) {
    require_finite(seconds, "ManualClock.advance");
    if (seconds < 0) {
        throw std::invalid_argument("ManualClock.advance takes seconds >= 0, got " +
                                    detail::format_number(seconds) + " (use set() to move back)");
    }
    double current = value_.load(std::memory_order_relaxed);
    while (!value_.compare_exchange_weak(current, current + seconds, std::memory_order_acq_rel)) {
    }
}

void ManualClock::set(double seconds) {
    value_.store(require_finite(seconds, "ManualClock.set"), std::memory_order_release);
}

StoreClock::StoreClock(std::shared_ptr<Clock> base)
    : base_(std::move(base)),
      offset_(std::numeric_limits<double>::quiet_NaN()),
      observed_at_(std::numeric_limits<double>::quiet_NaN()) {
    if (!base_) throw std::invalid_argument("StoreClock needs a base clock, got None");
}

double StoreClock::wall() const {
    const double offset = offset_.load(std::memory_order_acquire);
    return std::isnan(offset) ? base_->wall() : base_->now() + offset;
}

void StoreClock::observe(double store_wall, double at) {
    require_finite(store_wall, "StoreClock.observe store_wall");
    require_finite(at, "StoreClock.observe at");
    observed_at_.store(at, std::memory_order_release);
    offset_.store(store_wall - at, std::memory_order_release);
}

std::optional<double> StoreClock::age() const {
    if (std::isnan(offset_.load(std::memory_order_acquire))) return std::nullopt;
    return base_->now() - observed_at_.load(std::memory_order_acquire);
}

std::optional<double> StoreClock::skew() const {
    const double offset = offset_.load(std::memory_order_acquire);
    if (std::isnan(offset)) return std::nullopt;
    return base_->wall() - (base_->now() + offset);
}

}  // namespace driftgate

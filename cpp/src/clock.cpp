#include "driftgate/clock.hpp"

#include <time.h>

#include <chrono>
#include <cmath>
#include <stdexcept>
#include <string>

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

}  // namespace driftgate

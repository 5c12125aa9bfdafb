#pragma once

#include <atomic>
#include <memory>
#include <optional>

namespace driftgate {

/// A source of time: `now()` is monotonic seconds for rolling windows, `wall()` is unix
/// seconds for durations and persisted timestamps.
/// Implementations are safe to call from any number of threads at once.
class Clock {
  public:
    virtual ~Clock() = default;
    virtual double now() const = 0;
    virtual double wall() const = 0;
};

/// The process clocks: CLOCK_MONOTONIC_COARSE for `now()` (a few milliseconds' resolution,
/// read in nanoseconds), system_clock for `wall()`.
/// Stateless, so thread-safe.
class SystemClock final : public Clock {
  public:
    double now() const override;
    double wall() const override;

    /// One shared instance, the default clock of every component.
    static std::shared_ptr<SystemClock> instance();
};

/// A clock that moves only when told to; `now()` and `wall()` both return its value.
/// Thread-safe: readers and movers may run concurrently.
class ManualClock final : public Clock {
  public:
    explicit ManualClock(double start = 0.0);

    double now() const override { return value_.load(std::memory_order_acquire); }
    double wall() const override { return now(); }

    /// Moves the clock forward; `seconds` must be finite and not negative.
    void advance(double seconds);
    /// Moves the clock to `seconds` (finite), backwards included.
    void set(double seconds);

  private:
    std::atomic<double> value_;
};

/// The wall time of a shared store, kept by this process. Each reading of the store's clock
/// (`observe`) is tied to the base clock's monotonic `now()`, and `wall()` is that reading plus
/// the monotonic time since: a step of this machine's wall clock between readings (a wrong
/// clock, an NTP correction) moves nothing, and only the monotonic clock's rate error (parts
/// per million) accrues until the next reading. `now()` is the base clock's.
/// Before the first reading `wall()` is the base's wall time and `age()` is empty: what may
/// rely on the store's time is for the caller to decide.
/// Thread-safe: readers and the one taking readings may run concurrently.
class StoreClock final : public Clock {
  public:
    /// `base` must not be null.
    explicit StoreClock(std::shared_ptr<Clock> base);

    double now() const override { return base_->now(); }
    double wall() const override;

    /// Records a reading: the store's wall time `store_wall` (unix seconds) as of the base's
    /// monotonic `at` (the middle of the round trip that read it). Both must be finite.
    void observe(double store_wall, double at);
    /// Seconds since the reading in force was taken, by the base's monotonic clock; empty
    /// before the first reading.
    std::optional<double> age() const;
    /// The base's wall time minus the store's, now (positive: this machine's wall clock is
    /// ahead of the store's); empty before the first reading.
    std::optional<double> skew() const;
    const std::shared_ptr<Clock>& base() const noexcept { return base_; }

  private:
    std::shared_ptr<Clock> base_;
    // The store's wall time minus the base's monotonic time; NaN before the first reading.
    // One atomic, so wall() never mixes two readings.
    std::atomic<double> offset_;
    std::atomic<double> observed_at_;
};

}  // namespace driftgate

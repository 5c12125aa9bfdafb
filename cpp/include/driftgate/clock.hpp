#pragma once

#include <atomic>
#include <memory>

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

}  // namespace driftgate

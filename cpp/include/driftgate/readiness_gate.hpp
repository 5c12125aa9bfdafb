#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "driftgate/drift_tracker.hpp"
#include "driftgate/metrics_registry.hpp"

namespace driftgate {

/// When readiness fails on drift: off by default, because a gate that closes on every replica
/// at once empties a Kubernetes Service.
struct GateConfig {
    bool enabled = false;
    std::string window = "5m";
    double max_ratio = 0.005;
    std::uint64_t min_requests = 100;
    std::optional<double> reopen_ratio;  // default: max_ratio
    std::optional<double> confidence;    // e.g. 0.95: decide on Wilson bounds

    /// Throws std::invalid_argument naming the bad field: ratios outside [0, 1], a reopen
    /// ratio above max_ratio, a confidence outside [0.5, 1).
    void validate() const;
};

/// Turns drift above the limit into "not ready", with hysteresis: once closed, it reopens only
/// at or below the reopen ratio, or once its window holds no drift at all, so a replica taken
/// out of traffic reopens one window length after its last drift at the latest. Exports
/// adapt_readiness_gate_open.
/// Thread-safe: a mutex guards the open/closed state.
class ReadinessGate {
  public:
    static constexpr std::string_view kReasonOk = "OK";
    static constexpr std::string_view kReasonDrift = "DRIFT_GATE";

    /// std::invalid_argument for a bad config or a window the tracker does not have.
    ReadinessGate(GateConfig config, std::shared_ptr<DriftTracker> tracker,
                  std::shared_ptr<MetricsRegistry> registry = nullptr);

    /// (true, "OK") or (false, "DRIFT_GATE").
    std::pair<bool, std::string_view> check();

    /// While closed: the seconds until the drift that keeps it closed has left its window,
    /// when it reopens with or without traffic. nullopt while open.
    std::optional<double> reopens_within() const;

    const GateConfig& config() const { return config_; }
    bool is_open() const;

  private:
    GateConfig config_;
    std::shared_ptr<DriftTracker> tracker_;
    std::shared_ptr<MetricsRegistry> registry_;
    prometheus::Gauge& open_gauge_;
    mutable std::mutex mutex_;
    bool open_ = true;
};

/// The stateless check of the seeds: closed while the window's ratio is above max_ratio (with
/// at least min_requests requests); no hysteresis, no confidence.
std::pair<bool, std::string_view> readiness_gate_ok(const GateConfig& config,
                                                    const DriftTracker& tracker);

}  // namespace driftgate

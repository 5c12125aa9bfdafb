#include "driftgate/readiness_gate.hpp"

#include <stdexcept>

#include "driftgate/statistics.hpp"
#include "format.hpp"

namespace driftgate {

namespace {

void require_ratio(double value, const char* field) {
    if (!(value >= 0.0 && value <= 1.0)) {
        throw std::invalid_argument(std::string(field) + "=" + detail::format_number(value) +
                                    ": expected a number in [0, 1]");
    }
}

}  // namespace

void GateConfig::validate() const {
    require_ratio(max_ratio, "max_ratio");
    if (reopen_ratio) {
        require_ratio(*reopen_ratio, "reopen_ratio");
        if (*reopen_ratio > max_ratio) {
            throw std::invalid_argument(
                "reopen_ratio=" + detail::format_number(*reopen_ratio) +
                " must not exceed max_ratio=" + detail::format_number(max_ratio));
        }
    }
    if (confidence) validate_confidence(*confidence);
}

ReadinessGate::ReadinessGate(GateConfig config, std::shared_ptr<DriftTracker> tracker,
                             std::shared_ptr<MetricsRegistry> registry)
    : config_(std::move(config)),
      tracker_(tracker ? std::move(tracker)
                       : throw std::invalid_argument("ReadinessGate needs a DriftTracker")),
      registry_(registry ? std::move(registry) : tracker_->registry()),
      open_gauge_(registry_->gauge(metrics::kReadinessGateOpen).Add({})) {
    config_.validate();
    tracker_->counts(config_.window);  // an unknown window fails here, naming the known ones
    open_gauge_.Set(1.0);
}

std::pair<bool, std::string_view> ReadinessGate::check() {
    if (!config_.enabled) {
        open_gauge_.Set(1.0);
        return {true, kReasonOk};
    }
    const WindowCounts counts = tracker_->counts(config_.window);
    const double ratio = counts.ratio();
    const double reopen = config_.reopen_ratio.value_or(config_.max_ratio);
    std::lock_guard lock(mutex_);
    if (counts.events == 0) {
        // The evidence is gone. A closed replica gets no traffic (a Service routes none to an
        // unready pod), so waiting for min_requests would keep it closed forever.
        open_ = true;
    } else if (counts.total < config_.min_requests) {
        // Too little traffic to judge either way: keep the last decision.
    } else if (config_.confidence) {
        const WilsonBounds bounds = wilson_bounds(counts.events, counts.total, *config_.confidence);
        if (open_ && bounds.lower > config_.max_ratio) open_ = false;
        if (!open_ && bounds.upper <= reopen) open_ = true;
    } else {
        if (open_ && ratio > config_.max_ratio) open_ = false;
        if (!open_ && ratio <= reopen) open_ = true;
    }
    open_gauge_.Set(open_ ? 1.0 : 0.0);
    return {open_, open_ ? kReasonOk : kReasonDrift};
}

std::optional<double> ReadinessGate::reopens_within() const {
    if (is_open()) return std::nullopt;
    // Closed with no drift left means the next check opens it.
    return tracker_->drift_leaves_in(config_.window).value_or(0.0);
}

bool ReadinessGate::is_open() const {
    std::lock_guard lock(mutex_);
    return open_;
}

std::pair<bool, std::string_view> readiness_gate_ok(const GateConfig& config,
                                                    const DriftTracker& tracker) {
    config.validate();
    if (!config.enabled) return {true, ReadinessGate::kReasonOk};
    const WindowCounts counts = tracker.counts(config.window);
    if (counts.total >= config.min_requests && counts.ratio() > config.max_ratio) {
        return {false, ReadinessGate::kReasonDrift};
    }
    return {true, ReadinessGate::kReasonOk};
}

}  // namespace driftgate

#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "driftgate/clock.hpp"
#include "driftgate/enforcer.hpp"
#include "driftgate/metrics_registry.hpp"
#include "driftgate/rollout_config.hpp"
#include "driftgate/rollout_state.hpp"

namespace driftgate {

/// Walks a staged rollout: advances after a stage's minimum time while the error rate is low,
/// rolls back by itself when it is high, waits for a human where a stage asks for approval,
/// and aborts to 0 % when rolled back from the first stage. Every transition sets the
/// enforcer's rollout percent, updates the guardian_rollout_* metrics and is persisted before
/// the call returns.
/// Thread-safe: one mutex serialises decisions and transitions.
class RolloutManager {
  public:
    struct Options {
        std::shared_ptr<Enforcer> enforcer;         // optional: whose percent to set
        std::shared_ptr<MetricsRegistry> registry;  // default: the enforcer's, else default
        std::optional<std::string> state_path;      // optional: where to persist
        std::shared_ptr<const Clock> clock;         // default: SystemClock; wall() is used
        std::uint64_t min_requests = 0;             // hold below this many requests
        std::optional<double> confidence;           // Wilson bounds for count-based rates
    };

    /// Everything a status report needs, read at one instant.
    struct Snapshot {
        std::vector<RolloutStage> stages;
        std::size_t stage_index = 0;
        double started_at = 0;
        double now = 0;
        RolloutState state = RolloutState::Active;
        std::uint64_t version = 0;
        double enforced_percentage = 0;
        std::optional<double> last_error_rate;
        std::vector<Transition> transitions;
        std::optional<std::string> state_path;
    };

    /// Resumes from the state file when there is one (StateError when it cannot be used; it is
    /// then left untouched); else starts fresh, stamping the first stage's start now.
    RolloutManager(RolloutConfig config, Options options);

    /// The synchronous decision on an error rate (and the requests behind it, when known).
    std::pair<bool, std::string> evaluate(double error_rate,
                                          std::optional<std::uint64_t> requests = std::nullopt);
    /// The same from (failed, total); with `confidence`, rollback needs the Wilson lower bound
    /// above the stage maximum and advance needs the upper bound at or below it.
    std::pair<bool, std::string> evaluate_counts(std::uint64_t failed, std::uint64_t total);

    /// A human's advance: resumes an aborted rollout at the first stage, else enters the next
    /// stage whether or not it needs approval.
    std::pair<bool, std::string> manual_advance(std::string_view actor = "manual");
    /// A human's rollback; from the first stage it aborts.
    std::pair<bool, std::string> manual_rollback(std::string_view actor = "manual",
                                                 std::string_view reason = "");

    /// Counts an evaluation skipped because the error-rate source failed.
    void record_analysis_error();

    Snapshot snapshot() const;
    double enforced_percentage() const;
    std::uint64_t min_requests() const { return options_.min_requests; }
    std::optional<double> confidence() const { return options_.confidence; }
    const std::shared_ptr<Enforcer>& enforcer() const { return options_.enforcer; }
    const std::shared_ptr<MetricsRegistry>& registry() const { return options_.registry; }

  private:
    struct Move {
        std::size_t stage_index;
        RolloutState state;
        std::string actor;
        std::string reason;
    };

    std::pair<bool, std::string> decide_locked(double error_rate, bool over_limit,
                                               std::optional<std::string> hold_reason);
    std::pair<bool, std::string> advance_locked(std::string_view actor, std::string reason);
    std::pair<bool, std::string> rollback_locked(std::string_view actor, std::string reason);
    /// Persists then applies a move; a move that lowers enforcement is applied even when the
    /// write fails (and the StateError still raised), one that raises it is not.
    void commit_locked(const Move& move);
    void publish_locked();
    /// Creates every transition counter this stage list can reach, at 0, so that increase()
    /// sees the first advance or rollback as a step from 0 rather than a new series.
    void declare_transition_counters();
    double percentage_of(std::size_t stage_index, RolloutState state) const;
    std::string position_name(std::size_t stage_index, RolloutState state) const;

    Options options_;
    mutable std::mutex mutex_;
    RolloutConfig config_;
    RolloutState state_ = RolloutState::Active;
    std::uint64_t version_ = 0;
    std::optional<double> last_error_rate_;
    std::vector<Transition> transitions_;
    std::optional<StateFile> state_file_;

    prometheus::Family<prometheus::Gauge>& stage_family_;
    prometheus::Family<prometheus::Gauge>& started_at_family_;
    prometheus::Gauge* stage_gauge_ = nullptr;
    prometheus::Gauge* started_at_gauge_ = nullptr;
    prometheus::Gauge& error_rate_gauge_;
    prometheus::Family<prometheus::Counter>& advancements_;
    prometheus::Family<prometheus::Counter>& rollbacks_;
    prometheus::Counter& analysis_errors_;
};

/// Throws std::invalid_argument unless `actor` is 1-64 characters of [A-Za-z0-9_.:-] (a role
/// or account name, never request data).
void validate_actor(std::string_view actor);

}  // namespace driftgate

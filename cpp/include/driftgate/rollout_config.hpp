#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace driftgate {

/// One stage of a staged rollout: the share enforced, the minimum time spent there, the error
/// rate above which it rolls back, and whether entering it needs a human.
struct RolloutStage {
    std::string name;
    double percentage = 0;        // of requests enforced, in [0, 100], 0.01 resolution
    double duration_seconds = 0;  // minimum time at this stage
    double max_error_rate = 0;    // in [0, 1]
    bool requires_approval = false;
};

/// Throws std::invalid_argument naming the first bad stage: an empty list, a name that is not
/// 1-64 characters of [A-Za-z0-9_.:-], a duplicate name, a percentage outside [0, 100] or not
/// above the previous stage's, a negative or non-finite duration, a rate outside [0, 1].
void validate_stages(const std::vector<RolloutStage>& stages);

/// A stable fingerprint of a stage list ("fnv1a64:" and 16 hex digits), so a state file
/// written for another list is recognised.
std::string stages_fingerprint(const std::vector<RolloutStage>& stages);

/// The stages of a rollout and where it stands. Times are unix seconds.
/// Not thread-safe; RolloutManager guards its own copy.
class RolloutConfig {
  public:
    explicit RolloutConfig(std::vector<RolloutStage> stages, std::size_t current_stage_index = 0,
                           std::optional<double> current_stage_started_at = std::nullopt,
                           bool rollback_on_error = true);

    /// canary 10% 24h 0.005; quarter 25% 24h 0.004 approval; half 50% 48h 0.003 approval;
    /// most 75% 24h 0.002; full 100% 0h 0.002 approval.
    static RolloutConfig default_config();

    const std::vector<RolloutStage>& stages() const { return stages_; }
    std::size_t current_stage_index() const { return index_; }
    const RolloutStage& current_stage() const { return stages_[index_]; }
    std::optional<double> current_stage_started_at() const { return started_at_; }
    bool rollback_on_error() const { return rollback_on_error_; }
    bool at_final_stage() const { return index_ + 1 >= stages_.size(); }

    void set_current_stage_index(std::size_t index);
    void set_current_stage_started_at(std::optional<double> started_at);

    /// Checks, in order: error rate above the stage maximum; minimum duration not met at
    /// `now` (skipped while the start is unknown); final stage; next stage needs approval
    /// (true, "... (requires approval)"); else (true, "Ready to advance to NAME").
    std::pair<bool, std::string> can_advance(double error_rate, double now) const;

    /// To the next stage, started at `now`; no-op at the final stage.
    void advance(double now);
    /// To the previous stage, started at `now`; no-op at the first stage.
    void rollback(double now);

  private:
    std::vector<RolloutStage> stages_;
    std::size_t index_;
    std::optional<double> started_at_;
    bool rollback_on_error_;
};

/// Throws std::invalid_argument unless `rate` is a number in [0, 1].
void validate_error_rate(double rate);

}  // namespace driftgate

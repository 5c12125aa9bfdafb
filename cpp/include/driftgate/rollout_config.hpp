#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "driftgate/clock.hpp"

namespace driftgate {

/// One stage of a staged rollout: the share enforced, the minimum time spent there, the error
/// rate above which it rolls back, and whether entering it needs a human.
struct RolloutStage {
    std::string name;
    double percentage = 0;        // of requests enforced, in [0, 100], 0.01 resolution
    double duration_seconds = 0;  // minimum time at this stage
    double max_error_rate = 0;    // in [0, 1]
    bool requires_approval = false;
    /// Distinct people who must approve entering this stage (more than 1 only with
    /// requires_approval): four eyes are 2.
    std::uint32_t approvals_required = 1;
};

/// The most approvals a stage may ask for.
inline constexpr std::uint32_t kMaxApprovals = 10;

/// The longest minimum duration a stage may ask for: ten years. Anything longer is a typo, and
/// every duration must stay printable as a Python timedelta.
inline constexpr double kMaxStageSeconds = 10 * 365 * 86400.0;

/// Throws std::invalid_argument naming the first bad stage: an empty list, a name that is not
/// 1-64 characters of [A-Za-z0-9_.:-], a duplicate name, a percentage outside [0, 100] or not
/// above the previous stage's, a duration that is negative, not finite or over ten years, a
/// rate outside [0, 1].
void validate_stages(const std::vector<RolloutStage>& stages);

/// A stable fingerprint of a stage list ("fnv1a64:" and 16 hex digits), so a state file
/// written for another list is recognised. A stage asking for one approval adds nothing to it,
/// so lists written before approvals could be counted keep their fingerprint.
std::string stages_fingerprint(const std::vector<RolloutStage>& stages);

/// Throws std::invalid_argument unless `rate` is a number in [0, 1].
void validate_error_rate(double rate);

/// Where a rollout stands: moving through its stages, aborted at 0 % after a rollback from the
/// first stage, or completed at the final stage.
enum class RolloutState { Active, Aborted, Completed };

std::string_view to_string(RolloutState state) noexcept;
std::optional<RolloutState> parse_rollout_state(std::string_view text) noexcept;

/// The position of a rollout in its plan. `started_at` (unix seconds) is unknown only for a
/// standalone config that was never given one.
struct RolloutPosition {
    std::size_t stage_index = 0;
    std::optional<double> started_at;
    RolloutState state = RolloutState::Active;
};

/// What the advance rules say about a position: the single home of those rules, used by a
/// standalone RolloutConfig and by RolloutManager alike.
struct AdvanceCheck {
    enum class Verdict {
        Aborted,
        ErrorRateExceeded,
        DurationNotMet,
        FinalStage,
        NeedsApproval,
        Ready
    };
    Verdict verdict;
    std::string reason;

    bool ready() const { return verdict == Verdict::NeedsApproval || verdict == Verdict::Ready; }
};

/// The stages of a rollout and whether a high error rate rolls it back: immutable once built,
/// so it is safe to share between threads. It knows every rule of moving between stages, but
/// not where a rollout stands.
class StagePlan {
  public:
    /// std::invalid_argument for a bad stage list (see validate_stages).
    explicit StagePlan(std::vector<RolloutStage> stages, bool rollback_on_error = true);

    /// canary 10% 24h 0.005; quarter 25% 24h 0.004 approval; half 50% 48h 0.003 approval;
    /// most 75% 24h 0.002; full 100% 0h 0.002 approval.
    static std::vector<RolloutStage> default_stages();

    const std::vector<RolloutStage>& stages() const { return stages_; }
    std::size_t size() const { return stages_.size(); }
    bool rollback_on_error() const { return rollback_on_error_; }
    const std::string& fingerprint() const { return fingerprint_; }
    const RolloutStage& stage(std::size_t index) const { return stages_.at(index); }
    bool is_final(std::size_t index) const { return index + 1 >= stages_.size(); }

    /// Whether the position's state is one the machine can reach at its stage: `completed` only
    /// at the final stage, `aborted` only at the first, `active` anywhere but the final one.
    bool reachable(std::size_t stage_index, RolloutState state) const;

    /// The share enforced at a position: 0 when aborted.
    double percentage(const RolloutPosition& position) const;
    /// The stage's name, or "aborted".
    std::string position_name(const RolloutPosition& position) const;

    /// Checks, in order: aborted (only a manual advance resumes); error rate above the stage
    /// maximum; minimum duration not met at `now` (skipped while the start is unknown); final
    /// stage; next stage needs approval; else ready.
    AdvanceCheck check_advance(const RolloutPosition& position, double error_rate,
                               double now) const;

    /// The next stage, started at `now` (completed when it is the final one); an aborted
    /// rollout resumes at the first stage. Unchanged at the final stage.
    RolloutPosition advanced(const RolloutPosition& position, double now) const;
    /// The previous stage, started at `now`; from the first stage, aborted.
    RolloutPosition rolled_back(const RolloutPosition& position, double now) const;
    /// The stage a manual advance from `position` enters (the first when aborted); nullopt at
    /// the final stage.
    std::optional<std::size_t> advance_target(const RolloutPosition& position) const;

  private:
    std::vector<RolloutStage> stages_;
    bool rollback_on_error_;
    std::string fingerprint_;
};

/// Raised when something tries to move a RolloutConfig that a RolloutManager owns: only the
/// manager moves its rollout. The message names the manager method to use instead.
class ConfigOwnedError : public std::logic_error {
  public:
    using std::logic_error::logic_error;
};

/// A stage plan and a position. On its own, a config moves itself (`advance`, `rollback`,
/// `can_advance` on its own clock). Handed to a RolloutManager, it becomes a live, read-only
/// view of the manager's position: it reads where the manager stands, and moving it throws
/// ConfigOwnedError. When the manager is gone it stands alone again at the last position.
/// Copies share one position (a config is a handle). Thread-safe.
class RolloutConfig {
  public:
    explicit RolloutConfig(std::vector<RolloutStage> stages, std::size_t current_stage_index = 0,
                           std::optional<double> current_stage_started_at = std::nullopt,
                           bool rollback_on_error = true,
                           std::shared_ptr<const Clock> clock = nullptr);

    static RolloutConfig default_config(std::shared_ptr<const Clock> clock = nullptr);

    const std::shared_ptr<const StagePlan>& plan() const { return plan_; }
    const std::vector<RolloutStage>& stages() const { return plan_->stages(); }
    bool rollback_on_error() const { return plan_->rollback_on_error(); }

    RolloutPosition position() const;
    std::size_t current_stage_index() const { return position().stage_index; }
    const RolloutStage& current_stage() const { return plan_->stage(current_stage_index()); }
    std::optional<double> current_stage_started_at() const { return position().started_at; }
    bool at_final_stage() const { return plan_->is_final(current_stage_index()); }
    /// True while a RolloutManager owns this config.
    bool owned() const;

    /// ConfigOwnedError while a manager owns the config; std::invalid_argument for a bad value.
    void set_current_stage_index(std::size_t index);
    void set_current_stage_started_at(std::optional<double> started_at);

    /// The advance rules (StagePlan::check_advance) at this position, at `now`.
    std::pair<bool, std::string> can_advance(double error_rate, double now) const;
    /// The same at the config's clock's wall time (the manager's clock while owned).
    std::pair<bool, std::string> can_advance(double error_rate) const;

    /// To the next stage, started at `now`; no-op at the final stage. ConfigOwnedError while
    /// owned.
    void advance(double now);
    void advance();
    /// To the previous stage, started at `now`; no-op at the first stage. ConfigOwnedError
    /// while owned.
    void rollback(double now);
    void rollback();

  private:
    friend class RolloutManager;

    /// The position a config and its owning manager share.
    struct Shared {
        mutable std::mutex mutex;
        RolloutPosition position;
        std::shared_ptr<const Clock> clock;
        bool owned = false;
    };

    RolloutConfig(std::shared_ptr<const StagePlan> plan, std::shared_ptr<Shared> shared)
        : plan_(std::move(plan)), shared_(std::move(shared)) {}

    /// ConfigOwnedError naming `manager_method` while a manager owns the position.
    void require_unowned_locked(std::string_view what, std::string_view manager_method) const;
    double wall_now() const;

    std::shared_ptr<const StagePlan> plan_;
    std::shared_ptr<Shared> shared_;
};

}  // namespace driftgate

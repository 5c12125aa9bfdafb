#include "driftgate/rollout_config.hpp"

#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <unordered_set>

#include "driftgate/enforcer.hpp"
#include "driftgate/policy_index.hpp"
#include "format.hpp"

namespace driftgate {

namespace {

constexpr double kHour = 3600.0;
constexpr std::string_view kAborted = "aborted";

std::invalid_argument stage_error(std::size_t i, const RolloutStage& stage,
                                  const std::string& problem) {
    return std::invalid_argument("stage " + std::to_string(i) + " " + detail::quote(stage.name) +
                                 ": " + problem);
}

}  // namespace

std::string_view to_string(RolloutState state) noexcept {
    switch (state) {
        case RolloutState::Active:
            return "active";
        case RolloutState::Aborted:
            return "aborted";
        case RolloutState::Completed:
            return "completed";
    }
    return "aborted";
}

std::optional<RolloutState> parse_rollout_state(std::string_view text) noexcept {
    if (text == "active") return RolloutState::Active;
    if (text == "aborted") return RolloutState::Aborted;
    if (text == "completed") return RolloutState::Completed;
    return std::nullopt;
}

void validate_error_rate(double rate) {
    if (!(rate >= 0.0 && rate <= 1.0)) {
        throw std::invalid_argument("error_rate=" + detail::format_number(rate) +
                                    ": expected a number in [0, 1]");
    }
}

void validate_stages(const std::vector<RolloutStage>& stages) {
    if (stages.empty()) throw std::invalid_argument("a rollout needs at least one stage");
    std::unordered_set<std::string> names;
    for (std::size_t i = 0; i < stages.size(); ++i) {
        const RolloutStage& stage = stages[i];
        if (!PolicyIndex::is_valid(stage.name) || stage.name == kAborted) {
            throw stage_error(i, stage,
                              "name must be 1-64 characters of [A-Za-z0-9_.:-], not 'aborted'");
        }
        if (!names.insert(stage.name).second) throw stage_error(i, stage, "duplicate name");
        try {
            EnforceOptions{true, stage.percentage, 0.0}.validate();
        } catch (const std::invalid_argument& error) {
            throw stage_error(i, stage, error.what());
        }
        if (i > 0 && !(stage.percentage > stages[i - 1].percentage)) {
            throw stage_error(i, stage,
                              "percentage=" + detail::format_number(stage.percentage) +
                                  " must be above the previous stage's " +
                                  detail::format_number(stages[i - 1].percentage));
        }
        if (!(stage.duration_seconds >= 0 && stage.duration_seconds <= kMaxStageSeconds)) {
            throw stage_error(i, stage,
                              "duration=" + detail::format_number(stage.duration_seconds) +
                                  "s: expected 0 to " + detail::format_number(kMaxStageSeconds) +
                                  " seconds (ten years)");
        }
        if (!(stage.max_error_rate >= 0.0 && stage.max_error_rate <= 1.0)) {
            throw stage_error(i, stage,
                              "max_error_rate=" + detail::format_number(stage.max_error_rate) +
                                  ": expected a number in [0, 1]");
        }
        if (stage.approvals_required < 1 || stage.approvals_required > kMaxApprovals) {
            throw stage_error(i, stage,
                              "approvals_required=" + std::to_string(stage.approvals_required) +
                                  ": expected 1 to " + std::to_string(kMaxApprovals));
        }
        if (stage.approvals_required > 1 && !stage.requires_approval) {
            throw stage_error(i, stage,
                              "approvals_required=" + std::to_string(stage.approvals_required) +
                                  " needs requires_approval: only people enter such a stage");
        }
    }
}

std::string stages_fingerprint(const std::vector<RolloutStage>& stages) {
    std::string canonical;
    for (const auto& stage : stages) {
        canonical += stage.name + '\x1f' + detail::format_number(stage.percentage) + '\x1f' +
                     detail::format_number(stage.duration_seconds) + '\x1f' +
                     detail::format_number(stage.max_error_rate) + '\x1f' +
                     (stage.requires_approval ? "1" : "0");
        if (stage.approvals_required != 1) {
            canonical += '\x1f' + std::to_string(stage.approvals_required);
        }
        canonical += '\x1e';
    }
    std::uint64_t hash = 0xcbf29ce484222325ULL;  // FNV-1a 64
    for (unsigned char c : canonical) {
        hash ^= c;
        hash *= 0x100000001b3ULL;
    }
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "fnv1a64:%016llx", static_cast<unsigned long long>(hash));
    return buffer;
}

// -- StagePlan ----------------------------------------------------------------------------

StagePlan::StagePlan(std::vector<RolloutStage> stages, bool rollback_on_error)
    : stages_(std::move(stages)), rollback_on_error_(rollback_on_error) {
    validate_stages(stages_);
    fingerprint_ = stages_fingerprint(stages_);
}

std::vector<RolloutStage> StagePlan::default_stages() {
    return {
        {"canary", 10, 24 * kHour, 0.005, false},
        {"quarter", 25, 24 * kHour, 0.004, true},
        {"half", 50, 48 * kHour, 0.003, true},
        {"most", 75, 24 * kHour, 0.002, false},
        {"full", 100, 0, 0.002, true},
    };
}

bool StagePlan::reachable(std::size_t stage_index, RolloutState state) const {
    if (stage_index >= stages_.size()) return false;
    switch (state) {
        case RolloutState::Completed:
            return is_final(stage_index);
        case RolloutState::Aborted:
            return stage_index == 0;
        case RolloutState::Active:
            return !is_final(stage_index);
    }
    return false;
}

double StagePlan::percentage(const RolloutPosition& position) const {
    return position.state == RolloutState::Aborted ? 0.0 : stage(position.stage_index).percentage;
}

std::string StagePlan::position_name(const RolloutPosition& position) const {
    return position.state == RolloutState::Aborted ? std::string(kAborted)
                                                   : stage(position.stage_index).name;
}

AdvanceCheck StagePlan::check_advance(const RolloutPosition& position, double error_rate,
                                      double now) const {
    validate_error_rate(error_rate);
    if (position.state == RolloutState::Aborted) {
        return {AdvanceCheck::Verdict::Aborted,
                "Rollout aborted at 0%: a manual advance resumes it"};
    }
    const RolloutStage& current = stage(position.stage_index);
    if (error_rate > current.max_error_rate) {
        return {AdvanceCheck::Verdict::ErrorRateExceeded,
                "Error rate " + detail::format_percent(error_rate) + " exceeds threshold " +
                    detail::format_percent(current.max_error_rate)};
    }
    if (position.started_at) {
        const double elapsed = now - *position.started_at;
        if (elapsed < current.duration_seconds) {
            return {AdvanceCheck::Verdict::DurationNotMet,
                    "Stage duration not met (remaining: " +
                        detail::format_duration(current.duration_seconds - elapsed) + ")"};
        }
    }
    if (is_final(position.stage_index)) {
        return {AdvanceCheck::Verdict::FinalStage, "Already at final stage"};
    }
    const RolloutStage& next = stages_[position.stage_index + 1];
    if (next.requires_approval) {
        return {AdvanceCheck::Verdict::NeedsApproval,
                "Ready to advance to " + next.name + " (requires approval)"};
    }
    return {AdvanceCheck::Verdict::Ready, "Ready to advance to " + next.name};
}

RolloutPosition StagePlan::advanced(const RolloutPosition& position, double now) const {
    if (position.state == RolloutState::Aborted) {
        return {0, now, is_final(0) ? RolloutState::Completed : RolloutState::Active};
    }
    if (is_final(position.stage_index)) return position;
    const std::size_t next = position.stage_index + 1;
    return {next, now, is_final(next) ? RolloutState::Completed : RolloutState::Active};
}

std::optional<std::size_t> StagePlan::advance_target(const RolloutPosition& position) const {
    if (position.state == RolloutState::Aborted) return 0;
    if (is_final(position.stage_index)) return std::nullopt;
    return position.stage_index + 1;
}

RolloutPosition StagePlan::rolled_back(const RolloutPosition& position, double now) const {
    if (position.stage_index == 0) return {0, now, RolloutState::Aborted};
    return {position.stage_index - 1, now, RolloutState::Active};
}

// -- RolloutConfig ------------------------------------------------------------------------

RolloutConfig::RolloutConfig(std::vector<RolloutStage> stages, std::size_t current_stage_index,
                             std::optional<double> current_stage_started_at, bool rollback_on_error,
                             std::shared_ptr<const Clock> clock)
    : plan_(std::make_shared<const StagePlan>(std::move(stages), rollback_on_error)),
      shared_(std::make_shared<Shared>()) {
    shared_->clock = clock ? std::move(clock) : SystemClock::instance();
    set_current_stage_index(current_stage_index);
    set_current_stage_started_at(current_stage_started_at);
}

RolloutConfig RolloutConfig::default_config(std::shared_ptr<const Clock> clock) {
    return RolloutConfig(StagePlan::default_stages(), 0, std::nullopt, true, std::move(clock));
}

RolloutPosition RolloutConfig::position() const {
    std::lock_guard lock(shared_->mutex);
    return shared_->position;
}

bool RolloutConfig::owned() const {
    std::lock_guard lock(shared_->mutex);
    return shared_->owned;
}

double RolloutConfig::wall_now() const {
    std::shared_ptr<const Clock> clock;
    {
        std::lock_guard lock(shared_->mutex);
        clock = shared_->clock;
    }
    return clock->wall();
}

void RolloutConfig::require_unowned_locked(std::string_view what,
                                           std::string_view manager_method) const {
    if (shared_->owned) {
        throw ConfigOwnedError(
            "this RolloutConfig belongs to a RolloutManager, which alone moves "
            "the rollout: cannot " +
            std::string(what) + "; use manager." + std::string(manager_method) + "() instead");
    }
}

void RolloutConfig::set_current_stage_index(std::size_t index) {
    if (index >= plan_->size()) {
        throw std::invalid_argument("current_stage_index=" + std::to_string(index) +
                                    ": expected 0.." + std::to_string(plan_->size() - 1));
    }
    std::lock_guard lock(shared_->mutex);
    require_unowned_locked("set current_stage_index", "manual_advance() or manual_rollback");
    shared_->position.stage_index = index;
    shared_->position.state =
        plan_->is_final(index) ? RolloutState::Completed : RolloutState::Active;
}

void RolloutConfig::set_current_stage_started_at(std::optional<double> started_at) {
    if (started_at && !std::isfinite(*started_at)) {
        throw std::invalid_argument("current_stage_started_at must be a finite time");
    }
    std::lock_guard lock(shared_->mutex);
    require_unowned_locked("set current_stage_started_at", "manual_advance() or manual_rollback");
    shared_->position.started_at = started_at;
}

std::pair<bool, std::string> RolloutConfig::can_advance(double error_rate, double now) const {
    AdvanceCheck check = plan_->check_advance(position(), error_rate, now);
    return {check.ready(), std::move(check.reason)};
}

std::pair<bool, std::string> RolloutConfig::can_advance(double error_rate) const {
    return can_advance(error_rate, wall_now());
}

void RolloutConfig::advance(double now) {
    std::lock_guard lock(shared_->mutex);
    require_unowned_locked("advance", "manual_advance");
    shared_->position = plan_->advanced(shared_->position, now);  // the final stage stays put
}

void RolloutConfig::advance() { advance(wall_now()); }

void RolloutConfig::rollback(double now) {
    std::lock_guard lock(shared_->mutex);
    require_unowned_locked("roll back", "manual_rollback");
    // A standalone config only steps between stages; aborting is the manager's business.
    if (shared_->position.stage_index == 0) return;
    shared_->position = plan_->rolled_back(shared_->position, now);
}

void RolloutConfig::rollback() { rollback(wall_now()); }

}  // namespace driftgate

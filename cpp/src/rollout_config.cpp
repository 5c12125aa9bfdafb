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

std::invalid_argument stage_error(std::size_t i, const RolloutStage& stage,
                                  const std::string& problem) {
    return std::invalid_argument("stage " + std::to_string(i) + " " + detail::quote(stage.name) +
                                 ": " + problem);
}

}  // namespace

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
        if (!PolicyIndex::is_valid(stage.name)) {
            throw stage_error(i, stage, "name must be 1-64 characters of [A-Za-z0-9_.:-]");
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
        if (!std::isfinite(stage.duration_seconds) || stage.duration_seconds < 0) {
            throw stage_error(i, stage,
                              "duration=" + detail::format_number(stage.duration_seconds) +
                                  "s: expected a finite duration >= 0");
        }
        if (!(stage.max_error_rate >= 0.0 && stage.max_error_rate <= 1.0)) {
            throw stage_error(i, stage,
                              "max_error_rate=" + detail::format_number(stage.max_error_rate) +
                                  ": expected a number in [0, 1]");
        }
    }
}

std::string stages_fingerprint(const std::vector<RolloutStage>& stages) {
    std::string canonical;
    for (const auto& stage : stages) {
        canonical += stage.name + '\x1f' + detail::format_number(stage.percentage) + '\x1f' +
                     detail::format_number(stage.duration_seconds) + '\x1f' +
                     detail::format_number(stage.max_error_rate) + '\x1f' +
                     (stage.requires_approval ? "1" : "0") + '\x1e';
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

RolloutConfig::RolloutConfig(std::vector<RolloutStage> stages, std::size_t current_stage_index,
                             std::optional<double> current_stage_started_at, bool rollback_on_error)
    : stages_(std::move(stages)), index_(0), rollback_on_error_(rollback_on_error) {
    validate_stages(stages_);
    set_current_stage_index(current_stage_index);
    set_current_stage_started_at(current_stage_started_at);
}

RolloutConfig RolloutConfig::default_config() {
    return RolloutConfig({
        {"canary", 10, 24 * kHour, 0.005, false},
        {"quarter", 25, 24 * kHour, 0.004, true},
        {"half", 50, 48 * kHour, 0.003, true},
        {"most", 75, 24 * kHour, 0.002, false},
        {"full", 100, 0, 0.002, true},
    });
}

void RolloutConfig::set_current_stage_index(std::size_t index) {
    if (index >= stages_.size()) {
        throw std::invalid_argument("current_stage_index=" + std::to_string(index) +
                                    ": expected 0.." + std::to_string(stages_.size() - 1));
    }
    index_ = index;
}

void RolloutConfig::set_current_stage_started_at(std::optional<double> started_at) {
    if (started_at && !std::isfinite(*started_at)) {
        throw std::invalid_argument("current_stage_started_at must be a finite time");
    }
    started_at_ = started_at;
}

std::pair<bool, std::string> RolloutConfig::can_advance(double error_rate, double now) const {
    validate_error_rate(error_rate);
    const RolloutStage& current = current_stage();
    if (error_rate > current.max_error_rate) {
        return {false, "Error rate " + detail::format_percent(error_rate) + " exceeds threshold " +
                           detail::format_percent(current.max_error_rate)};
    }
    if (started_at_) {
        const double elapsed = now - *started_at_;
        if (elapsed < current.duration_seconds) {
            return {false, "Stage duration not met (remaining: " +
                               detail::format_duration(current.duration_seconds - elapsed) + ")"};
        }
    }
    if (at_final_stage()) return {false, "Already at final stage"};
    const RolloutStage& next = stages_[index_ + 1];
    if (next.requires_approval) {
        return {true, "Ready to advance to " + next.name + " (requires approval)"};
    }
    return {true, "Ready to advance to " + next.name};
}

void RolloutConfig::advance(double now) {
    if (at_final_stage()) return;
    ++index_;
    started_at_ = now;
}

void RolloutConfig::rollback(double now) {
    if (index_ == 0) return;
    --index_;
    started_at_ = now;
}

}  // namespace driftgate

#include "driftgate/rollout_manager.hpp"

#include <stdexcept>
#include <string>

#include "driftgate/policy_index.hpp"
#include "driftgate/statistics.hpp"
#include "format.hpp"

namespace driftgate {

namespace {

constexpr std::string_view kAborted = "aborted";
constexpr std::size_t kMaxReasonLength = 200;

RolloutManager::Options with_defaults(RolloutManager::Options options) {
    if (!options.clock) options.clock = SystemClock::instance();
    if (!options.registry) {
        options.registry =
            options.enforcer ? options.enforcer->registry() : MetricsRegistry::default_registry();
    }
    if (options.confidence) validate_confidence(*options.confidence);
    return options;
}

/// Reasons land in the persisted history and the HTTP status: printable ASCII, bounded.
std::string clean_reason(std::string_view reason) {
    std::string out;
    for (char c : reason.substr(0, kMaxReasonLength)) out += (c >= 32 && c < 127) ? c : '?';
    return out;
}

std::string percent_text(double percentage) { return detail::format_number(percentage) + "%"; }

}  // namespace

void validate_actor(std::string_view actor) {
    if (!PolicyIndex::is_valid(actor)) {
        throw std::invalid_argument("invalid actor " + detail::quote(actor) +
                                    ": expected 1-64 characters of [A-Za-z0-9_.:-]");
    }
}

RolloutManager::RolloutManager(RolloutConfig config, Options options)
    : options_(with_defaults(std::move(options))),
      config_(std::move(config)),
      stage_family_(options_.registry->gauge(metrics::kRolloutStage)),
      started_at_family_(options_.registry->gauge(metrics::kRolloutStageStartedAt)),
      error_rate_gauge_(options_.registry->gauge(metrics::kRolloutErrorRate).Add({})),
      advancements_(options_.registry->counter(metrics::kRolloutAdvancements)),
      rollbacks_(options_.registry->counter(metrics::kRolloutRollbacks)),
      analysis_errors_(options_.registry->counter(metrics::kRolloutAnalysisErrors).Add({})) {
    declare_transition_counters();
    std::lock_guard lock(mutex_);
    if (options_.state_path) state_file_.emplace(*options_.state_path, config_.stages());
    const std::optional<PersistedRollout> saved = state_file_ ? state_file_->load() : std::nullopt;
    if (saved) {
        config_.set_current_stage_index(saved->stage_index);
        config_.set_current_stage_started_at(saved->started_at);
        state_ = saved->state;
        version_ = saved->version;
        transitions_ = saved->transitions;
    } else {
        // A fresh rollout: its first stage's minimum duration counts from now.
        if (!config_.current_stage_started_at()) {
            config_.set_current_stage_started_at(options_.clock->wall());
        }
        state_ = config_.at_final_stage() ? RolloutState::Completed : RolloutState::Active;
        const Move start{config_.current_stage_index(), state_, "system", "rollout started"};
        commit_locked(start);
        return;
    }
    publish_locked();
}

void RolloutManager::declare_transition_counters() {
    const auto& stages = config_.stages();
    for (std::size_t i = 0; i < stages.size(); ++i) {
        advancements_.Add({{"to_stage", stages[i].name}});
        const std::string to = i == 0 ? std::string(kAborted) : stages[i - 1].name;
        rollbacks_.Add({{"from_stage", stages[i].name}, {"to_stage", to}});
    }
}

double RolloutManager::percentage_of(std::size_t stage_index, RolloutState state) const {
    return state == RolloutState::Aborted ? 0.0 : config_.stages()[stage_index].percentage;
}

std::string RolloutManager::position_name(std::size_t stage_index, RolloutState state) const {
    return state == RolloutState::Aborted ? std::string(kAborted)
                                          : config_.stages()[stage_index].name;
}

void RolloutManager::commit_locked(const Move& move) {
    const double now = options_.clock->wall();
    const bool first = transitions_.empty() && version_ == 0;
    PersistedRollout next;
    next.stage_index = move.stage_index;
    next.state = move.state;
    next.started_at = now;
    if (first && config_.current_stage_started_at()) {
        next.started_at = *config_.current_stage_started_at();
    }
    next.version = version_ + 1;
    next.transitions = transitions_;
    next.transitions.push_back(
        {now, move.actor,
         first ? std::string() : position_name(config_.current_stage_index(), state_),
         position_name(move.stage_index, move.state), move.reason});
    if (next.transitions.size() > StateFile::kMaxTransitions) {
        next.transitions.erase(next.transitions.begin(),
                               next.transitions.end() - StateFile::kMaxTransitions);
    }

    auto apply = [&] {
        config_.set_current_stage_index(next.stage_index);
        config_.set_current_stage_started_at(next.started_at);
        state_ = next.state;
        version_ = next.version;
        transitions_ = std::move(next.transitions);
        publish_locked();
    };
    const bool lowers = percentage_of(move.stage_index, move.state) <
                        percentage_of(config_.current_stage_index(), state_);
    try {
        if (state_file_) state_file_->save(next);
    } catch (const StateError&) {
        // Fail closed: enforce less even when the disk refuses, never more.
        if (lowers) apply();
        throw;
    }
    apply();
}

void RolloutManager::publish_locked() {
    const double percentage = percentage_of(config_.current_stage_index(), state_);
    if (options_.enforcer) options_.enforcer->set_rollout_percent(percentage);
    const std::string name = position_name(config_.current_stage_index(), state_);
    // One series each: the old stage's is removed, so dashboards never see two current stages.
    if (stage_gauge_) stage_family_.Remove(stage_gauge_);
    if (started_at_gauge_) started_at_family_.Remove(started_at_gauge_);
    stage_gauge_ = &stage_family_.Add({{"stage_name", name}});
    stage_gauge_->Set(state_ == RolloutState::Aborted
                          ? -1.0
                          : static_cast<double>(config_.current_stage_index()));
    started_at_gauge_ = &started_at_family_.Add({{"stage_name", name}});
    started_at_gauge_->Set(config_.current_stage_started_at().value_or(0.0));
}

std::pair<bool, std::string> RolloutManager::advance_locked(std::string_view actor,
                                                            std::string reason) {
    const std::size_t next = config_.current_stage_index() + 1;
    const RolloutState state =
        next + 1 >= config_.stages().size() ? RolloutState::Completed : RolloutState::Active;
    commit_locked({next, state, std::string(actor), std::move(reason)});
    advancements_.Add({{"to_stage", config_.stages()[next].name}}).Increment();
    return {true, config_.stages()[next].name};
}

std::pair<bool, std::string> RolloutManager::rollback_locked(std::string_view actor,
                                                             std::string reason) {
    const std::size_t index = config_.current_stage_index();
    const std::string from = config_.current_stage().name;
    if (index == 0) {
        commit_locked({0, RolloutState::Aborted, std::string(actor), std::move(reason)});
        rollbacks_.Add({{"from_stage", from}, {"to_stage", std::string(kAborted)}}).Increment();
        return {true, "Rolled back from " + from + ": rollout aborted at 0%"};
    }
    commit_locked({index - 1, RolloutState::Active, std::string(actor), std::move(reason)});
    const std::string to = config_.current_stage().name;
    rollbacks_.Add({{"from_stage", from}, {"to_stage", to}}).Increment();
    return {true, "Rolled back from " + from + " to " + to};
}

std::pair<bool, std::string> RolloutManager::decide_locked(double error_rate, bool over_limit,
                                                           std::optional<std::string> hold_reason) {
    last_error_rate_ = error_rate;
    error_rate_gauge_.Set(error_rate);
    if (state_ == RolloutState::Aborted) {
        return {false, "Rollout aborted at 0%: a manual advance resumes it"};
    }
    const RolloutStage& stage = config_.current_stage();
    if (over_limit && config_.rollback_on_error()) {
        const std::string why = "error rate " + detail::format_percent(error_rate) +
                                " exceeds threshold " +
                                detail::format_percent(stage.max_error_rate);
        const auto [_, moved] = rollback_locked("auto", why);
        return {false, "Rolled back due to high error rate: " + detail::format_percent(error_rate) +
                           " (" + moved + ")"};
    }
    if (hold_reason) return {false, *hold_reason};
    const auto [ready, reason] = config_.can_advance(error_rate, options_.clock->wall());
    if (!ready) return {false, reason};
    const RolloutStage& next = config_.stages()[config_.current_stage_index() + 1];
    if (next.requires_approval) return {false, "Ready but requires approval: " + reason};
    advance_locked("auto", reason);
    return {true, "Advanced to stage " + next.name + " (" + percent_text(next.percentage) + ")"};
}

std::pair<bool, std::string> RolloutManager::evaluate(double error_rate,
                                                      std::optional<std::uint64_t> requests) {
    validate_error_rate(error_rate);
    std::lock_guard lock(mutex_);
    std::optional<std::string> hold;
    if (options_.min_requests > 0 && (!requests || *requests < options_.min_requests)) {
        hold = "Holding: insufficient data (" +
               (requests ? std::to_string(*requests) : std::string("unknown")) + " of " +
               std::to_string(options_.min_requests) + " requests)";
    }
    return decide_locked(error_rate, error_rate > config_.current_stage().max_error_rate, hold);
}

std::pair<bool, std::string> RolloutManager::evaluate_counts(std::uint64_t failed,
                                                             std::uint64_t total) {
    if (failed > total) {
        throw std::invalid_argument("failed=" + std::to_string(failed) +
                                    " exceeds total=" + std::to_string(total));
    }
    if (!options_.confidence) {
        const double rate =
            total == 0 ? 0.0 : static_cast<double>(failed) / static_cast<double>(total);
        return evaluate(rate, total);
    }
    std::lock_guard lock(mutex_);
    const double rate = total == 0 ? 0.0 : static_cast<double>(failed) / static_cast<double>(total);
    const double limit = config_.current_stage().max_error_rate;
    const WilsonBounds bounds = wilson_bounds(failed, total, *options_.confidence);
    std::optional<std::string> hold;
    if (total < options_.min_requests) {
        hold = "Holding: insufficient data (" + std::to_string(total) + " of " +
               std::to_string(options_.min_requests) + " requests)";
    } else if (bounds.upper > limit) {
        hold = "Holding: error rate upper bound " + detail::format_percent(bounds.upper) +
               " exceeds threshold " + detail::format_percent(limit) + " at confidence " +
               detail::format_number(*options_.confidence);
    }
    return decide_locked(rate, bounds.lower > limit, hold);
}

std::pair<bool, std::string> RolloutManager::manual_advance(std::string_view actor) {
    validate_actor(actor);
    std::lock_guard lock(mutex_);
    if (state_ == RolloutState::Aborted) {
        const RolloutStage& first = config_.stages().front();
        commit_locked(
            {0, config_.stages().size() == 1 ? RolloutState::Completed : RolloutState::Active,
             std::string(actor), "manual resume"});
        advancements_.Add({{"to_stage", first.name}}).Increment();
        return {true, "Resumed rollout at stage " + first.name + " (" +
                          percent_text(first.percentage) + ")"};
    }
    if (config_.at_final_stage()) return {false, "Already at final stage"};
    const auto [_, name] = advance_locked(actor, "manual advance");
    return {true, "Manually advanced to stage " + name};
}

std::pair<bool, std::string> RolloutManager::manual_rollback(std::string_view actor,
                                                             std::string_view reason) {
    validate_actor(actor);
    std::lock_guard lock(mutex_);
    if (state_ == RolloutState::Aborted) return {false, "Rollout already aborted"};
    return rollback_locked(actor, reason.empty() ? "manual rollback" : clean_reason(reason));
}

void RolloutManager::record_analysis_error() { analysis_errors_.Increment(); }

RolloutManager::Snapshot RolloutManager::snapshot() const {
    std::lock_guard lock(mutex_);
    Snapshot out;
    out.stages = config_.stages();
    out.stage_index = config_.current_stage_index();
    out.started_at = config_.current_stage_started_at().value_or(0.0);
    out.now = options_.clock->wall();
    out.state = state_;
    out.version = version_;
    out.enforced_percentage = percentage_of(config_.current_stage_index(), state_);
    out.last_error_rate = last_error_rate_;
    out.transitions = transitions_;
    out.state_path = options_.state_path;
    return out;
}

double RolloutManager::enforced_percentage() const {
    std::lock_guard lock(mutex_);
    return percentage_of(config_.current_stage_index(), state_);
}

}  // namespace driftgate

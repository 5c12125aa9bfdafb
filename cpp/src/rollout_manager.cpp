#include "driftgate/rollout_manager.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "driftgate/policy_index.hpp"
#include "driftgate/statistics.hpp"
#include "format.hpp"

namespace driftgate {

namespace {

RolloutManager::Options with_defaults(RolloutManager::Options options) {
    if (!options.clock) options.clock = SystemClock::instance();
    if (!options.registry) {
        options.registry =
            options.enforcer ? options.enforcer->registry() : MetricsRegistry::default_registry();
    }
    if (options.confidence) validate_confidence(*options.confidence);
    validate_rollout_name(options.rollout);
    return options;
}

std::string percent_text(double percentage) { return detail::format_number(percentage) + "%"; }

}  // namespace

std::string_view to_string(DecisionAction action) noexcept {
    switch (action) {
        case DecisionAction::Advanced:
            return "advanced";
        case DecisionAction::Resumed:
            return "resumed";
        case DecisionAction::RolledBack:
            return "rolled_back";
        case DecisionAction::Aborted:
            return "aborted";
        case DecisionAction::Held:
            return "held";
        case DecisionAction::WaitingForApproval:
            return "waiting_for_approval";
        case DecisionAction::InsufficientData:
            return "insufficient_data";
        case DecisionAction::AtFinalStage:
            return "at_final_stage";
        case DecisionAction::AlreadyAborted:
            return "already_aborted";
        case DecisionAction::AnalysisFailed:
            return "analysis_failed";
        case DecisionAction::Conflict:
            return "conflict";
        case DecisionAction::ApprovalRecorded:
            return "approval_recorded";
        case DecisionAction::AlreadyApproved:
            return "already_approved";
    }
    return "held";
}

std::string_view to_string(WaitingFor waiting_for) noexcept {
    switch (waiting_for) {
        case WaitingFor::Check:
            return "check";
        case WaitingFor::Approval:
            return "approval";
        case WaitingFor::Duration:
            return "duration";
        case WaitingFor::Data:
            return "data";
        case WaitingFor::ErrorRate:
            return "error_rate";
        case WaitingFor::Resume:
            return "resume";
        case WaitingFor::Nothing:
            return "nothing";
        case WaitingFor::Store:
            return "store";
    }
    return "check";
}

namespace {

Judgement insufficient_data(std::optional<std::uint64_t> requests, std::uint64_t needed) {
    return {DecisionAction::InsufficientData, WaitingFor::Data,
            "Holding: insufficient data (" +
                (requests ? std::to_string(*requests) : std::string("unknown")) + " of " +
                std::to_string(needed) + " requests)"};
}

}  // namespace

Judgement judge(const StagePlan& plan, const RolloutPosition& position,
                const std::optional<Evidence>& evidence, std::uint64_t min_requests,
                std::optional<double> confidence, double now) {
    if (position.state == RolloutState::Aborted) {
        return {DecisionAction::Held, WaitingFor::Resume,
                "Rollout aborted at 0%: a manual advance resumes it"};
    }
    const RolloutStage& stage = plan.stage(position.stage_index);
    if (!evidence && confidence && !plan.is_final(position.stage_index)) {
        // The bounds need counts: nothing can be said about the error rate before a reading.
        return {DecisionAction::InsufficientData, WaitingFor::Data,
                "Holding: no error rate read in this stage yet"};
    }
    const std::optional<std::uint64_t> requests =
        evidence ? evidence->requests : std::optional<std::uint64_t>();
    if (requests && *requests < min_requests) return insufficient_data(requests, min_requests);
    const double rate = evidence ? evidence->error_rate : 0.0;
    bool over = rate > stage.max_error_rate;
    std::optional<double> upper;
    if (evidence && confidence && evidence->failed && requests) {
        const WilsonBounds bounds = wilson_bounds(*evidence->failed, *requests, *confidence);
        over = bounds.lower > stage.max_error_rate;
        upper = bounds.upper;
    }
    if (over && plan.rollback_on_error()) {
        return {position.stage_index == 0 ? DecisionAction::Aborted : DecisionAction::RolledBack,
                WaitingFor::Check,
                "error rate " + detail::format_percent(rate) + " exceeds threshold " +
                    detail::format_percent(stage.max_error_rate)};
    }
    if (upper && *upper > stage.max_error_rate) {
        return {DecisionAction::Held, WaitingFor::ErrorRate,
                "Holding: error rate upper bound " + detail::format_percent(*upper) +
                    " exceeds threshold " + detail::format_percent(stage.max_error_rate) +
                    " at confidence " + detail::format_number(*confidence)};
    }
    if (min_requests > 0 && !requests) return insufficient_data(std::nullopt, min_requests);
    AdvanceCheck check = plan.check_advance(position, upper ? 0.0 : rate, now);
    switch (check.verdict) {
        case AdvanceCheck::Verdict::FinalStage:
            return {DecisionAction::AtFinalStage, WaitingFor::Nothing, std::move(check.reason)};
        case AdvanceCheck::Verdict::Aborted:  // handled above; kept for completeness
            return {DecisionAction::Held, WaitingFor::Resume, std::move(check.reason)};
        case AdvanceCheck::Verdict::ErrorRateExceeded:
            return {DecisionAction::Held, WaitingFor::ErrorRate, std::move(check.reason)};
        case AdvanceCheck::Verdict::DurationNotMet:
            return {DecisionAction::Held, WaitingFor::Duration, std::move(check.reason)};
        case AdvanceCheck::Verdict::NeedsApproval:
            return {DecisionAction::WaitingForApproval, WaitingFor::Approval,
                    "Ready but requires approval: " + check.reason};
        case AdvanceCheck::Verdict::Ready:
            break;
    }
    return {DecisionAction::Advanced, WaitingFor::Check, std::move(check.reason)};
}

Judgement RolloutManager::Snapshot::judgement_at(double at) const {
    if (!synced) {
        return {DecisionAction::Held, WaitingFor::Store,
                "Holding: the shared rollout state has not been read yet"};
    }
    if (!regressed.empty())
        return {DecisionAction::Held, WaitingFor::Store, "Holding: " + regressed};
    return judge(*plan, position, evidence, min_requests, confidence, at);
}

prometheus::Labels RolloutManager::labelled(prometheus::Labels labels) const {
    labels.emplace(metrics::kRolloutLabel, options_.rollout);
    return labels;
}

RolloutManager::RolloutManager(const RolloutConfig& config, Options options)
    : options_(with_defaults(std::move(options))),
      series_(options_.registry),
      plan_(config.plan_),
      view_(config.shared_) {
    if (options_.store && options_.state_path) {
        throw std::invalid_argument("give a RolloutManager a state_path or a store, not both");
    }
    RolloutPosition start;
    {
        // Checked and claimed in one step, so two managers starting at once cannot both own it.
        std::lock_guard lock(view_->mutex);
        if (view_->owned) {
            throw std::invalid_argument(
                "this RolloutConfig already belongs to a running RolloutManager; give each "
                "manager its own config");
        }
        view_->owned = true;
        start = view_->position;
    }
    auto release_config = [this] {
        std::lock_guard lock(view_->mutex);
        view_->owned = false;
    };
    try {
        if (options_.enforcer && options_.policies) {
            options_.enforcer->claim_share(options_.rollout, *options_.policies, options_.cohort);
        } else if (options_.enforcer) {
            options_.enforcer->claim_rollout_percent(options_.rollout);
        }
    } catch (...) {
        release_config();
        throw;
    }
    try {
        error_rate_gauge_ = &series_.gauge(metrics::kRolloutErrorRate, labelled());
        analysis_errors_ = &series_.counter(metrics::kRolloutAnalysisErrors, labelled());
        version_gauge_ = &series_.gauge(metrics::kStateVersion, labelled());
        declare_transition_counters();
        std::lock_guard lock(mutex_);
        if (options_.store) {
            store_up_gauge_ = &series_.gauge(metrics::kStateStoreUp, labelled());
            sync_age_gauge_ = &series_.gauge(metrics::kStateSyncAge, labelled());
            regressed_gauge_ = &series_.gauge(metrics::kStateStoreRegressed, labelled());
            start_shared_locked(start);
        } else if (options_.state_path) {
            state_file_.emplace(*options_.state_path, plan_);
            state_file_->remove_stale_temp_files();
        }
        const std::optional<PersistedRollout> saved =
            state_file_ ? state_file_->load() : std::nullopt;
        if (options_.store) {
            // Started above.
        } else if (saved) {
            adopt_locked(*saved);
        } else {
            persist_and_apply_locked(fresh_start(start), "system", "rollout started", true);
        }
    } catch (...) {
        release_enforcer();
        release_config();
        throw;
    }
    std::lock_guard lock(view_->mutex);
    view_clock_ = view_->clock;
    view_->clock = options_.clock;
}

RolloutManager::~RolloutManager() {
    // The config stands alone again, at the last position, on its own clock.
    {
        std::lock_guard lock(view_->mutex);
        view_->owned = false;
        view_->clock = view_clock_;
    }
    release_enforcer();
}

void RolloutManager::release_enforcer() {
    if (!options_.enforcer) return;
    if (options_.policies) {
        options_.enforcer->release_share(options_.rollout);
    } else {
        options_.enforcer->release_rollout_percent();
    }
}

RolloutPosition RolloutManager::fresh_start(RolloutPosition start) const {
    // A fresh rollout at the config's position; its minimum duration counts from now unless
    // the config says when the stage started.
    if (!start.started_at) start.started_at = wall_now();
    if (start.state != RolloutState::Aborted) {
        start.state =
            plan_->is_final(start.stage_index) ? RolloutState::Completed : RolloutState::Active;
    }
    return start;
}

void RolloutManager::start_shared_locked(RolloutPosition start) {
    try {
        const std::optional<std::string> stored = options_.store->load();
        if (stored) {
            adopt_locked(decode_stored(*stored));
            return;
        }
        synced_ = true;  // nothing stored: this replica stores the fresh rollout
        try {
            persist_and_apply_locked(fresh_start(start), "system", "rollout started", true);
        } catch (const CommitLost&) {
            // Another replica stored it first; persist_and_apply_locked followed it.
        }
    } catch (const StateError&) {
        // Unreachable, or holding something that is not this rollout: serve shadow only, and
        // refuse moves, until the state can be read (the store's follower keeps trying).
        synced_ = false;
        version_ = 0;
        unsynced_start_ = start;
        position_ = fresh_start(start);
        publish_locked();
    }
}

PersistedRollout RolloutManager::decode_stored(std::string_view document) const {
    return decode_rollout(document, *plan_, "the rollout state in " + options_.store->describe(),
                          "it is left untouched; point the store at another key or remove it");
}

void RolloutManager::adopt_locked(PersistedRollout saved) {
    const RolloutPosition next{saved.stage_index, saved.started_at, saved.state};
    if (next.stage_index != position_.stage_index || next.state != position_.state ||
        next.started_at != position_.started_at) {
        evidence_.reset();  // each stage is judged on its own requests
    }
    position_ = next;
    version_ = saved.version;
    transitions_ = std::move(saved.transitions);
    approvals_ = std::move(saved.approvals);
    // A state written before incarnations existed (a replica of an older release wrote it)
    // continues the one this replica holds: its next write carries it on.
    if (!saved.incarnation.empty()) {
        incarnation_ = std::move(saved.incarnation);
        restore_generation_ = saved.restore_generation;
    }
    synced_ = true;
    publish_locked();
}

bool RolloutManager::adopt_if_newer_locked(PersistedRollout saved) {
    if (!synced_) {
        forget_announced_locked();
        adopt_locked(std::move(saved));
        return true;
    }
    bool same = false;  // the state this replica holds
    std::string problem;
    if (saved.restore_generation > restore_generation_) {
        // Restored from an export: whatever this replica saw before, this is the state now.
    } else if (!saved.incarnation.empty() && !incarnation_.empty() &&
               saved.incarnation != incarnation_) {
        problem = "holds incarnation " + saved.incarnation + " at version " +
                  std::to_string(saved.version) + ", not incarnation " + incarnation_ +
                  " this replica has seen at version " + std::to_string(version_) +
                  " (the store lost the state, or another rollout wrote it)";
    } else if (saved.restore_generation < restore_generation_) {
        problem = "holds restore generation " + std::to_string(saved.restore_generation) +
                  ", older than generation " + std::to_string(restore_generation_) +
                  " this replica has seen";
    } else if (saved.version < version_) {
        problem = "holds version " + std::to_string(saved.version) + ", older than version " +
                  std::to_string(version_) +
                  " this replica has seen (the store lost its newest commits)";
    } else if (!continues_history(saved)) {
        // A failover lost this replica's newest step and others were committed in its place:
        // the same version number (or a later one) on another history.
        problem = "holds version " + std::to_string(saved.version) +
                  " on a history without the step this replica saw at version " +
                  std::to_string(version_) + " (the store lost it, and others moved since)";
    } else if (saved.version == version_) {
        same = true;
    }
    if (problem.empty()) problem = lost_announced_locked(saved);
    if (!problem.empty()) {
        note_regressed_locked("the rollout state in " + options_.store->describe() + " " + problem);
        return false;
    }
    clear_regressed_locked();  // when the state this replica saw is back, too
    if (same) return false;
    adopt_locked(std::move(saved));
    return true;
}

bool RolloutManager::continues_history(const PersistedRollout& saved) const {
    if (transitions_.empty()) return true;
    return holds_step(saved, version_, transitions_.back().op);
}

bool RolloutManager::holds_step(const PersistedRollout& saved, std::uint64_t version,
                                std::string_view operation) {
    if (operation.empty()) return true;  // nothing to tell
    // Every version adds one step: the step of `version` sits this far back.
    const std::uint64_t back = saved.version - version;
    if (back >= saved.transitions.size()) return true;  // no longer in the kept history
    const Transition& step = saved.transitions[saved.transitions.size() - 1 - back];
    return step.op.empty() || step.op == operation;
}

bool RolloutManager::note_announced(std::uint64_t version, std::string_view incarnation,
                                    std::uint64_t restore_generation, std::string_view operation) {
    std::lock_guard lock(mutex_);
    if (!synced_ || incarnation.empty() || incarnation != incarnation_ ||
        restore_generation != restore_generation_ || version <= version_ ||
        (announced_ && version <= announced_->version)) {
        return false;
    }
    announced_ =
        Announced{version, std::string(incarnation), restore_generation, std::string(operation)};
    publish_snapshot_locked();  // the follower's poll reads the store while one is pending
    return true;
}

void RolloutManager::forget_announced_locked() {
    if (!announced_) return;
    announced_.reset();
    publish_snapshot_locked();
}

std::string RolloutManager::lost_announced_locked(const PersistedRollout& saved) {
    if (!announced_) return {};
    const Announced& announced = *announced_;
    // A state without an incarnation (an older release wrote it) is of the lineage held, as
    // for adopting it; only another incarnation or a restore forgets the announcement.
    if ((!saved.incarnation.empty() && saved.incarnation != announced.incarnation) ||
        saved.restore_generation != announced.restore_generation) {
        forget_announced_locked();  // restored since: whatever was announced before, this is it
        return {};
    }
    if (saved.version < announced.version) {
        return "holds version " + std::to_string(saved.version) + ", older than version " +
               std::to_string(announced.version) +
               " whose commit it announced to this replica (the store lost its newest commits)";
    }
    if (!holds_step(saved, announced.version, announced.operation)) {
        return "holds version " + std::to_string(saved.version) +
               " on a history without the step it announced to this replica at version " +
               std::to_string(announced.version) + " (the store lost it, and others moved since)";
    }
    forget_announced_locked();
    return {};
}

void RolloutManager::note_regressed_locked(const std::string& problem) {
    if (regressed_ == problem) return;
    regressed_ = problem;
    if (regressed_gauge_ != nullptr) regressed_gauge_->Set(1.0);
    publish_snapshot_locked();
}

void RolloutManager::clear_regressed_locked() {
    if (regressed_.empty()) return;
    regressed_.clear();
    if (regressed_gauge_ != nullptr) regressed_gauge_->Set(0.0);
    publish_snapshot_locked();
}

std::string RolloutManager::regressed() const {
    std::lock_guard lock(mutex_);
    return regressed_;
}

void RolloutManager::refresh_locked() {
    const std::optional<std::string> stored = options_.store->load();
    if (!stored && !synced_) {
        // Started while the store was away, and nothing is stored now: like a first start,
        // this replica stores the fresh rollout unless another one is quicker.
        synced_ = true;
        try {
            persist_and_apply_locked(fresh_start(unsynced_start_), "system", "rollout started",
                                     true);
        } catch (const CommitLost&) {
            // persist_and_apply_locked followed the one stored first.
        } catch (...) {
            synced_ = false;
            throw;
        }
        return;
    }
    if (!stored) {
        note_regressed_locked("no rollout state is stored in " + options_.store->describe() +
                              " any more, though this replica has seen version " +
                              std::to_string(version_));
        throw StateRegressed(regressed_ +
                             "; nothing was changed (restore it with driftgate "
                             "state restore)");
    }
    adopt_if_newer_locked(decode_stored(*stored));
}

bool RolloutManager::follow(std::string_view document, std::optional<std::uint64_t> read_at) {
    if (!options_.store) throw std::logic_error("follow() needs a manager with a shared store");
    PersistedRollout saved = decode_stored(document);
    std::lock_guard lock(mutex_);
    if (synced_ && read_at && *read_at != version_) {
        // Read before this replica's own commit: older than what it holds now, and no sign of
        // a store going back. Only a newer state of the same lineage is taken.
        const bool lineage =
            saved.incarnation.empty() || incarnation_.empty() || saved.incarnation == incarnation_;
        if (!(lineage && saved.version > version_) &&
            saved.restore_generation <= restore_generation_) {
            return false;
        }
    }
    return adopt_if_newer_locked(std::move(saved));
}

std::uint64_t RolloutManager::refresh() {
    if (!options_.store) throw std::logic_error("refresh() needs a manager with a shared store");
    std::lock_guard lock(mutex_);
    refresh_locked();
    return version_;
}

bool RolloutManager::adopt_evidence(const RolloutPosition& at, const Evidence& evidence) {
    validate_error_rate(evidence.error_rate);
    if (evidence.failed && (!evidence.requests || *evidence.failed > *evidence.requests)) {
        throw std::invalid_argument("evidence of " + std::to_string(*evidence.failed) +
                                    " failed requests needs at least as many requests");
    }
    std::lock_guard lock(mutex_);
    if (!synced_ || evidence_ || at.stage_index != position_.stage_index ||
        at.state != position_.state || at.started_at != position_.started_at) {
        return false;
    }
    evidence_ = evidence;
    publish_snapshot_locked();
    return true;
}

void RolloutManager::note_store(bool up, double sync_age_seconds) {
    if (store_up_gauge_ == nullptr) return;
    store_up_gauge_->Set(up ? 1.0 : 0.0);
    sync_age_gauge_->Set(sync_age_seconds);
}

void RolloutManager::count_notification(std::string_view sink, std::string_view event,
                                        std::string_view outcome) {
    auto label = [](std::string_view value) {
        return std::string(PolicyIndex::is_valid(value) ? value : "other");
    };
    series_
        .counter(
            metrics::kNotifications,
            labelled({{"sink", label(sink)}, {"event", label(event)}, {"outcome", label(outcome)}}))
        .Increment();
}

bool RolloutManager::synced() const {
    std::lock_guard lock(mutex_);
    return synced_;
}

std::uint64_t RolloutManager::version() const {
    std::lock_guard lock(mutex_);
    return version_;
}

void RolloutManager::require_synced_locked() const {
    if (!synced_) {
        throw StateStoreError("the rollout state has not been read from " +
                              options_.store->describe() + " yet; nothing was changed");
    }
}

double RolloutManager::wall_now() const {
    const double now = options_.clock->wall();
    if (!(now >= 0 && now < StateFile::kEndOfTime)) {
        throw std::invalid_argument("the clock's wall time " + detail::format_number(now) +
                                    " is outside the years 1970 to 9999; nothing was changed");
    }
    return now;
}

void RolloutManager::declare_transition_counters() {
    const auto& stages = plan_->stages();
    for (std::size_t i = 0; i < stages.size(); ++i) {
        series_.counter(metrics::kRolloutAdvancements, labelled({{"to_stage", stages[i].name}}));
        const std::string to = i == 0 ? std::string("aborted") : stages[i - 1].name;
        series_.counter(metrics::kRolloutRollbacks,
                        labelled({{"from_stage", stages[i].name}, {"to_stage", to}}));
    }
}

void RolloutManager::persist_and_apply_locked(const RolloutPosition& next, std::string_view actor,
                                              std::string reason, bool first, Mover mover,
                                              std::vector<std::string> approvals,
                                              std::string_view operation) {
    if (options_.store) require_synced_locked();
    const double now = wall_now();
    PersistedRollout saved;
    saved.stage_index = next.stage_index;
    saved.state = next.state;
    saved.started_at = next.started_at.value_or(now);
    saved.version = version_ + 1;
    saved.approvals = std::move(approvals);
    // The first write of a state (or of one an older release wrote) chooses its incarnation.
    saved.incarnation = incarnation_.empty() ? random_id() : incarnation_;
    saved.restore_generation = restore_generation_;
    saved.transitions = transitions_;
    saved.transitions.push_back({now, std::string(actor),
                                 first ? std::string() : plan_->position_name(position_),
                                 plan_->position_name(next), std::move(reason),
                                 operation.empty() ? random_id() : std::string(operation)});
    if (saved.transitions.size() > StateFile::kMaxTransitions) {
        saved.transitions.erase(saved.transitions.begin(),
                                saved.transitions.end() - StateFile::kMaxTransitions);
    }
    // Refused here, before the store or the file sees it and before anything is applied (not
    // even a move that lowers enforcement): the next start would refuse what it wrote.
    check_writable(saved);

    // Called once, when the move is acknowledged (or lowers enforcement whatever the disk says).
    auto apply = [&] { adopt_locked(std::move(saved)); };
    if (options_.store) {
        // Committed only if nobody committed since this replica's version; nothing is applied
        // unless it committed (a fleet must not diverge, not even towards less enforcement).
        const auto result = options_.store->commit(saved.version, encode_rollout(saved, *plan_),
                                                   mover == Mover::Automatic);
        switch (result.status) {
            case SharedStateStore::CommitStatus::Committed:
                // Learnt by reading it back (the answer was lost): what is stored now holds
                // this move, and maybe others' after it.
                if (result.current) {
                    // Another replica's attempt of the same operation may be the one stored.
                    PersistedRollout stored = decode_stored(*result.current);
                    if (stored.version >= saved.version) {
                        adopt_if_newer_locked(std::move(stored));
                        return;
                    }
                }
                apply();
                return;
            case SharedStateStore::CommitStatus::Conflict:
                if (result.current) {
                    adopt_if_newer_locked(decode_stored(*result.current));
                } else {
                    refresh_locked();
                }
                throw CommitLost{false};
            case SharedStateStore::CommitStatus::Fenced:
                throw CommitLost{true};
        }
    }
    const bool lowers = !first && plan_->percentage(next) < plan_->percentage(position_);
    try {
        if (state_file_) state_file_->save(saved);
    } catch (const StateError& error) {
        // Fail closed: enforce less even when the disk refuses, never more.
        if (lowers) {
            apply();
        } else if (error.replaced() && !first) {
            // The unacknowledged state reached the file: put the acknowledged one back.
            PersistedRollout current{position_.stage_index, position_.started_at.value_or(now),
                                     position_.state,       version_,
                                     transitions_,          approvals_,
                                     incarnation_,          restore_generation_};
            try {
                state_file_->save(current);
            } catch (const StateError&) {
            }
        }
        throw;
    }
    apply();
}

void RolloutManager::transition_locked(const RolloutPosition& next, std::string_view actor,
                                       std::string reason, Mover mover,
                                       std::string_view operation) {
    const RolloutPosition before = position_;
    // A move that lowers enforcement is applied even when its write fails: count it then too.
    auto count_if_applied = [&] {
        if (position_.stage_index == before.stage_index && position_.state == before.state) {
            return;
        }
        const std::string from = plan_->stage(before.stage_index).name;
        const MetricName* counted = &metrics::kRolloutRollbacks;
        prometheus::Labels labels;
        if (next.state == RolloutState::Aborted) {
            labels = {{"from_stage", from}, {"to_stage", "aborted"}};
        } else if (before.state != RolloutState::Aborted && next.stage_index < before.stage_index) {
            labels = {{"from_stage", from}, {"to_stage", plan_->stage(next.stage_index).name}};
        } else {
            counted = &metrics::kRolloutAdvancements;
            labels = {{"to_stage", plan_->stage(next.stage_index).name}};
        }
        series_.counter(*counted, labelled(std::move(labels))).Increment();
    };
    try {
        persist_and_apply_locked(next, actor, std::move(reason), false, mover, {}, operation);
    } catch (const StateError&) {
        count_if_applied();
        throw;
    }
    count_if_applied();
}

void RolloutManager::publish_locked() {
    // Unsynced, a replica enforces nothing: it does not know where the fleet stands.
    const double percentage = synced_ ? plan_->percentage(position_) : 0.0;
    version_gauge_->Set(static_cast<double>(version_));
    if (options_.enforcer && options_.policies) {
        options_.enforcer->set_share_percent(options_.rollout, percentage);
    } else if (options_.enforcer) {
        options_.enforcer->set_rollout_percent(percentage);
    }
    {
        std::lock_guard lock(view_->mutex);
        view_->position = position_;
    }
    const std::string name = plan_->position_name(position_);
    // One series each: the old stage's is let go, so dashboards never see two current stages.
    prometheus::Labels labels = labelled({{"stage_name", name}});
    if (stage_labels_ && *stage_labels_ != labels) {
        series_.release_gauge(metrics::kRolloutStage, *stage_labels_);
        series_.release_gauge(metrics::kRolloutStageStartedAt, *stage_labels_);
    }
    series_.gauge(metrics::kRolloutStage, labels)
        .Set(position_.state == RolloutState::Aborted ? -1.0
                                                      : static_cast<double>(position_.stage_index));
    series_.gauge(metrics::kRolloutStageStartedAt, labels).Set(position_.started_at.value_or(0.0));
    stage_labels_ = std::move(labels);
    publish_snapshot_locked();
}

void RolloutManager::publish_snapshot_locked() {
    auto next = std::make_shared<Snapshot>();
    next->plan = plan_;
    next->position = position_;
    next->version = version_;
    next->enforced_percentage = synced_ ? plan_->percentage(position_) : 0.0;
    next->last_error_rate = last_error_rate_;
    next->evidence = evidence_;
    next->min_requests = options_.min_requests;
    next->confidence = options_.confidence;
    next->transitions = transitions_;
    next->state_path = options_.state_path;
    next->synced = synced_;
    next->approvals = approvals_;
    next->incarnation = incarnation_;
    next->restore_generation = restore_generation_;
    next->regressed = regressed_;
    next->announced = announced_ ? announced_->version : 0;
    next->publication = ++publications_;
    std::shared_ptr<const Snapshot> old;
    std::lock_guard lock(published_mutex_);
    old.swap(published_);
    published_ = std::move(next);
    // `old` is destroyed after the unlock: its transitions are freed outside the spin lock.
}

Decision RolloutManager::decision_locked(bool success, DecisionAction action, std::string message,
                                         const RolloutPosition& before,
                                         std::string_view actor) const {
    Decision out;
    out.success = success;
    out.message = std::move(message);
    out.action = action;
    out.from_stage = plan_->position_name(before);
    out.to_stage = plan_->position_name(position_);
    out.from_percentage = plan_->percentage(before);
    out.to_percentage = plan_->percentage(position_);
    out.version = version_;
    out.state = position_.state;
    out.error_rate = last_error_rate_;
    if (out.from_stage != out.to_stage) out.actor = actor;
    if ((out.moved() || action == DecisionAction::ApprovalRecorded) && !transitions_.empty()) {
        out.reason = transitions_.back().reason;
        out.operation = transitions_.back().op;
    }
    return out;
}

Decision RolloutManager::decide_locked(const Evidence& evidence,
                                       std::optional<std::uint64_t> read_at) {
    // A commit announced and not read: read it first, so that the move is judged from it (or
    // the replica finds the store lost it, and holds), never from the version before it.
    if (announced_ && options_.store) refresh_locked();
    if (read_at && *read_at != version_) {
        return decision_locked(false, DecisionAction::Conflict,
                               "Holding: the rollout moved to version " + std::to_string(version_) +
                                   " while its error rate was read at version " +
                                   std::to_string(*read_at) + "; that reading is not judged",
                               position_, "");
    }
    last_error_rate_ = evidence.error_rate;
    error_rate_gauge_->Set(evidence.error_rate);
    evidence_ = evidence;
    // Published on every way out, a failed write included: the status shows this reading.
    struct PublishOnExit {
        RolloutManager& manager;
        ~PublishOnExit() { manager.publish_snapshot_locked(); }
    } publish{*this};
    if (!synced_) {
        return decision_locked(false, DecisionAction::Held,
                               "Holding: the shared rollout state has not been read yet", position_,
                               "");
    }
    if (!regressed_.empty()) {
        return decision_locked(false, DecisionAction::Held, "Holding: " + regressed_, position_,
                               "");
    }
    try {
        return decide_moving_locked(evidence);
    } catch (const CommitLost& lost) {
        return conflict_locked(lost, std::nullopt);
    }
}

Decision RolloutManager::decide_moving_locked(const Evidence& evidence) {
    const RolloutPosition before = position_;
    const double now = wall_now();
    Judgement judgement =
        judge(*plan_, position_, evidence, options_.min_requests, options_.confidence, now);
    switch (judgement.action) {
        case DecisionAction::RolledBack:
        case DecisionAction::Aborted: {
            const RolloutStage& stage = plan_->stage(position_.stage_index);
            transition_locked(plan_->rolled_back(position_, now), "auto",
                              std::move(judgement.reason), Mover::Automatic);
            const bool aborted = position_.state == RolloutState::Aborted;
            const std::string moved =
                aborted ? "Rolled back from " + stage.name + ": rollout aborted at 0%"
                        : "Rolled back from " + stage.name + " to " +
                              plan_->stage(position_.stage_index).name;
            return decision_locked(
                false, aborted ? DecisionAction::Aborted : DecisionAction::RolledBack,
                "Rolled back due to high error rate: " +
                    detail::format_percent(evidence.error_rate) + " (" + moved + ")",
                before, "auto");
        }
        case DecisionAction::Advanced: {
            transition_locked(plan_->advanced(position_, now), "auto", std::move(judgement.reason),
                              Mover::Automatic);
            const RolloutStage& next = plan_->stage(position_.stage_index);
            return decision_locked(
                true, DecisionAction::Advanced,
                "Advanced to stage " + next.name + " (" + percent_text(next.percentage) + ")",
                before, "auto");
        }
        default:
            return decision_locked(false, judgement.action, std::move(judgement.reason), before,
                                   "");
    }
}

Decision RolloutManager::evaluate(double error_rate, std::optional<std::uint64_t> requests,
                                  std::optional<std::uint64_t> read_at) {
    validate_error_rate(error_rate);
    std::lock_guard lock(mutex_);
    return decide_locked(Evidence{error_rate, requests, std::nullopt}, read_at);
}

Decision RolloutManager::evaluate_counts(std::uint64_t failed, std::uint64_t total,
                                         std::optional<std::uint64_t> read_at) {
    if (failed > total) {
        throw std::invalid_argument("failed=" + std::to_string(failed) +
                                    " exceeds total=" + std::to_string(total));
    }
    const double rate = total == 0 ? 0.0 : static_cast<double>(failed) / static_cast<double>(total);
    std::lock_guard lock(mutex_);
    return decide_locked(Evidence{rate, total, failed}, read_at);
}

std::optional<Decision> RolloutManager::precondition_locked(
    std::optional<std::uint64_t> expected_version,
    const std::optional<std::string>& expected_incarnation) {
    if (options_.store) {
        require_synced_locked();
        // Restored meanwhile? Or the commit announced and not read: read it before moving.
        if (!regressed_.empty() || announced_) {
            refresh_locked();
            if (!regressed_.empty()) {
                throw StateRegressed(regressed_ +
                                     "; nothing was changed (restore it with "
                                     "driftgate state restore)");
            }
        }
    }
    auto holds = [&] {
        return *expected_version == version_ &&
               (!expected_incarnation || *expected_incarnation == incarnation_);
    };
    if (!expected_version || holds()) return std::nullopt;
    // This replica may not have heard of the newest version yet: ask the store first.
    if (options_.store) refresh_locked();
    if (holds()) return std::nullopt;
    return conflict_locked(CommitLost{}, expected_version);
}

namespace {

/// What a step of the history did, told from its two ends.
DecisionAction action_of(const StagePlan& plan, const Transition& step) {
    if (step.from == step.to) return DecisionAction::ApprovalRecorded;
    if (step.to == "aborted") return DecisionAction::Aborted;
    if (step.from == "aborted") return DecisionAction::Resumed;
    std::size_t from = 0;
    std::size_t to = 0;
    for (std::size_t i = 0; i < plan.size(); ++i) {
        if (plan.stage(i).name == step.from) from = i;
        if (plan.stage(i).name == step.to) to = i;
    }
    return to > from ? DecisionAction::Advanced : DecisionAction::RolledBack;
}

double percentage_of(const StagePlan& plan, const std::string& position) {
    for (const auto& stage : plan.stages()) {
        if (stage.name == position) return stage.percentage;
    }
    return 0.0;  // aborted
}

}  // namespace

std::optional<Decision> RolloutManager::replay_locked(std::string_view operation) const {
    if (operation.empty()) return std::nullopt;
    for (std::size_t i = transitions_.size(); i-- > 0;) {
        const Transition& step = transitions_[i];
        if (step.op != operation) continue;
        Decision out;
        out.success = true;
        out.replayed = true;
        out.action = action_of(*plan_, step);
        out.from_stage = step.from;
        out.to_stage = step.to;
        out.from_percentage = percentage_of(*plan_, step.from);
        out.to_percentage = percentage_of(*plan_, step.to);
        // Every version adds one step to the history: this one made version `version`.
        out.version = version_ - (transitions_.size() - 1 - i);
        out.state = step.to == "aborted"                              ? RolloutState::Aborted
                    : step.to == plan_->stage(plan_->size() - 1).name ? RolloutState::Completed
                                                                      : RolloutState::Active;
        out.error_rate = last_error_rate_;
        out.actor = step.actor;
        out.reason = step.reason;
        out.operation = step.op;
        out.message = "Already applied as version " + std::to_string(out.version) + " (operation " +
                      step.op + "): " + step.from + " -> " + step.to;
        return out;
    }
    return std::nullopt;
}

Decision RolloutManager::conflict_locked(const CommitLost& lost,
                                         std::optional<std::uint64_t> expected_version) const {
    std::string message;
    if (lost.fenced) {
        message = "Holding: this replica no longer holds the evaluation lease";
    } else if (expected_version && *expected_version != version_) {
        message = "Precondition failed: the rollout is at version " + std::to_string(version_) +
                  ", not " + std::to_string(*expected_version) + "; nothing was changed";
    } else {
        message = "Conflict: the rollout moved on to version " + std::to_string(version_) +
                  " meanwhile; nothing was changed";
    }
    return decision_locked(false, DecisionAction::Conflict, std::move(message), position_, "");
}

namespace {

/// How often a human's move without a precondition is decided again after losing its commit
/// to another replica.
constexpr int kMoveAttempts = 8;

}  // namespace

Decision RolloutManager::advance_locked(std::string_view actor, std::string_view person,
                                        std::string_view reason, std::string_view operation) {
    const RolloutPosition before = position_;
    const std::optional<std::size_t> target = plan_->advance_target(position_);
    if (!target) {
        return decision_locked(false, DecisionAction::AtFinalStage, "Already at final stage",
                               before, actor);
    }
    const RolloutStage& next = plan_->stage(*target);
    if (next.approvals_required > 1) {
        const std::string needs =
            "; it needs " + std::to_string(next.approvals_required) + " different people";
        if (person.empty()) {
            return decision_locked(false, DecisionAction::AlreadyApproved,
                                   std::string(actor) +
                                       " is not a person and never counts as an approval of " +
                                       next.name + needs,
                                   before, actor);
        }
        const std::string who(person);
        if (std::find(approvals_.begin(), approvals_.end(), who) != approvals_.end()) {
            return decision_locked(
                false, DecisionAction::AlreadyApproved,
                std::string(actor) + " already approved entering " + next.name + needs, before,
                actor);
        }
        std::vector<std::string> approvals = approvals_;
        approvals.push_back(who);
        if (approvals.size() < next.approvals_required) {
            const std::string count =
                std::to_string(approvals.size()) + " of " + std::to_string(next.approvals_required);
            // Recorded like a transition that stays put: versioned, in the history, shared.
            // Cleaned again: with the person's reason it may run past the length a state
            // file accepts.
            persist_and_apply_locked(
                position_, actor,
                clean_reason("approval " + count + " to enter " + next.name +
                             (reason.empty() ? std::string() : ": " + std::string(reason))),
                false, Mover::Human, std::move(approvals), operation);
            return decision_locked(true, DecisionAction::ApprovalRecorded,
                                   "Approval " + count + " to enter " + next.name + " recorded",
                                   before, actor);
        }
    }
    const bool resuming = position_.state == RolloutState::Aborted;
    transition_locked(plan_->advanced(position_, wall_now()), actor,
                      !reason.empty() ? std::string(reason)
                      : resuming      ? "manual resume"
                                      : "manual advance",
                      Mover::Human, operation);
    if (resuming) {
        return decision_locked(
            true, DecisionAction::Resumed,
            "Resumed rollout at stage " + next.name + " (" + percent_text(next.percentage) + ")",
            before, actor);
    }
    return decision_locked(true, DecisionAction::Advanced,
                           "Manually advanced to stage " + next.name, before, actor);
}

namespace {

void validate_operation(std::string_view operation) {
    if (!operation.empty() && !PolicyIndex::is_valid(operation)) {
        throw std::invalid_argument("invalid operation id " + detail::quote(operation) +
                                    ": expected 1-64 characters of [A-Za-z0-9_.:-]");
    }
}

}  // namespace

std::optional<Decision> RolloutManager::begin_move_locked(
    std::string_view operation, std::optional<std::uint64_t> expected_version,
    const std::optional<std::string>& expected_incarnation) {
    if (!operation.empty()) {
        // A retry may come to another replica than the first attempt: ask the store first.
        if (options_.store) {
            require_synced_locked();
            refresh_locked();
        }
        if (auto first = replay_locked(operation)) return first;
    }
    return precondition_locked(expected_version, expected_incarnation);
}

Decision RolloutManager::manual_advance(std::string_view actor, std::string_view reason,
                                        std::optional<std::uint64_t> expected_version,
                                        std::optional<std::string> expected_incarnation,
                                        std::string_view operation,
                                        std::optional<std::string> person) {
    validate_actor(actor);
    if (person && !person->empty()) validate_actor(*person);
    validate_operation(operation);
    const std::string why = reason.empty() ? std::string() : clean_reason(reason);
    // One id for every attempt, so a commit that landed unseen is found by the next one.
    const std::string op = operation.empty() ? random_id() : std::string(operation);
    for (int attempt = 1;; ++attempt) {
        std::lock_guard lock(mutex_);
        if (auto answered = begin_move_locked(attempt > 1 ? std::string_view(op) : operation,
                                              expected_version, expected_incarnation)) {
            return *answered;
        }
        try {
            return advance_locked(actor, person ? std::string_view(*person) : actor, why, op);
        } catch (const CommitLost& lost) {
            if (expected_version || attempt == kMoveAttempts) {
                return conflict_locked(lost, std::nullopt);
            }
        }
    }
}

Decision RolloutManager::manual_rollback(std::string_view actor, std::string_view reason,
                                         std::optional<std::uint64_t> expected_version,
                                         std::optional<std::string> expected_incarnation,
                                         std::string_view operation) {
    validate_actor(actor);
    validate_operation(operation);
    const std::string why = reason.empty() ? "manual rollback" : clean_reason(reason);
    const std::string op = operation.empty() ? random_id() : std::string(operation);
    for (int attempt = 1;; ++attempt) {
        std::lock_guard lock(mutex_);
        if (auto answered = begin_move_locked(attempt > 1 ? std::string_view(op) : operation,
                                              expected_version, expected_incarnation)) {
            return *answered;
        }
        const RolloutPosition before = position_;
        if (position_.state == RolloutState::Aborted) {
            return decision_locked(false, DecisionAction::AlreadyAborted, "Rollout already aborted",
                                   before, actor);
        }
        try {
            transition_locked(plan_->rolled_back(position_, wall_now()), actor, why, Mover::Human,
                              op);
        } catch (const CommitLost& lost) {
            if (expected_version || attempt == kMoveAttempts) {
                return conflict_locked(lost, std::nullopt);
            }
            continue;
        }
        const std::string from = plan_->stage(before.stage_index).name;
        if (position_.state == RolloutState::Aborted) {
            return decision_locked(true, DecisionAction::Aborted,
                                   "Rolled back from " + from + ": rollout aborted at 0%", before,
                                   actor);
        }
        return decision_locked(
            true, DecisionAction::RolledBack,
            "Rolled back from " + from + " to " + plan_->stage(position_.stage_index).name, before,
            actor);
    }
}

Decision RolloutManager::hold(std::string message, DecisionAction action) const {
    std::lock_guard lock(mutex_);
    return decision_locked(false, action, std::move(message), position_, "");
}

void RolloutManager::record_analysis_error() { analysis_errors_->Increment(); }

RolloutConfig RolloutManager::config() const { return RolloutConfig(plan_, view_); }

RolloutManager::Snapshot RolloutManager::snapshot() const {
    std::shared_ptr<const Snapshot> published;
    {
        std::lock_guard lock(published_mutex_);
        published = published_;
    }
    Snapshot out = *published;
    out.now = options_.clock->wall();
    return out;
}

RolloutManager::Moment RolloutManager::moment() const {
    std::shared_ptr<const Snapshot> published;
    {
        std::lock_guard lock(published_mutex_);
        published = published_;
    }
    Moment out;
    out.publication = published->publication;
    out.now = options_.clock->wall();
    out.started_at = published->position.started_at.value_or(out.now);
    out.judgement = published->judgement_at(out.now);
    return out;
}

std::uint64_t RolloutManager::min_requests() const {
    std::lock_guard lock(mutex_);
    return options_.min_requests;
}

void RolloutManager::set_min_requests(std::uint64_t min_requests) {
    std::lock_guard lock(mutex_);
    options_.min_requests = min_requests;
    publish_snapshot_locked();
}

double RolloutManager::enforced_percentage() const {
    std::lock_guard lock(mutex_);
    return synced_ ? plan_->percentage(position_) : 0.0;
}

}  // namespace driftgate

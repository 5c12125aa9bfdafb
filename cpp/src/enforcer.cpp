#include "driftgate/enforcer.hpp"

#include <chrono>
#include <cmath>
#include <stdexcept>
#include <string>

#include "driftgate/sampling.hpp"
#include "format.hpp"

namespace driftgate {

namespace {

constexpr std::uint32_t kEnforceBit = std::uint32_t{1} << 31;

const prometheus::Histogram::BucketBoundaries& latency_buckets() {
    static const prometheus::Histogram::BucketBoundaries buckets{
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
        0.01,    0.025,  0.05,    0.1,    0.25,  0.5,    1.0};
    return buckets;
}

}  // namespace

void EnforceOptions::validate() const {
    if (!std::isfinite(rollout_percent) || rollout_percent < 0 || rollout_percent > 100) {
        throw std::invalid_argument("rollout_percent=" + detail::format_number(rollout_percent) +
                                    ": expected a number in [0, 100]");
    }
    const double hundredths = rollout_percent * kBasisPointsPerPercent;
    if (std::fabs(hundredths - std::round(hundredths)) > 1e-6) {
        throw std::invalid_argument("rollout_percent=" + detail::format_number(rollout_percent) +
                                    ": expected a multiple of 0.01");
    }
    if (!std::isfinite(drift_max_ratio) || drift_max_ratio < 0 || drift_max_ratio > 1) {
        throw std::invalid_argument("drift_max_ratio=" + detail::format_number(drift_max_ratio) +
                                    ": expected a number in [0, 1]");
    }
}

std::uint32_t EnforceOptions::rollout_basis_points() const {
    return static_cast<std::uint32_t>(std::lround(rollout_percent * kBasisPointsPerPercent));
}

Enforcer::Enforcer(EnforceOptions options, std::shared_ptr<DriftTracker> tracker,
                   std::shared_ptr<MetricsRegistry> registry, std::uint32_t seed)
    : tracker_(tracker ? std::move(tracker)
                       : throw std::invalid_argument("Enforcer needs a DriftTracker")),
      registry_(registry ? std::move(registry) : tracker_->registry()),
      seed_(seed),
      options_((options.validate(), options)),
      cohort_(pack(options)),
      errors_(tracker_->windows(), tracker_->clock(), tracker_->index()->slot_count()),
      counters_({{&registry_->counter(metrics::kRequests), {{"mode", "shadow"}}},
                 {&registry_->counter(metrics::kRequests), {{"mode", "enforced"}}},
                 {&registry_->counter(metrics::kEvaluationErrors), {{"mode", "shadow"}}},
                 {&registry_->counter(metrics::kEvaluationErrors), {{"mode", "enforced"}}},
                 {&registry_->counter(metrics::kEnforcement), {}},
                 {&registry_->counter(metrics::kEnforcementFailed), {}}},
                tracker_->index()),
      latency_(registry_->histogram(metrics::kSelectionLatency).Add({}, latency_buckets())),
      rollout_percent_(registry_->gauge(metrics::kRolloutPercent).Add({})),
      drift_max_ratio_(registry_->gauge(metrics::kDriftMaxRatio).Add({})) {
    publish(options_);
}

std::uint32_t Enforcer::pack(const EnforceOptions& options) {
    return (options.enforce ? kEnforceBit : 0) | options.rollout_basis_points();
}

void Enforcer::publish(const EnforceOptions& options) {
    cohort_.store(pack(options), std::memory_order_release);
    // The gauge shows the share actually enforced: 0 while enforcement is off.
    rollout_percent_.Set(options.enforce ? options.rollout_percent : 0.0);
    // Alert rules compare the fleet's drift with this, so they follow the service's setting.
    drift_max_ratio_.Set(options.drift_max_ratio);
}

bool Enforcer::in_rollout(std::string_view key) const noexcept {
    const std::uint32_t cohort = cohort_.load(std::memory_order_acquire);
    if (!(cohort & kEnforceBit)) return false;
    return sampling_bucket(key, seed_) < (cohort & ~kEnforceBit);
}

Enforcer::Evaluated Enforcer::evaluate(const VerdictSource& source) {
    if (const auto* verdict = std::get_if<Verdict>(&source)) return {*verdict, false};
    const auto& evaluator = std::get<Evaluator>(source);
    const std::optional<Verdict> verdict = evaluator ? evaluator() : std::nullopt;
    return verdict ? Evaluated{*verdict, false} : Evaluated{Verdict::Fail, true};
}

VerdictPair Enforcer::decide(std::string_view policy_id, std::string_view key,
                             const VerdictSource& shadow, const VerdictSource& enforced) {
    const auto started = std::chrono::steady_clock::now();
    const std::uint32_t slot = tracker_->index()->slot_for(policy_id);  // validates the id

    VerdictPair pair;
    pair.in_rollout = in_rollout(key);
    const Evaluated shadow_result = evaluate(shadow);
    const Evaluated enforced_result = pair.in_rollout ? evaluate(enforced) : shadow_result;
    pair.shadow = shadow_result.verdict;
    pair.enforced = enforced_result.verdict;
    pair.drift = tracker_->record_slot(slot, pair.shadow, pair.enforced);

    // Shadow runs on every decision, so it counts every one; enforced counts the cohort's.
    const std::span<prometheus::Counter* const> counted = counters_.at(slot);
    counted[kShadowRequests]->Increment();
    if (shadow_result.failed) counted[kShadowErrors]->Increment();
    if (pair.in_rollout) {
        counted[kEnforcedRequests]->Increment();
        counted[kEnforcement]->Increment();
        errors_.add(slot, enforced_result.failed ? 1 : 0, 1);
        if (enforced_result.failed) {
            counted[kEnforcedErrors]->Increment();
            counted[kEnforcementFailed]->Increment();
        }
    }
    latency_.Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    return pair;
}

EnforceOptions Enforcer::options() const {
    std::lock_guard lock(options_mutex_);
    return options_;
}

void Enforcer::set_options(const EnforceOptions& options) {
    update_options(options.enforce, options.rollout_percent, options.drift_max_ratio);
}

void Enforcer::update_options(std::optional<bool> enforce, std::optional<double> rollout_percent,
                              std::optional<double> drift_max_ratio) {
    std::lock_guard lock(options_mutex_);
    EnforceOptions next = options_;
    if (enforce) next.enforce = *enforce;
    if (rollout_percent) next.rollout_percent = *rollout_percent;
    if (drift_max_ratio) next.drift_max_ratio = *drift_max_ratio;
    next.validate();
    if (percent_claimed_ && next.rollout_percent != options_.rollout_percent) {
        throw std::invalid_argument(
            "rollout_percent=" + detail::format_number(next.rollout_percent) +
            ": a RolloutManager sets this enforcer's rollout percent (now " +
            detail::format_number(options_.rollout_percent) +
            "); move the rollout with manual_advance() or manual_rollback() instead");
    }
    options_ = next;
    publish(options_);
}

void Enforcer::set_rollout_percent(double percent) {
    std::lock_guard lock(options_mutex_);
    EnforceOptions next = options_;
    next.rollout_percent = percent;
    next.validate();
    options_ = next;
    publish(options_);
}

void Enforcer::claim_rollout_percent() {
    std::lock_guard lock(options_mutex_);
    if (percent_claimed_) {
        throw std::invalid_argument(
            "this Enforcer's rollout percent is already set by another RolloutManager; give "
            "each manager its own enforcer");
    }
    percent_claimed_ = true;
}

void Enforcer::release_rollout_percent() {
    std::lock_guard lock(options_mutex_);
    percent_claimed_ = false;
}

bool Enforcer::rollout_percent_claimed() const {
    std::lock_guard lock(options_mutex_);
    return percent_claimed_;
}

WindowCounts Enforcer::error_counts(std::string_view window,
                                    std::optional<std::string_view> policy_id) const {
    const std::size_t w = errors_.window_index(window);
    if (!policy_id) return errors_.counts(w);
    PolicyIndex::validate(*policy_id);
    const auto slot = tracker_->index()->find(*policy_id);
    if (slot) return errors_.counts(w, *slot);
    errors_.observe_now(w);
    return {};
}

WindowCounts Enforcer::lifetime_error_counts(std::optional<std::string_view> policy_id) const {
    if (policy_id) {
        PolicyIndex::validate(*policy_id);
        const auto slot = tracker_->index()->find(*policy_id);
        return slot ? errors_.lifetime(*slot) : WindowCounts{};
    }
    return errors_.lifetime();
}

}  // namespace driftgate

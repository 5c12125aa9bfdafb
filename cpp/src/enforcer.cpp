#include "driftgate/enforcer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>
#include <string>

#include "driftgate/sampling.hpp"
#include "format.hpp"

namespace driftgate {

namespace {

constexpr std::uint32_t kEnforceBit = std::uint32_t{1} << 31;
// A slot's share word: the cohort seed above bit 32, then this bit, then the basis points.
constexpr std::uint64_t kClaimedBit = std::uint64_t{1} << 31;
constexpr std::uint64_t kShareBasisPoints = (std::uint64_t{1} << 16) - 1;

std::uint64_t share_word(std::uint32_t seed, std::uint32_t basis_points) {
    return (static_cast<std::uint64_t>(seed) << 32) | kClaimedBit | basis_points;
}

std::string quoted_names(const std::vector<std::string>& names) {
    std::string out;
    for (const std::string& name : names) {
        if (!out.empty()) out += ", ";
        out += detail::quote(name);
    }
    return out;
}

const prometheus::Histogram::BucketBoundaries& latency_buckets() {
    static const prometheus::Histogram::BucketBoundaries buckets{
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
        0.01,    0.025,  0.05,    0.1,    0.25,  0.5,    1.0};
    return buckets;
}

}  // namespace

std::string_view to_string(Cohort cohort) noexcept {
    return cohort == Cohort::Shared ? "shared" : "independent";
}

Cohort parse_cohort(std::string_view text) {
    if (text == "independent") return Cohort::Independent;
    if (text == "shared") return Cohort::Shared;
    throw std::invalid_argument("cohort=" + detail::quote(text) +
                                ": expected 'independent' or 'shared'");
}

void validate_rollout_name(std::string_view rollout) {
    if (!PolicyIndex::is_valid(rollout)) {
        throw std::invalid_argument("invalid rollout name " + detail::quote(rollout) +
                                    ": expected 1-64 characters of [A-Za-z0-9_.:-]");
    }
}

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
      rollout_percent_(
          registry_->hold_gauge(metrics::kRolloutPercent, {{metrics::kRolloutLabel, ""}})),
      drift_max_ratio_(registry_->gauge(metrics::kDriftMaxRatio).Add({})) {
    const std::size_t slots = tracker_->index()->slot_count();
    slot_shares_ = std::make_unique<std::atomic<std::uint64_t>[]>(slots);
    for (std::size_t i = 0; i < slots; ++i) slot_shares_[i].store(0, std::memory_order_relaxed);
    publish(options_);
}

std::uint32_t Enforcer::pack(const EnforceOptions& options) {
    return (options.enforce ? kEnforceBit : 0) | options.rollout_basis_points();
}

void Enforcer::publish(const EnforceOptions& options) {
    cohort_.store(pack(options), std::memory_order_release);
    // The gauges show the share actually enforced: 0 while enforcement is off.
    rollout_percent_->Set(options.enforce ? options.rollout_percent : 0.0);
    for (const Share& share : shares_) publish_share(share);
    // Alert rules compare the fleet's drift with this, so they follow the service's setting.
    drift_max_ratio_.Set(options.drift_max_ratio);
}

void Enforcer::publish_share(const Share& share) {
    const std::uint64_t word = share_word(share.seed, share.basis_points);
    for (const std::uint32_t slot : share.slots) {
        slot_shares_[slot].store(word, std::memory_order_release);
    }
    share.gauge->Set(
        options_.enforce ? static_cast<double>(share.basis_points) / kBasisPointsPerPercent : 0.0);
}

void Enforcer::label_global(std::string_view rollout) {
    // Held first, then the old one let go: the exposition never lacks the global series.
    auto labelled = registry_->hold_gauge(metrics::kRolloutPercent,
                                          {{metrics::kRolloutLabel, std::string(rollout)}});
    labelled->Set(options_.enforce ? options_.rollout_percent : 0.0);
    rollout_percent_ = std::move(labelled);
}

bool Enforcer::in_rollout(std::string_view key) const noexcept {
    const std::uint32_t cohort = cohort_.load(std::memory_order_acquire);
    if (!(cohort & kEnforceBit)) return false;
    return sampling_bucket(key, seed_) < (cohort & ~kEnforceBit);
}

bool Enforcer::in_cohort(std::uint32_t slot, std::string_view key) const noexcept {
    // Two loads, and that is enough: what is written together is read together. The enforce
    // flag and the global percent share one word, since set_options may change both in one
    // step (a decision must never see enforce=true with the old 100 %). A share's word (seed
    // and percent) is written only by its rollout's manager, and never in one step with the
    // flag, so there is no pair of the two for a decision to see half of: whichever order
    // two independent writes land in, the answer is one a decision made a moment earlier or
    // later would give. The flag is read last, so a decision begun after the kill switch was
    // thrown sees it thrown, whatever the share says.
    const std::uint64_t share = slot_shares_[slot].load(std::memory_order_acquire);
    const std::uint32_t cohort = cohort_.load(std::memory_order_acquire);
    if (!(cohort & kEnforceBit)) return false;
    if (!(share & kClaimedBit)) return sampling_bucket(key, seed_) < (cohort & ~kEnforceBit);
    return sampling_bucket(key, static_cast<std::uint32_t>(share >> 32)) <
           (share & kShareBasisPoints);
}

bool Enforcer::in_rollout(std::string_view key, std::string_view policy_id) const {
    PolicyIndex::validate(policy_id);
    const auto slot = tracker_->index()->find(policy_id);
    // Not admitted: no share names it (shares admit their policies), so the global cohort.
    return slot ? in_cohort(*slot, key) : in_rollout(key);
}

double Enforcer::rollout_percent_of(std::string_view policy_id) const {
    PolicyIndex::validate(policy_id);
    const auto slot = tracker_->index()->find(policy_id);
    // Read as a decision reads them.
    const std::uint64_t share =
        slot ? slot_shares_[*slot].load(std::memory_order_acquire) : std::uint64_t{0};
    const std::uint32_t cohort = cohort_.load(std::memory_order_acquire);
    if (!(cohort & kEnforceBit)) return 0.0;
    const std::uint64_t basis_points =
        (share & kClaimedBit) ? (share & kShareBasisPoints) : (cohort & ~kEnforceBit);
    return static_cast<double>(basis_points) / kBasisPointsPerPercent;
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
    pair.in_rollout = in_cohort(slot, key);
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
    if (percent_owner_ && next.rollout_percent != options_.rollout_percent) {
        throw std::invalid_argument(
            "rollout_percent=" + detail::format_number(next.rollout_percent) +
            ": a RolloutManager (rollout " + detail::quote(*percent_owner_) +
            ") sets this enforcer's rollout percent (now " +
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

void Enforcer::claim_rollout_percent(std::string_view rollout) {
    validate_rollout_name(rollout);
    std::lock_guard lock(options_mutex_);
    if (percent_owner_) {
        throw std::invalid_argument(
            "this Enforcer's rollout percent is already set by another RolloutManager (rollout " +
            detail::quote(*percent_owner_) + "), so rollout " + detail::quote(rollout) +
            " cannot claim it; give each manager its own enforcer");
    }
    if (!shares_.empty()) {
        std::vector<std::string> holders;
        for (const Share& share : shares_) holders.push_back(share.rollout);
        throw std::invalid_argument(
            "rollout " + detail::quote(rollout) +
            " has no policies, so it would govern every policy of this Enforcer, but rollouts " +
            quoted_names(holders) +
            " hold policies of it; name the policies of every rollout of one enforcer, or give "
            "the rollout of every policy an enforcer of its own");
    }
    percent_owner_ = std::string(rollout);
    label_global(rollout);
}

void Enforcer::release_rollout_percent() {
    std::lock_guard lock(options_mutex_);
    if (!percent_owner_) return;
    percent_owner_.reset();
    label_global("");
}

bool Enforcer::rollout_percent_claimed() const {
    std::lock_guard lock(options_mutex_);
    return percent_owner_.has_value();
}

Enforcer::Share* Enforcer::share_locked(std::string_view rollout) {
    for (Share& share : shares_) {
        if (share.rollout == rollout) return &share;
    }
    return nullptr;
}

void Enforcer::claim_share(std::string_view rollout, const std::vector<std::string>& policies,
                           Cohort cohort) {
    validate_rollout_name(rollout);
    if (policies.empty()) {
        throw std::invalid_argument("rollout " + detail::quote(rollout) +
                                    " names no policies: expected at least one policy id (a "
                                    "rollout without policies governs every policy)");
    }
    for (std::size_t i = 0; i < policies.size(); ++i) {
        PolicyIndex::validate(policies[i]);  // "__overflow__" is refused where it is admitted
        for (std::size_t j = 0; j < i; ++j) {
            if (policies[j] == policies[i]) {
                throw std::invalid_argument("rollout " + detail::quote(rollout) + " names policy " +
                                            detail::quote(policies[i]) + " twice");
            }
        }
    }
    std::lock_guard lock(options_mutex_);
    if (percent_owner_) {
        throw std::invalid_argument(
            "rollout " + detail::quote(rollout) +
            " claims policies of an Enforcer whose every policy rollout " +
            detail::quote(*percent_owner_) +
            " governs (it has no policies); name the policies of every rollout of one enforcer, "
            "or give the rollout of every policy an enforcer of its own");
    }
    if (share_locked(rollout) != nullptr) {
        throw std::invalid_argument("rollout " + detail::quote(rollout) +
                                    " already holds a share of this Enforcer (a running "
                                    "RolloutManager of that name); give each rollout its own "
                                    "name");
    }
    for (const Share& share : shares_) {
        for (const std::string& policy : policies) {
            if (std::find(share.policies.begin(), share.policies.end(), policy) !=
                share.policies.end()) {
                throw std::invalid_argument(
                    "policy " + detail::quote(policy) + " already belongs to rollout " +
                    detail::quote(share.rollout) + ", so rollout " + detail::quote(rollout) +
                    " cannot claim it: a policy belongs to at most one rollout");
            }
        }
    }
    PolicyIndex& index = *tracker_->index();
    auto slots = index.admit_all(policies);
    if (!slots) {
        throw std::invalid_argument(
            "rollout " + detail::quote(rollout) +
            " names policies that do not fit in the tracker's max_policies=" +
            std::to_string(index.max_policies()) + " (" + std::to_string(index.admitted()) +
            " policies are known already); raise max_policies or name fewer policies");
    }
    Share share;
    share.rollout = std::string(rollout);
    share.policies = policies;
    share.slots = std::move(*slots);
    share.seed = cohort == Cohort::Shared ? seed_ : cohort_seed(rollout, seed_);
    share.gauge =
        registry_->hold_gauge(metrics::kRolloutPercent, {{metrics::kRolloutLabel, share.rollout}});
    shares_.push_back(std::move(share));
    publish_share(shares_.back());
}

void Enforcer::set_share_percent(std::string_view rollout, double percent) {
    EnforceOptions checked;
    checked.rollout_percent = percent;
    checked.validate();
    std::lock_guard lock(options_mutex_);
    Share* share = share_locked(rollout);
    if (share == nullptr) {
        throw std::invalid_argument("rollout " + detail::quote(rollout) +
                                    " holds no share of this Enforcer");
    }
    share->basis_points = checked.rollout_basis_points();
    publish_share(*share);
}

void Enforcer::release_share(std::string_view rollout) {
    std::lock_guard lock(options_mutex_);
    const auto found = std::find_if(shares_.begin(), shares_.end(),
                                    [&](const Share& share) { return share.rollout == rollout; });
    if (found == shares_.end()) return;
    // Back to the global percent.
    for (const std::uint32_t slot : found->slots) {
        slot_shares_[slot].store(0, std::memory_order_release);
    }
    shares_.erase(found);
}

std::optional<std::vector<std::string>> Enforcer::share_policies(std::string_view rollout) const {
    std::lock_guard lock(options_mutex_);
    for (const Share& share : shares_) {
        if (share.rollout == rollout) return share.policies;
    }
    return std::nullopt;
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

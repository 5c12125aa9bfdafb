#include "driftgate/enforcer.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

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

// adapt_selection_latency_seconds' upper bounds, in nanoseconds: a decision's time is counted
// in whole nanoseconds, so that sums of many are exact.
constexpr std::array<std::uint64_t, 14> kLatencyBoundsNs{
    50'000,     100'000,    250'000,    500'000,     1'000'000,   2'500'000,   5'000'000,
    10'000'000, 25'000'000, 50'000'000, 100'000'000, 250'000'000, 500'000'000, 1'000'000'000};
constexpr std::size_t kLatencyBuckets = kLatencyBoundsNs.size() + 1;  // the last is +Inf

const prometheus::Histogram::BucketBoundaries& latency_buckets() {
    static const prometheus::Histogram::BucketBoundaries buckets = [] {
        prometheus::Histogram::BucketBoundaries seconds;
        for (const std::uint64_t ns : kLatencyBoundsNs) {
            seconds.push_back(static_cast<double>(ns) * 1e-9);
        }
        return seconds;
    }();
    return buckets;
}

/// Adds to a count that only this thread writes: a plain load and store, no locked
/// instruction. The release lets a scrape that sees the count see what came before it.
inline void bump(std::atomic<std::uint64_t>& count, std::uint64_t by = 1) noexcept {
    count.store(count.load(std::memory_order_relaxed) + by, std::memory_order_release);
}

// A policy's counters, all created at 0 with its first published decision, in this order.
enum Counted : std::size_t {
    kShadowRequests,
    kEnforcedRequests,
    kShadowErrors,
    kEnforcedErrors,
    kEnforcement,
    kEnforcementFailed,
    kCounted
};

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

/// One thread's share of the decisions: per policy slot the shadow evaluations and how many of
/// them failed, and the latency histogram of its timed decisions. Only the thread holding the
/// shard writes it (ShardPool); a scrape reads it.
struct Enforcer::DecisionShard {
    // Slots in chunks allocated on a chunk's first decision, so memory follows use even with
    // tens of thousands of policy slots and a thread pool of shards.
    static constexpr std::size_t kChunkSlots = 64;
    struct Chunk {
        std::array<std::atomic<std::uint64_t>, 2 * kChunkSlots> cells{};  // shadow, failed
    };

    explicit DecisionShard(std::size_t slot_count)
        : chunks(std::make_unique<std::atomic<Chunk*>[]>((slot_count + kChunkSlots - 1) /
                                                         kChunkSlots)),
          chunk_count((slot_count + kChunkSlots - 1) / kChunkSlots) {}

    ~DecisionShard() {
        for (std::size_t i = 0; i < chunk_count; ++i) delete chunks[i].load();
    }

    DecisionShard(const DecisionShard&) = delete;
    DecisionShard& operator=(const DecisionShard&) = delete;

    void count(std::uint32_t slot, bool failed) {
        Chunk* chunk = chunks[slot / kChunkSlots].load(std::memory_order_relaxed);
        if (chunk == nullptr) {
            chunk = new Chunk();
            chunks[slot / kChunkSlots].store(chunk, std::memory_order_release);
        }
        std::atomic<std::uint64_t>* cells = &chunk->cells[2 * (slot % kChunkSlots)];
        bump(cells[0]);
        if (failed) bump(cells[1]);
    }

    /// Adds (shadow evaluations, failed ones) of every slot to `sums`, read while the owner
    /// may write; the chunks no decision reached are skipped whole.
    void add_counts_to(std::vector<std::pair<std::uint64_t, std::uint64_t>>& sums) const {
        for (std::size_t c = 0; c < chunk_count; ++c) {
            const Chunk* chunk = chunks[c].load(std::memory_order_acquire);
            if (chunk == nullptr) continue;
            const std::size_t first = c * kChunkSlots;
            const std::size_t end = std::min(sums.size(), first + kChunkSlots);
            for (std::size_t slot = first; slot < end; ++slot) {
                const std::size_t at = 2 * (slot - first);
                sums[slot].first += chunk->cells[at].load(std::memory_order_acquire);
                sums[slot].second += chunk->cells[at + 1].load(std::memory_order_acquire);
            }
        }
    }

    /// Whether a decision at `now` (the windows' clock) is one of the timed ones (kTimedEvery).
    bool take_turn(double now) noexcept {
        // Written so that a first decision (last_timed NaN) is timed.
        if (until_timed != 0 && now - last_timed < kTimedAfterSeconds) {
            --until_timed;
            return false;
        }
        until_timed = kTimedEvery - 1;
        last_timed = now;
        return true;
    }

    void observe(std::uint64_t ns) noexcept {
        std::size_t bucket = 0;
        while (bucket < kLatencyBoundsNs.size() && ns > kLatencyBoundsNs[bucket]) ++bucket;
        bump(latency_ns, ns);
        // Last, and a release: a scrape that sees the count sees its nanoseconds.
        bump(latency[bucket]);
    }

    /// This thread's shards of the tracker's windows and of the error windows, kept here so a
    /// decision looks up one shard, not three. Forgotten when another thread takes this shard.
    void handed_over() noexcept {
        tracker_windows = nullptr;
        error_windows = nullptr;
    }

    std::unique_ptr<std::atomic<Chunk*>[]> chunks;
    std::size_t chunk_count;
    PolicyWindows::Shard* tracker_windows = nullptr;
    PolicyWindows::Shard* error_windows = nullptr;
    std::array<std::atomic<std::uint64_t>, kLatencyBuckets> latency{};  // not cumulative
    std::atomic<std::uint64_t> latency_ns{0};
    std::uint32_t until_timed = 0;  // decisions to go before the next timed one
    double last_timed = std::numeric_limits<double>::quiet_NaN();  // when the last one was
};

/// Publishes the enforcer's counts into its prometheus-cpp counters and histogram just before
/// each scrape, from the threads' shards and the error windows' lifetime counts, so a decision
/// never writes a shared cache line. A policy's counters appear, all six at once, at the first
/// scrape after its first decision.
class Enforcer::DecisionExport final : public ScrapeHook {
  public:
    DecisionExport(std::shared_ptr<const ShardPool<DecisionShard>> decisions,
                   std::shared_ptr<const PolicyWindows> errors,
                   std::shared_ptr<const PolicyIndex> index, MetricsRegistry& registry)
        : decisions_(std::move(decisions)),
          errors_(std::move(errors)),
          counters_({{&registry.counter(metrics::kRequests), {{"mode", "shadow"}}},
                     {&registry.counter(metrics::kRequests), {{"mode", "enforced"}}},
                     {&registry.counter(metrics::kEvaluationErrors), {{"mode", "shadow"}}},
                     {&registry.counter(metrics::kEvaluationErrors), {{"mode", "enforced"}}},
                     {&registry.counter(metrics::kEnforcement), {}},
                     {&registry.counter(metrics::kEnforcementFailed), {}}},
                    index),
          latency_(registry.histogram(metrics::kSelectionLatency).Add({}, latency_buckets())),
          slot_count_(index->slot_count()),
          published_(slot_count_ * kCounted, 0) {}

    void before_scrape() override {
        std::lock_guard lock(mutex_);
        // The enforced side first: a decision counts its shadow side before its enforced one,
        // so counts read in this order never show more enforced decisions than shadow ones.
        const std::vector<WindowCounts> enforced = errors_->lifetimes();
        std::vector<std::pair<std::uint64_t, std::uint64_t>> shadow(slot_count_);
        std::array<std::uint64_t, kLatencyBuckets> latency{};
        std::uint64_t latency_ns = 0;
        decisions_->with_shards([&](auto shards) {
            for (const auto& shard : shards) {
                shard->add_counts_to(shadow);
                // The count before its nanoseconds (see observe).
                for (std::size_t b = 0; b < kLatencyBuckets; ++b) {
                    latency[b] += shard->latency[b].load(std::memory_order_acquire);
                }
                latency_ns += shard->latency_ns.load(std::memory_order_acquire);
            }
        });
        for (std::uint32_t slot = 0; slot < slot_count_; ++slot) {
            if (shadow[slot].first == 0) continue;  // never decided: no series yet
            const std::array<std::uint64_t, kCounted> now{
                shadow[slot].first,    enforced[slot].total, shadow[slot].second,
                enforced[slot].events, enforced[slot].total, enforced[slot].events};
            const std::span<prometheus::Counter* const> counters = counters_.at(slot);
            std::uint64_t* published = &published_[slot * kCounted];
            for (std::size_t k = 0; k < kCounted; ++k) {
                if (now[k] > published[k]) {
                    counters[k]->Increment(static_cast<double>(now[k] - published[k]));
                    published[k] = now[k];
                }
            }
        }
        std::vector<double> increments(kLatencyBuckets, 0.0);
        bool observed = false;
        for (std::size_t b = 0; b < kLatencyBuckets; ++b) {
            increments[b] = static_cast<double>(latency[b] - published_latency_[b]);
            observed = observed || latency[b] != published_latency_[b];
        }
        if (observed) {
            latency_.ObserveMultiple(increments,
                                     static_cast<double>(latency_ns - published_ns_) * 1e-9);
            published_latency_ = latency;
            published_ns_ = latency_ns;
        }
    }

  private:
    std::shared_ptr<const ShardPool<DecisionShard>> decisions_;
    std::shared_ptr<const PolicyWindows> errors_;
    SlotCounters counters_;
    prometheus::Histogram& latency_;
    std::size_t slot_count_;
    std::mutex mutex_;  // two scrapes at once publish each count once; guards the rest
    std::vector<std::uint64_t> published_;  // per slot, kCounted each
    std::array<std::uint64_t, kLatencyBuckets> published_latency_{};
    std::uint64_t published_ns_ = 0;
};

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
      errors_(std::make_shared<PolicyWindows>(tracker_->windows(), tracker_->clock(),
                                              tracker_->index()->slot_count())),
      decisions_(std::make_shared<ShardPool<DecisionShard>>()),
      export_(std::make_shared<DecisionExport>(decisions_, errors_, tracker_->index(), *registry_)),
      rollout_percent_(
          registry_->hold_gauge(metrics::kRolloutPercent, {{metrics::kRolloutLabel, ""}})),
      drift_max_ratio_(registry_->gauge(metrics::kDriftMaxRatio).Add({})) {
    registry_->add_scrape_hook(export_);
    const std::size_t slots = tracker_->index()->slot_count();
    slot_shares_ = std::make_unique<std::atomic<std::uint64_t>[]>(slots);
    for (std::size_t i = 0; i < slots; ++i) slot_shares_[i].store(0, std::memory_order_relaxed);
    publish(options_);
}

Enforcer::~Enforcer() {
    export_->before_scrape();  // decisions since the last scrape reach the registry
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
    const std::optional<Verdict> verdict = std::get<Evaluator>(source)();
    return verdict ? Evaluated{*verdict, false} : Evaluated{Verdict::Fail, true};
}

VerdictPair Enforcer::decide(std::string_view policy_id, std::string_view key,
                             const VerdictSource& shadow, const VerdictSource& enforced) {
    DecisionShard& shard = decisions_->local(
        [this] { return std::make_unique<DecisionShard>(tracker_->index()->slot_count()); });
    // One reading of the windows' clock for the tracker, the error windows and the sampling.
    const double now = tracker_->clock()->now();
    const bool timed = shard.take_turn(now);
    const auto started =
        timed ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    const std::uint32_t slot = tracker_->index()->slot_for(policy_id);  // validates the id

    VerdictPair pair;
    pair.in_rollout = in_cohort(slot, key);
    const Evaluated shadow_result = evaluate(shadow);
    const Evaluated enforced_result = pair.in_rollout ? evaluate(enforced) : shadow_result;
    pair.shadow = shadow_result.verdict;
    pair.enforced = enforced_result.verdict;

    if (shard.tracker_windows == nullptr) [[unlikely]] {
        shard.tracker_windows = &tracker_->local_shard();
        shard.error_windows = &errors_->local_shard();
    }
    pair.drift =
        tracker_->record_slot(*shard.tracker_windows, slot, pair.shadow, pair.enforced, now);
    // Shadow runs on every decision, so it counts every one; the enforced cohort's decisions
    // are the error windows' lifetime counts. Shadow first (see DecisionExport).
    shard.count(slot, shadow_result.failed);
    if (pair.in_rollout) {
        errors_->add(*shard.error_windows, slot, enforced_result.failed ? 1 : 0, 1, now);
    }
    if (timed) {
        shard.observe(
            static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                           std::chrono::steady_clock::now() - started)
                                           .count()));
    }
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
    const std::size_t w = errors_->window_index(window);
    if (!policy_id) return errors_->counts(w);
    PolicyIndex::validate(*policy_id);
    const auto slot = tracker_->index()->find(*policy_id);
    if (slot) return errors_->counts(w, *slot);
    errors_->observe_now(w);
    return {};
}

WindowCounts Enforcer::lifetime_error_counts(std::optional<std::string_view> policy_id) const {
    if (policy_id) {
        PolicyIndex::validate(*policy_id);
        const auto slot = tracker_->index()->find(*policy_id);
        return slot ? errors_->lifetime(*slot) : WindowCounts{};
    }
    return errors_->lifetime();
}

}  // namespace driftgate

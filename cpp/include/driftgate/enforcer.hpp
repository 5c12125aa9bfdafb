#pragma once

#include <atomic>
#include <concepts>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "driftgate/drift_tracker.hpp"
#include "driftgate/metrics_registry.hpp"
#include "driftgate/policy_windows.hpp"
#include "driftgate/sampling.hpp"
#include "driftgate/thread_shards.hpp"
#include "driftgate/verdict.hpp"

namespace driftgate {

/// Whether to enforce, on what share of requests, and the drift the rollout tolerates.
struct EnforceOptions {
    bool enforce = false;
    /// In [0, 100], a whole number of hundredths.
    double rollout_percent = 0.0;
    /// In [0, 1].
    double drift_max_ratio = 0.005;

    /// Throws std::invalid_argument naming the bad field and value (NaN included).
    void validate() const;
    /// rollout_percent in hundredths of a percent, 0..10000.
    std::uint32_t rollout_basis_points() const;
};

/// The two verdicts of one decision.
struct VerdictPair {
    Verdict shadow = Verdict::Ok;
    Verdict enforced = Verdict::Ok;
    bool in_rollout = false;
    bool drift = false;
};

/// Which keys a rollout's share of an enforcer enforces on.
enum class Cohort {
    /// Its own: keys hashed with cohort_seed(rollout, enforcer seed), so two rollouts pick
    /// independent cohorts. The rollout named "default" keeps the enforcer's seed.
    Independent,
    /// The enforcer's: keys hashed with its seed, so cohorts nest (10 % within 25 %) across
    /// every shared rollout and the enforcer's global percent.
    Shared,
};

std::string_view to_string(Cohort cohort) noexcept;
/// "independent" or "shared"; std::invalid_argument naming anything else.
Cohort parse_cohort(std::string_view text);

/// Throws std::invalid_argument unless `rollout` is 1-64 characters of [A-Za-z0-9_.:-] (the
/// rule of policy ids: the name is a metric label and part of paths).
void validate_rollout_name(std::string_view rollout);

/// Evaluates a verdict on demand: a function and the context it is called with. It owns
/// nothing, like a string_view: what it refers to must live until decide() returns, and a
/// temporary callable is refused at compile time. (A std::function would cost an allocation
/// check, a copy and two indirect calls per decision, more than the rest of the decision.)
/// nullopt reports a failed evaluation, which counts as an evaluation error and yields
/// Verdict::Fail (fail-closed). Exceptions propagate, recording nothing.
class Evaluator {
  public:
    using Function = std::optional<Verdict> (*)(void* context);

    constexpr Evaluator(Function function, void* context) noexcept
        : function_(function), context_(context) {}

    /// Calls `callable()`, which must outlive this Evaluator's use.
    template <typename Callable>
    requires(!std::same_as<std::remove_cv_t<Callable>, Evaluator> &&
             std::is_invocable_r_v<std::optional<Verdict>,
                                   Callable&>) explicit Evaluator(Callable& callable) noexcept
        : function_([](void* context) -> std::optional<Verdict> {
              return (*static_cast<Callable*>(context))();
          }),
          context_(const_cast<void*>(static_cast<const void*>(std::addressof(callable)))) {}
    template <typename Callable>
    requires(!std::same_as<std::remove_cvref_t<Callable>, Evaluator> &&
             !std::is_lvalue_reference_v<Callable>) explicit Evaluator(Callable&&) =
        delete;  // a temporary would be gone before the call

    std::optional<Verdict> operator()() const { return function_(context_); }

  private:
    Function function_;
    void* context_;
};
/// A verdict known up front, or one to evaluate only if needed.
using VerdictSource = std::variant<Verdict, Evaluator>;

/// Puts a stable, hash-chosen share of keys in the enforced cohort, evaluates the verdicts a
/// decision needs, and records every decision in the DriftTracker and the metrics. A policy is
/// enforced at the percent of the rollout share that holds it (claim_share), else at the
/// global rollout percent (options.rollout_percent); the enforce flag switches both off.
/// Thread-safe: options and shares change atomically while decisions run; a decision writes
/// only its thread's own counts, which the registry sums when it is scraped.
class Enforcer {
  public:
    /// With no registry, the tracker's.
    Enforcer(EnforceOptions options, std::shared_ptr<DriftTracker> tracker,
             std::shared_ptr<MetricsRegistry> registry = nullptr, std::uint32_t seed = 0);
    /// Publishes the decisions since the last scrape, so the registry keeps them.
    ~Enforcer();

    Enforcer(const Enforcer&) = delete;
    Enforcer& operator=(const Enforcer&) = delete;

    /// adapt_selection_latency_seconds observes a sample of the decisions: every kTimedEvery-th
    /// decision of each thread (its first among them), and any decision that comes
    /// kTimedAfterSeconds or more, by the tracker's clock, after its thread's last timed one, so
    /// that a service with little traffic has every decision timed. Timing one costs two reads
    /// of the precise clock, which would be about half of what a decision costs without its
    /// evaluators.
    static constexpr std::uint32_t kTimedEvery = 64;
    static constexpr double kTimedAfterSeconds = 1.0;

    /// options.enforce and sampling_bucket(key, seed) < rollout percent: the global cohort.
    bool in_rollout(std::string_view key) const noexcept;
    /// The cohort of `policy_id`: its share's (bucket of the share's seed below the share's
    /// percent) when a share holds it, else the global one. std::invalid_argument for a bad id.
    bool in_rollout(std::string_view key, std::string_view policy_id) const;
    /// The percent `policy_id` is enforced at now: its share's, else the global one; 0 while
    /// enforce is off. std::invalid_argument for a bad id.
    double rollout_percent_of(std::string_view policy_id) const;

    /// Outside the cohort only `shadow` is evaluated and enforced = shadow; inside it both are.
    /// std::invalid_argument for a bad policy id, before anything is evaluated.
    VerdictPair decide(std::string_view policy_id, std::string_view key,
                       const VerdictSource& shadow, const VerdictSource& enforced);

    EnforceOptions options() const;
    /// Replaces every field at once. std::invalid_argument for a bad value, or for a new
    /// rollout percent while a RolloutManager claims it; nothing changes then.
    void set_options(const EnforceOptions& options);
    /// Changes the given fields and keeps the others, in one atomic step, so writers of
    /// different fields never undo each other. The same errors as set_options.
    void update_options(std::optional<bool> enforce, std::optional<double> rollout_percent,
                        std::optional<double> drift_max_ratio);
    /// Changes only the global rollout percent: the lever a RolloutManager without policies
    /// pulls.
    void set_rollout_percent(double percent);
    /// Reserves the global rollout percent for the RolloutManager of `rollout`, which governs
    /// every policy: others may then change every field but that one, and no rollout may claim
    /// a share. std::invalid_argument when another manager holds it, or when a rollout holds a
    /// share (the message names them).
    void claim_rollout_percent(std::string_view rollout = kDefaultRollout);
    void release_rollout_percent();
    bool rollout_percent_claimed() const;

    /// Gives `rollout` a share of its own: `policies` are enforced at the share's percent (0
    /// until set_share_percent) on the keys of `cohort`, whatever the global percent. The
    /// policies are admitted to the tracker's index now, so none is ever counted under
    /// "__overflow__". std::invalid_argument, with nothing claimed, for a bad rollout name or
    /// policy id, an empty or repeated list, a policy another rollout's share holds (naming the
    /// policy and both rollouts), a second share of one rollout, a manager holding the global
    /// percent, or policies past the index's max_policies (naming it).
    void claim_share(std::string_view rollout, const std::vector<std::string>& policies,
                     Cohort cohort = Cohort::Independent);
    /// Sets the percent of the share of `rollout`; std::invalid_argument for a bad percent or
    /// a rollout with no share.
    void set_share_percent(std::string_view rollout, double percent);
    /// Gives the share's policies back to the global percent. Nothing for an unknown rollout.
    void release_share(std::string_view rollout);
    /// The policies of `rollout`'s share, in the order claimed; nullopt without one.
    std::optional<std::vector<std::string>> share_policies(std::string_view rollout) const;

    /// (failed enforced evaluations, decisions in the enforced cohort) in a tracker window,
    /// across all policies or for one.
    WindowCounts error_counts(std::string_view window,
                              std::optional<std::string_view> policy_id = std::nullopt) const;
    /// The same counted since this enforcer was made: never reset, never forgetting, so the
    /// difference of two readings is exactly what was decided between them.
    WindowCounts lifetime_error_counts(
        std::optional<std::string_view> policy_id = std::nullopt) const;

    std::uint32_t seed() const { return seed_; }
    const std::shared_ptr<DriftTracker>& tracker() const { return tracker_; }
    const std::shared_ptr<MetricsRegistry>& registry() const { return registry_; }

  private:
    struct Evaluated {
        Verdict verdict;
        bool failed;
    };
    /// A rollout's share: its policies' slots, the seed of its cohort, its percent.
    struct Share {
        std::string rollout;
        std::vector<std::string> policies;
        std::vector<std::uint32_t> slots;
        std::uint32_t seed = 0;
        std::uint32_t basis_points = 0;
        std::shared_ptr<prometheus::Gauge> gauge;  // adapt_enforce_rollout_percent{rollout}
    };

    struct DecisionShard;
    class DecisionExport;

    static Evaluated evaluate(const VerdictSource& source);
    static std::uint32_t pack(const EnforceOptions& options);
    void publish(const EnforceOptions& options);
    void publish_share(const Share& share);
    /// The global percent's series, labelled with the rollout that claims it ("" for none).
    void label_global(std::string_view rollout);
    /// Whether the key is in the cohort of the policy in `slot`: one load of the slot's share
    /// word, one of the global word.
    bool in_cohort(std::uint32_t slot, std::string_view key) const noexcept;
    Share* share_locked(std::string_view rollout);

    std::shared_ptr<DriftTracker> tracker_;
    std::shared_ptr<MetricsRegistry> registry_;
    std::uint32_t seed_;

    mutable std::mutex options_mutex_;  // serialises writers and whole-options reads
    EnforceOptions options_;
    std::optional<std::string> percent_owner_;  // the rollout claiming the global percent
    std::vector<Share> shares_;                 // guarded by options_mutex_
    // enforce flag (bit 31) and rollout basis points in one word, so a decision never sees one
    // without the other.
    std::atomic<std::uint32_t> cohort_;
    // Per policy slot: 0 when no share holds the policy, else the share's cohort seed (high 32
    // bits), a claimed bit and its basis points, so a decision finds its share's percent and
    // seed in one load, at the same cost with any number of shares.
    std::unique_ptr<std::atomic<std::uint64_t>[]> slot_shares_;

    // (failed enforced evaluations, decisions in the enforced cohort) per policy; its lifetime
    // counts are the enforced cohort's counters too.
    std::shared_ptr<PolicyWindows> errors_;
    // Each thread's counts of the shadow side and its latency samples.
    std::shared_ptr<ShardPool<DecisionShard>> decisions_;
    std::shared_ptr<DecisionExport> export_;
    std::shared_ptr<prometheus::Gauge> rollout_percent_;  // the global percent's
    prometheus::Gauge& drift_max_ratio_;
};

}  // namespace driftgate

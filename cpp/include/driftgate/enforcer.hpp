#pragma once

#include <atomic>
#include <concepts>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <type_traits>
#include <variant>

#include "driftgate/drift_tracker.hpp"
#include "driftgate/metrics_registry.hpp"
#include "driftgate/policy_windows.hpp"
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
/// decision needs, and records every decision in the DriftTracker and the metrics.
/// Thread-safe: options change atomically while decisions run; a decision writes only its
/// thread's own counts, which the registry sums when it is scraped.
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

    /// options.enforce and sampling_bucket(key, seed) < rollout percent.
    bool in_rollout(std::string_view key) const noexcept;

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
    /// Changes only the rollout percent: the lever a RolloutManager pulls.
    void set_rollout_percent(double percent);
    /// Reserves the rollout percent for one RolloutManager: others may then change every field
    /// but that one. std::invalid_argument when another manager holds it.
    void claim_rollout_percent();
    void release_rollout_percent();
    bool rollout_percent_claimed() const;

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
    struct DecisionShard;
    class DecisionExport;

    static Evaluated evaluate(const VerdictSource& source);
    static std::uint32_t pack(const EnforceOptions& options);
    /// Whether `key` is in the cohort that `cohort` (a packed options word) describes.
    bool in_cohort(std::uint32_t cohort, std::string_view key) const noexcept;
    void publish(const EnforceOptions& options);

    std::shared_ptr<DriftTracker> tracker_;
    std::shared_ptr<MetricsRegistry> registry_;
    std::uint32_t seed_;

    mutable std::mutex options_mutex_;  // serialises writers and whole-options reads
    EnforceOptions options_;
    bool percent_claimed_ = false;
    // enforce flag (bit 31) and rollout basis points in one word, so a decision never sees one
    // without the other.
    std::atomic<std::uint32_t> cohort_;

    // (failed enforced evaluations, decisions in the enforced cohort) per policy; its lifetime
    // counts are the enforced cohort's counters too.
    std::shared_ptr<PolicyWindows> errors_;
    // Each thread's counts of the shadow side and its latency samples.
    std::shared_ptr<ShardPool<DecisionShard>> decisions_;
    std::shared_ptr<DecisionExport> export_;
    prometheus::Gauge& rollout_percent_;
    prometheus::Gauge& drift_max_ratio_;
};

}  // namespace driftgate

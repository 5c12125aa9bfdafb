#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "driftgate/policy_index.hpp"
#include "driftgate/rolling_window.hpp"

namespace driftgate {

/// A metric's name and help text; the names are the public contract.
struct MetricName {
    const char* name;
    const char* help;
};

namespace metrics {
/// The label every rollout series carries: the name of the rollout it belongs to.
inline constexpr const char* kRolloutLabel = "rollout";
inline constexpr MetricName kRolloutPercent{
    "adapt_enforce_rollout_percent",
    "Percent of requests in the enforced cohort, by the rollout that sets it (\"\": the "
    "enforcer's own, set by no rollout)."};
inline constexpr MetricName kDriftMaxRatio{
    "adapt_drift_max_ratio",
    "The drift ratio this service accepts (EnforceOptions.drift_max_ratio)."};
inline constexpr MetricName kRequests{"adapt_requests_total",
                                      "Decisions by cohort mode and policy."};
inline constexpr MetricName kDriftEvents{"adapt_drift_events_total",
                                         "Requests whose shadow and enforced verdicts differed."};
inline constexpr MetricName kDriftRatio{"adapt_drift_ratio",
                                        "Drift events / requests in the rolling window."};
inline constexpr MetricName kWindowRequests{"adapt_drift_window_requests",
                                            "Requests in the rolling window."};
inline constexpr MetricName kWindowEvents{"adapt_drift_window_events",
                                          "Drift events in the rolling window."};
inline constexpr MetricName kEvaluationErrors{"adapt_evaluation_errors_total",
                                              "Verdict evaluations that raised; counted as FAIL."};
inline constexpr MetricName kSelectionLatency{
    "adapt_selection_latency_seconds",
    "Time spent in Enforcer.decide, of a sample of the decisions."};
inline constexpr MetricName kReadinessGateOpen{
    "adapt_readiness_gate_open", "1 while the drift readiness gate is open, 0 while closed."};
inline constexpr MetricName kEnforcement{"guardian_enforcement_total",
                                         "Decisions in the enforced cohort."};
inline constexpr MetricName kEnforcementFailed{
    "guardian_enforcement_failed_total",
    "Decisions in the enforced cohort whose enforced evaluation failed."};
inline constexpr MetricName kSignatureRuns{"solver_signature_runs_total",
                                           "Solution signatures checked for novelty."};
inline constexpr MetricName kSignatureUnique{"solver_signature_unique_total",
                                             "Solution signatures new among the recent ones."};
inline constexpr MetricName kSignatureMismatch{
    "solver_signature_mismatch_total", "Inputs seen again with a different solution signature."};
inline constexpr MetricName kRolloutStage{"guardian_rollout_stage",
                                          "Index of the current rollout stage (-1 while aborted)."};
inline constexpr MetricName kRolloutErrorRate{"guardian_rollout_error_rate",
                                              "Error rate at the last rollout evaluation."};
inline constexpr MetricName kRolloutStageStartedAt{"guardian_rollout_stage_started_at",
                                                   "Unix time the current stage started."};
inline constexpr MetricName kRolloutAdvancements{"guardian_rollout_advancement_total",
                                                 "Rollout advancements by target stage."};
inline constexpr MetricName kRolloutRollbacks{"guardian_rollout_rollback_total",
                                              "Rollout rollbacks by source and target stage."};
inline constexpr MetricName kRolloutAnalysisErrors{
    "guardian_rollout_analysis_errors_total",
    "Rollout evaluations skipped because the error-rate source failed."};
}  // namespace metrics

/// Something whose rolling windows are exported as the adapt_drift_window_* gauges.
class WindowSource {
  public:
    virtual ~WindowSource() = default;
    /// (window name, counts) for every window, read now.
    virtual std::vector<std::pair<std::string, WindowCounts>> window_counts() const = 0;
};

/// Something that publishes counts it keeps itself (under its own lock, off the hot path's
/// shared cache lines) into prometheus-cpp metrics just before each scrape.
class ScrapeHook {
  public:
    virtual ~ScrapeHook() = default;
    virtual void before_scrape() = 0;
};

/// The formats a registry's exposition is written in.
enum class ExpositionFormat {
    kText,         // Prometheus text format 0.0.4
    kOpenMetrics,  // OpenMetrics 1.0.0 text, ending in "# EOF"
};

/// A prometheus-cpp registry plus the gauges computed at scrape time, with text exposition.
/// Thread-safe: components register and update metrics while others scrape.
class MetricsRegistry {
  public:
    MetricsRegistry();

    /// The process-wide registry that components use when given none.
    static std::shared_ptr<MetricsRegistry> default_registry();

    prometheus::Family<prometheus::Counter>& counter(const MetricName& metric);
    prometheus::Family<prometheus::Gauge>& gauge(const MetricName& metric);
    prometheus::Family<prometheus::Histogram>& histogram(const MetricName& metric);

    /// Exported, summed over all live sources, as adapt_drift_ratio{window},
    /// adapt_drift_window_requests{window} and adapt_drift_window_events{window}. The registry
    /// holds the source weakly: a source that is gone stops being exported.
    void add_window_source(std::weak_ptr<const WindowSource> source);
    /// Runs before every collect; held weakly, like window sources.
    void add_scrape_hook(std::weak_ptr<ScrapeHook> hook);

    /// A series that several owners may hold at once (two enforcers on one registry, or two
    /// managers of one rollout's name): created by the first holder, removed from its family
    /// when the last one lets go, so no holder is ever left with a series removed under it.
    std::shared_ptr<prometheus::Gauge> hold_gauge(const MetricName& metric,
                                                  const prometheus::Labels& labels);
    std::shared_ptr<prometheus::Counter> hold_counter(const MetricName& metric,
                                                      const prometheus::Labels& labels);

    std::vector<prometheus::MetricFamily> collect() const;
    /// Everything registered, written by prometheus-cpp's TextSerializer: the Prometheus text
    /// format 0.0.4, or OpenMetrics (see to_openmetrics).
    std::string exposition(ExpositionFormat format = ExpositionFormat::kText) const;

    /// The name of every family this registry can expose, as registered (counters with their
    /// `_total`), so an exposition merged with another registry's can leave out a clash.
    std::vector<std::string> family_names() const;

  private:
    struct HeldSeries;
    void add_name(const char* name);

    std::shared_ptr<prometheus::Registry> registry_;
    std::shared_ptr<HeldSeries> held_;
    mutable std::mutex names_mutex_;  // guards names_
    std::set<std::string> names_;
    mutable std::mutex sources_mutex_;  // guards window_sources_ and scrape_hooks_
    mutable std::vector<std::weak_ptr<const WindowSource>> window_sources_;
    mutable std::vector<std::weak_ptr<ScrapeHook>> scrape_hooks_;
};

/// The text format's name of a family's type: counter, gauge, histogram, summary or untyped.
std::string_view type_name(prometheus::MetricType type);

/// Text format 0.0.4 from prometheus-cpp's TextSerializer turned into OpenMetrics 1.0.0.
/// prometheus-cpp has no OpenMetrics serializer; the two formats share the sample lines, so
/// the serializer still writes every sample and only what differs is rewritten: a counter
/// family is named without its `_total` (its samples keep it, and a counter registered without
/// one gets it), HELP escapes `"`, `untyped` is `unknown`, NaN is spelled `NaN`, and the
/// exposition ends with `# EOF`.
std::string to_openmetrics(std::vector<prometheus::MetricFamily> families);

/// The series one owner (a RolloutManager) holds, by metric and labels: held through
/// MetricsRegistry::hold_*, so they leave the registry when the owner goes, unless another
/// owner holds them too. Thread-safe.
class SeriesHolder {
  public:
    explicit SeriesHolder(std::shared_ptr<MetricsRegistry> registry)
        : registry_(std::move(registry)) {}
    SeriesHolder(const SeriesHolder&) = delete;
    SeriesHolder& operator=(const SeriesHolder&) = delete;

    /// The series, held from now until release_gauge() or the holder's end.
    prometheus::Gauge& gauge(const MetricName& metric, const prometheus::Labels& labels);
    prometheus::Counter& counter(const MetricName& metric, const prometheus::Labels& labels);
    /// Lets one gauge go now.
    void release_gauge(const MetricName& metric, const prometheus::Labels& labels);

  private:
    using Key = std::pair<std::string, prometheus::Labels>;
    std::shared_ptr<MetricsRegistry> registry_;
    std::mutex mutex_;
    std::map<Key, std::shared_ptr<prometheus::Gauge>> gauges_;
    std::map<Key, std::shared_ptr<prometheus::Counter>> counters_;
};

/// Per policy slot, one counter of each of several families, labelled with the slot's policy
/// id. A slot's counters are all created together, at 0, on its first use, so `rate()` sees a
/// policy's every series before anything is counted in it; then they are found without a lock.
/// Thread-safe.
class SlotCounters {
  public:
    /// A family and the labels its series carry besides policy_id.
    struct Series {
        prometheus::Family<prometheus::Counter>* family;
        prometheus::Labels labels;
    };

    SlotCounters(std::vector<Series> series, std::shared_ptr<const PolicyIndex> index);
    /// One family.
    SlotCounters(prometheus::Family<prometheus::Counter>& family,
                 std::shared_ptr<const PolicyIndex> index, prometheus::Labels constant_labels = {});

    /// The slot's counters, in the order of the series given.
    std::span<prometheus::Counter* const> at(std::uint32_t slot);

  private:
    std::vector<Series> series_;
    std::shared_ptr<const PolicyIndex> index_;
    std::unique_ptr<prometheus::Counter*[]> counters_;  // slot-major, series_.size() per slot
    std::unique_ptr<std::atomic<bool>[]> created_;
    std::mutex mutex_;
};

}  // namespace driftgate

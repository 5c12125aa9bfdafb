#include "driftgate/metrics_registry.hpp"

#include <prometheus/text_serializer.h>

#include <map>

namespace driftgate {

MetricsRegistry::MetricsRegistry() : registry_(std::make_shared<prometheus::Registry>()) {}

std::shared_ptr<MetricsRegistry> MetricsRegistry::default_registry() {
    static const auto registry = std::make_shared<MetricsRegistry>();
    return registry;
}

prometheus::Family<prometheus::Counter>& MetricsRegistry::counter(const MetricName& metric) {
    return prometheus::BuildCounter().Name(metric.name).Help(metric.help).Register(*registry_);
}

prometheus::Family<prometheus::Gauge>& MetricsRegistry::gauge(const MetricName& metric) {
    return prometheus::BuildGauge().Name(metric.name).Help(metric.help).Register(*registry_);
}

prometheus::Family<prometheus::Histogram>& MetricsRegistry::histogram(const MetricName& metric) {
    return prometheus::BuildHistogram().Name(metric.name).Help(metric.help).Register(*registry_);
}

void MetricsRegistry::add_window_source(std::weak_ptr<const WindowSource> source) {
    std::lock_guard lock(sources_mutex_);
    std::erase_if(window_sources_, [](const auto& s) { return s.expired(); });
    window_sources_.push_back(std::move(source));
}

void MetricsRegistry::add_scrape_hook(std::weak_ptr<ScrapeHook> hook) {
    std::lock_guard lock(sources_mutex_);
    std::erase_if(scrape_hooks_, [](const auto& h) { return h.expired(); });
    scrape_hooks_.push_back(std::move(hook));
}

namespace {

template <typename T>
std::vector<std::shared_ptr<T>> live(std::vector<std::weak_ptr<T>>& weak_list) {
    std::erase_if(weak_list, [](const auto& weak) { return weak.expired(); });
    std::vector<std::shared_ptr<T>> out;
    for (const auto& weak : weak_list) {
        if (auto strong = weak.lock()) out.push_back(std::move(strong));
    }
    return out;
}

prometheus::MetricFamily gauge_family(const MetricName& metric) {
    return {metric.name, metric.help, prometheus::MetricType::Gauge, {}};
}

void add_window_gauge(prometheus::MetricFamily& family, const std::string& window, double value) {
    prometheus::ClientMetric sample;
    sample.label = {{"window", window}};
    sample.gauge.value = value;
    family.metric.push_back(std::move(sample));
}

}  // namespace

std::vector<prometheus::MetricFamily> MetricsRegistry::collect() const {
    std::vector<std::shared_ptr<const WindowSource>> sources;
    std::vector<std::shared_ptr<ScrapeHook>> hooks;
    {
        std::lock_guard lock(sources_mutex_);
        sources = live(window_sources_);
        hooks = live(scrape_hooks_);
    }
    // Outside the lock: a hook takes its owner's lock, which its owner may hold while
    // registering metrics.
    for (const auto& hook : hooks) hook->before_scrape();
    std::vector<prometheus::MetricFamily> families = registry_->Collect();
    if (sources.empty()) return families;

    // Summed, not averaged, so two trackers in one registry export one consistent ratio.
    std::map<std::string, WindowCounts> sums;
    for (const auto& source : sources) {
        for (const auto& [window, counts] : source->window_counts()) sums[window] += counts;
    }
    auto ratio = gauge_family(metrics::kDriftRatio);
    auto requests = gauge_family(metrics::kWindowRequests);
    auto events = gauge_family(metrics::kWindowEvents);
    for (const auto& [window, counts] : sums) {
        add_window_gauge(ratio, window, counts.ratio());
        add_window_gauge(requests, window, static_cast<double>(counts.total));
        add_window_gauge(events, window, static_cast<double>(counts.events));
    }
    families.push_back(std::move(ratio));
    families.push_back(std::move(requests));
    families.push_back(std::move(events));
    return families;
}

std::string MetricsRegistry::exposition() const {
    return prometheus::TextSerializer().Serialize(collect());
}

SlotCounters::SlotCounters(std::vector<Series> series, std::shared_ptr<const PolicyIndex> index)
    : series_(std::move(series)),
      index_(std::move(index)),
      counters_(std::make_unique<prometheus::Counter*[]>(index_->slot_count() * series_.size())),
      created_(std::make_unique<std::atomic<bool>[]>(index_->slot_count())) {}

SlotCounters::SlotCounters(prometheus::Family<prometheus::Counter>& family,
                           std::shared_ptr<const PolicyIndex> index,
                           prometheus::Labels constant_labels)
    : SlotCounters({{&family, std::move(constant_labels)}}, std::move(index)) {}

std::span<prometheus::Counter* const> SlotCounters::at(std::uint32_t slot) {
    const std::span<prometheus::Counter*> row(counters_.get() + slot * series_.size(),
                                              series_.size());
    if (created_[slot].load(std::memory_order_acquire)) return row;
    std::lock_guard lock(mutex_);
    if (created_[slot].load(std::memory_order_relaxed)) return row;
    for (std::size_t i = 0; i < series_.size(); ++i) {
        prometheus::Labels labels = series_[i].labels;
        labels.emplace("policy_id", std::string(index_->label(slot)));
        row[i] = &series_[i].family->Add(labels);
    }
    created_[slot].store(true, std::memory_order_release);
    return row;
}

}  // namespace driftgate

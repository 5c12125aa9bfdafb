#include "driftgate/metrics_registry.hpp"

#include <prometheus/text_serializer.h>

#include <map>
#include <string_view>
#include <unordered_map>

namespace driftgate {

/// The series hold_* gave out, by family and labels: each with its holders' count kept by a
/// shared_ptr, and a generation, so that a series held anew while its last holder was letting
/// go is not removed by that late release.
struct MetricsRegistry::HeldSeries {
    template <typename T>
    struct Entry {
        std::weak_ptr<T> series;
        std::uint64_t generation = 0;
    };
    template <typename T>
    using Book = std::map<std::pair<prometheus::Family<T>*, prometheus::Labels>, Entry<T>>;

    template <typename T>
    Book<T>& book();

    std::mutex mutex;
    Book<prometheus::Gauge> gauges;
    Book<prometheus::Counter> counters;
    std::uint64_t generations = 0;
    // The families live in the registry: kept alive while any held series is.
    std::shared_ptr<prometheus::Registry> registry;
};

template <>
MetricsRegistry::HeldSeries::Book<prometheus::Gauge>&
MetricsRegistry::HeldSeries::book<prometheus::Gauge>() {
    return gauges;
}

template <>
MetricsRegistry::HeldSeries::Book<prometheus::Counter>&
MetricsRegistry::HeldSeries::book<prometheus::Counter>() {
    return counters;
}

namespace {

template <typename T, typename Held>
std::shared_ptr<T> hold(const std::shared_ptr<Held>& held, prometheus::Family<T>& family,
                        const prometheus::Labels& labels) {
    std::lock_guard lock(held->mutex);
    auto key = std::make_pair(&family, labels);
    auto& entry = held->template book<T>()[key];
    if (auto series = entry.series.lock()) return series;
    const std::uint64_t generation = ++held->generations;
    entry.generation = generation;
    T* series = &family.Add(labels);
    std::shared_ptr<T> out(series, [held, key = std::move(key), generation](T* gone) {
        std::lock_guard release(held->mutex);
        auto& book = held->template book<T>();
        const auto found = book.find(key);
        // Held again since the count reached 0: the new holders have it now.
        if (found == book.end() || found->second.generation != generation) return;
        book.erase(found);
        key.first->Remove(gone);
    });
    entry.series = out;
    return out;
}

}  // namespace

MetricsRegistry::MetricsRegistry()
    : registry_(std::make_shared<prometheus::Registry>()), held_(std::make_shared<HeldSeries>()) {
    held_->registry = registry_;
}

std::shared_ptr<MetricsRegistry> MetricsRegistry::default_registry() {
    static const auto registry = std::make_shared<MetricsRegistry>();
    return registry;
}

void MetricsRegistry::add_name(const char* name) {
    std::lock_guard lock(names_mutex_);
    names_.emplace(name);
}

prometheus::Family<prometheus::Counter>& MetricsRegistry::counter(const MetricName& metric) {
    add_name(metric.name);
    return prometheus::BuildCounter().Name(metric.name).Help(metric.help).Register(*registry_);
}

prometheus::Family<prometheus::Gauge>& MetricsRegistry::gauge(const MetricName& metric) {
    add_name(metric.name);
    return prometheus::BuildGauge().Name(metric.name).Help(metric.help).Register(*registry_);
}

prometheus::Family<prometheus::Histogram>& MetricsRegistry::histogram(const MetricName& metric) {
    add_name(metric.name);
    return prometheus::BuildHistogram().Name(metric.name).Help(metric.help).Register(*registry_);
}

std::shared_ptr<prometheus::Gauge> MetricsRegistry::hold_gauge(const MetricName& metric,
                                                               const prometheus::Labels& labels) {
    return hold(held_, gauge(metric), labels);
}

std::shared_ptr<prometheus::Counter> MetricsRegistry::hold_counter(
    const MetricName& metric, const prometheus::Labels& labels) {
    return hold(held_, counter(metric), labels);
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

std::string MetricsRegistry::exposition(ExpositionFormat format) const {
    if (format == ExpositionFormat::kOpenMetrics) return to_openmetrics(collect());
    return prometheus::TextSerializer().Serialize(collect());
}

std::vector<std::string> MetricsRegistry::family_names() const {
    std::vector<std::string> names;
    {
        std::lock_guard lock(names_mutex_);
        names.assign(names_.begin(), names_.end());
    }
    bool windows = false;
    {
        std::lock_guard lock(sources_mutex_);
        for (const auto& source : window_sources_) windows = windows || !source.expired();
    }
    if (windows) {
        for (const MetricName* metric :
             {&metrics::kDriftRatio, &metrics::kWindowRequests, &metrics::kWindowEvents}) {
            names.emplace_back(metric->name);
        }
    }
    return names;
}

std::string_view type_name(prometheus::MetricType type) {
    switch (type) {
        case prometheus::MetricType::Counter:
            return "counter";
        case prometheus::MetricType::Gauge:
            return "gauge";
        case prometheus::MetricType::Histogram:
            return "histogram";
        case prometheus::MetricType::Summary:
            return "summary";
        default:
            return "untyped";
    }
}

namespace {

constexpr std::string_view kTotal = "_total";

std::string_view openmetrics_type(prometheus::MetricType type) {
    const std::string_view name = type_name(type);
    return name == "untyped" ? "unknown" : name;  // OpenMetrics' word for it
}

/// OpenMetrics escapes backslash, newline and double quote in HELP text.
void append_escaped_help(std::string& out, std::string_view help) {
    for (const char c : help) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '"') {
            out += "\\\"";
        } else {
            out += c;
        }
    }
}

/// Sample lines as the serializer wrote them, but for NaN, which it spells `Nan`.
void append_samples(std::string& out, std::string_view samples) {
    constexpr std::string_view kNan = " Nan\n";
    for (std::size_t at; (at = samples.find(kNan)) != std::string_view::npos;) {
        out += samples.substr(0, at);
        out += " NaN\n";
        samples.remove_prefix(at + kNan.size());
    }
    out += samples;
}

}  // namespace

std::string to_openmetrics(std::vector<prometheus::MetricFamily> families) {
    struct Header {
        std::string_view name;  // the family's OpenMetrics name
        std::string_view help;
        std::string_view type;
    };
    // Keyed by the name the serializer writes on the family's TYPE line.
    std::unordered_map<std::string, Header> headers;
    for (auto& family : families) {
        if (family.type == prometheus::MetricType::Counter &&
            !std::string_view(family.name).ends_with(kTotal)) {
            family.name += kTotal;  // so the serializer writes the samples' `_total`
        }
    }
    for (const auto& family : families) {
        std::string_view name = family.name;
        if (family.type == prometheus::MetricType::Counter) name.remove_suffix(kTotal.size());
        headers.emplace(family.name, Header{name, family.help, openmetrics_type(family.type)});
    }

    const std::string text = prometheus::TextSerializer().Serialize(families);
    const std::string_view view = text;
    std::string out;
    out.reserve(text.size() + text.size() / 64 + 16);
    std::size_t at = 0;
    while (at < view.size()) {
        if (view[at] != '#') {
            // Sample lines run until the next comment line.
            std::size_t next = view.find("\n#", at);
            next = next == std::string_view::npos ? view.size() : next + 1;
            append_samples(out, view.substr(at, next - at));
            at = next;
            continue;
        }
        std::size_t end = view.find('\n', at);
        end = end == std::string_view::npos ? view.size() : end + 1;
        const std::string_view line = view.substr(at, end - at);
        at = end;
        // "# TYPE name type": both header lines are written here from the family itself, HELP
        // first; the serializer's HELP lines are dropped.
        if (!line.starts_with("# TYPE ")) continue;
        const std::string_view rest = line.substr(7);
        const auto found = headers.find(std::string(rest.substr(0, rest.find(' '))));
        if (found == headers.end()) continue;
        const Header& header = found->second;
        if (!header.help.empty()) {
            out += "# HELP ";
            out += header.name;
            out += ' ';
            append_escaped_help(out, header.help);
            out += '\n';
        }
        out += "# TYPE ";
        out += header.name;
        out += ' ';
        out += header.type;
        out += '\n';
    }
    out += "# EOF\n";
    return out;
}

prometheus::Gauge& SeriesHolder::gauge(const MetricName& metric, const prometheus::Labels& labels) {
    std::lock_guard lock(mutex_);
    auto& held = gauges_[{metric.name, labels}];
    if (!held) held = registry_->hold_gauge(metric, labels);
    return *held;
}

prometheus::Counter& SeriesHolder::counter(const MetricName& metric,
                                           const prometheus::Labels& labels) {
    std::lock_guard lock(mutex_);
    auto& held = counters_[{metric.name, labels}];
    if (!held) held = registry_->hold_counter(metric, labels);
    return *held;
}

void SeriesHolder::release_gauge(const MetricName& metric, const prometheus::Labels& labels) {
    std::shared_ptr<prometheus::Gauge> gone;
    {
        std::lock_guard lock(mutex_);
        const auto found = gauges_.find({metric.name, labels});
        if (found == gauges_.end()) return;
        gone = std::move(found->second);
        gauges_.erase(found);
    }
    // Let go outside the holder's lock: the last release takes the registry's.
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

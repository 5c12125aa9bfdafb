#include "driftgate/drift_tracker.hpp"

#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "driftgate/verdict_batch.hpp"

namespace driftgate {

/// Exports the tracker at scrape time: the window gauges, and adapt_drift_events_total
/// published from the shards' lifetime counts, so record() never writes a shared counter. A
/// policy's counter appears, at 0, at the first scrape after its first record.
class DriftTracker::WindowExport final : public WindowSource, public ScrapeHook {
  public:
    WindowExport(std::shared_ptr<const PolicyWindows> windows,
                 std::shared_ptr<const PolicyIndex> index, MetricsRegistry& registry)
        : windows_(std::move(windows)),
          drift_events_(registry.counter(metrics::kDriftEvents), index),
          published_(index->slot_count(), 0) {}

    void before_scrape() override {
        std::lock_guard lock(mutex_);
        const std::vector<WindowCounts> lifetimes = windows_->lifetimes();
        for (std::uint32_t slot = 0; slot < published_.size(); ++slot) {
            const WindowCounts& lifetime = lifetimes[slot];
            if (lifetime.total == 0) continue;  // never recorded: no series yet
            prometheus::Counter& events = *drift_events_.at(slot)[0];
            if (lifetime.events > published_[slot]) {
                events.Increment(static_cast<double>(lifetime.events - published_[slot]));
                published_[slot] = lifetime.events;
            }
        }
    }

    std::vector<std::pair<std::string, WindowCounts>> window_counts() const override {
        std::vector<std::pair<std::string, WindowCounts>> out;
        const auto& specs = windows_->windows();
        out.reserve(specs.size());
        for (std::size_t w = 0; w < specs.size(); ++w) {
            out.emplace_back(specs[w].name, windows_->counts(w));
        }
        return out;
    }

  private:
    std::shared_ptr<const PolicyWindows> windows_;
    SlotCounters drift_events_;
    std::mutex mutex_;  // two scrapes at once publish each count once
    std::vector<std::uint64_t> published_;
};

DriftTracker::DriftTracker(std::vector<WindowSpec> windows, std::shared_ptr<const Clock> clock,
                           std::shared_ptr<MetricsRegistry> registry, std::size_t max_policies)
    : index_(std::make_shared<PolicyIndex>(max_policies)),
      windows_(std::make_shared<PolicyWindows>(std::move(windows), std::move(clock),
                                               index_->slot_count())),
      registry_(registry ? std::move(registry) : MetricsRegistry::default_registry()),
      export_(std::make_shared<WindowExport>(windows_, index_, *registry_)) {
    registry_->add_window_source(export_);
    registry_->add_scrape_hook(export_);
}

DriftTracker::~DriftTracker() {
    export_->before_scrape();  // counts since the last scrape reach the registry
}

void DriftTracker::add(std::uint32_t slot, std::uint64_t drift, std::uint64_t total) {
    windows_->add(slot, drift, total);
}

bool DriftTracker::record(std::string_view policy_id, Verdict shadow, Verdict enforced) {
    const bool drift = shadow != enforced;
    add(index_->slot_for(policy_id), drift ? 1 : 0, 1);
    return drift;
}

void DriftTracker::throw_not_held(std::uint32_t slot) {
    throw std::out_of_range("slot " + std::to_string(slot) + " is held by no policy id");
}

bool DriftTracker::record_slot(std::uint32_t slot, Verdict shadow, Verdict enforced) {
    check_held(slot);
    const bool drift = shadow != enforced;
    add(slot, drift ? 1 : 0, 1);
    return drift;
}

std::uint64_t DriftTracker::record_batch(std::string_view policy_id,
                                         std::span<const std::uint8_t> shadow,
                                         std::span<const std::uint8_t> enforced) {
    PolicyIndex::validate(policy_id);
    if (shadow.size() != enforced.size()) {
        throw std::invalid_argument("record_batch needs buffers of equal length, got shadow of " +
                                    std::to_string(shadow.size()) + " and enforced of " +
                                    std::to_string(enforced.size()));
    }
    // One pass counts the drift and checks every code; nothing is recorded until the whole
    // batch has been checked, so a bad code records nothing.
    const BatchScan scan = scan_batch(shadow, enforced);
    if (!scan.valid) {
        for (std::size_t i = 0; i < shadow.size(); ++i) {
            for (auto [side, code] : {std::pair{"shadow", shadow[i]}, {"enforced", enforced[i]}}) {
                if (code >= kVerdictCodeLimit) {
                    throw std::invalid_argument(
                        std::string("record_batch: invalid verdict code ") + std::to_string(code) +
                        " in " + side + "[" + std::to_string(i) +
                        "]: expected 0 (ok), 1 (warn) or 2 (fail); nothing was recorded");
                }
            }
        }
    }
    const std::uint64_t drift = scan.drift;
    if (!shadow.empty()) add(index_->slot_for(policy_id), drift, shadow.size());
    return drift;
}

WindowCounts DriftTracker::counts(std::string_view window,
                                  std::optional<std::string_view> policy_id) const {
    const std::size_t w = windows_->window_index(window);
    if (!policy_id) return windows_->counts(w);
    PolicyIndex::validate(*policy_id);
    const auto slot = index_->find(*policy_id);
    if (slot) return windows_->counts(w, *slot);
    windows_->observe_now(w);  // nothing to count, but the read still moves the time
    return {};
}

std::optional<double> DriftTracker::drift_leaves_in(std::string_view window) const {
    return windows_->newest_event_leaves_in(windows_->window_index(window));
}

double DriftTracker::ratio(std::string_view window,
                           std::optional<std::string_view> policy_id) const {
    return counts(window, policy_id).ratio();
}

}  // namespace driftgate

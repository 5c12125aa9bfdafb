#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "driftgate/clock.hpp"
#include "driftgate/metrics_registry.hpp"
#include "driftgate/policy_index.hpp"
#include "driftgate/policy_windows.hpp"
#include "driftgate/verdict.hpp"

namespace driftgate {

/// Counts, per policy and in rolling windows, how often the enforced verdict differs from the
/// shadow verdict, and exports the counts to a MetricsRegistry.
/// Thread-safe: `record` is lock-free and exact under any number of threads; reads may run
/// concurrently with records.
class DriftTracker {
  public:
    DriftTracker(std::vector<WindowSpec> windows = default_windows(),
                 std::shared_ptr<const Clock> clock = nullptr,
                 std::shared_ptr<MetricsRegistry> registry = nullptr,
                 std::size_t max_policies = 256);

    ~DriftTracker();

    DriftTracker(const DriftTracker&) = delete;
    DriftTracker& operator=(const DriftTracker&) = delete;

    /// Records one request; true when it drifted. std::invalid_argument for a bad policy id,
    /// with nothing recorded.
    bool record(std::string_view policy_id, Verdict shadow, Verdict enforced);

    /// record() for a caller that already holds the id's slot in index(): the Enforcer looks
    /// the id up once per decision. std::out_of_range for a slot the index gave no id.
    bool record_slot(std::uint32_t slot, Verdict shadow, Verdict enforced);
    /// record_slot() for a caller on the hot path: at `now`, a reading of clock() it took, and
    /// to `shard`, this thread's local_shard() that it keeps (see PolicyWindows), so that a
    /// decision that also writes windows of its own reads the clock once and looks up nothing.
    bool record_slot(PolicyWindows::Shard& shard, std::uint32_t slot, Verdict shadow,
                     Verdict enforced, double now) {
        check_held(slot);
        const bool drift = shadow != enforced;
        windows_->add(shard, slot, drift ? 1 : 0, 1, now);
        return drift;
    }
    /// This thread's shard of the tracker's windows.
    PolicyWindows::Shard& local_shard() { return windows_->local_shard(); }

    /// Records pairs of verdict codes (0 ok, 1 warn, 2 fail) and returns the drift count. The
    /// spans must be of equal length and every code valid, else std::invalid_argument naming
    /// the first bad one, with nothing of the batch recorded.
    std::uint64_t record_batch(std::string_view policy_id, std::span<const std::uint8_t> shadow,
                               std::span<const std::uint8_t> enforced);

    /// (drift, total) in a window, across all policies or for one. An id that was never
    /// admitted has (0, 0), whether it was never seen or was counted past max_policies; those
    /// are read as policy "__overflow__".
    WindowCounts counts(std::string_view window,
                        std::optional<std::string_view> policy_id = std::nullopt) const;
    double ratio(std::string_view window,
                 std::optional<std::string_view> policy_id = std::nullopt) const;

    /// Seconds until the newest drift in a window (any policy) has left it, at the latest;
    /// nullopt when the window holds no drift.
    std::optional<double> drift_leaves_in(std::string_view window) const;

    /// Policy ids seen, in order of arrival, then "__overflow__" if the cap was hit.
    std::vector<std::string> policies() const { return index_->ids(); }

    /// Empties every window. Policy ids keep their slots, as their metric series do.
    void reset() { windows_->reset(); }

    const std::vector<WindowSpec>& windows() const { return windows_->windows(); }
    const std::shared_ptr<const Clock>& clock() const { return windows_->clock(); }
    const std::shared_ptr<MetricsRegistry>& registry() const { return registry_; }
    /// Shared with the Enforcer, so both label the same ids the same way.
    const std::shared_ptr<PolicyIndex>& index() const { return index_; }

  private:
    void add(std::uint32_t slot, std::uint64_t drift, std::uint64_t total);
    void check_held(std::uint32_t slot) const {
        // A slot no id holds yet would count for whichever id takes it later.
        if (!index_->holds(slot)) throw_not_held(slot);
    }
    [[noreturn]] static void throw_not_held(std::uint32_t slot);

    class WindowExport;

    std::shared_ptr<PolicyIndex> index_;
    std::shared_ptr<PolicyWindows> windows_;
    std::shared_ptr<MetricsRegistry> registry_;
    std::shared_ptr<WindowExport> export_;
};

}  // namespace driftgate

#include "driftgate/signature_lru.hpp"

#include <array>
#include <mutex>
#include <stdexcept>
#include <string>

#include "driftgate/lru_map.hpp"
#include "driftgate/spin_mutex.hpp"

namespace driftgate {

namespace {

std::shared_ptr<MetricsRegistry> or_default(std::shared_ptr<MetricsRegistry> registry) {
    return registry ? std::move(registry) : MetricsRegistry::default_registry();
}

/// A count kept under its owner's lock and published to a prometheus counter at scrape time,
/// so the hot path pays a plain increment instead of an atomic one on a shared counter.
struct DeferredCount {
    explicit DeferredCount(prometheus::Counter& target) : counter(&target) {}

    void publish() {
        counter->Increment(static_cast<double>(count - published));
        published = count;
    }

    prometheus::Counter* counter;
    std::uint64_t count = 0;
    std::uint64_t published = 0;
};

/// An LruMap behind a spin mutex (its sections are O(1) and short), with counts published
/// before each scrape.
template <typename Value, std::size_t Counts>
struct LockedLru : ScrapeHook {
    LockedLru(std::size_t capacity, std::array<DeferredCount, Counts> deferred)
        : lru(capacity), counts(deferred) {}

    void before_scrape() override {
        std::lock_guard lock(mutex);
        for (auto& count : counts) count.publish();
    }

    mutable SpinMutex mutex;
    LruMap<Value> lru;
    std::array<DeferredCount, Counts> counts;
};

template <typename State>
std::shared_ptr<State> registered(std::shared_ptr<State> state, MetricsRegistry& registry) {
    registry.add_scrape_hook(state);
    return state;
}

std::size_t checked_capacity(std::size_t capacity) {
    validate_signature_capacity(capacity);
    return capacity;
}

}  // namespace

void validate_signature_capacity(std::size_t capacity) {
    if (capacity < 1 || capacity > kMaxSignatureCapacity) {
        throw std::invalid_argument("capacity=" + std::to_string(capacity) + ": expected 1.." +
                                    std::to_string(kMaxSignatureCapacity));
    }
}

struct SignatureLRU::State : LockedLru<bool, 2> {
    using LockedLru::LockedLru;
    DeferredCount& runs() { return counts[0]; }
    DeferredCount& unique() { return counts[1]; }
};

SignatureLRU::SignatureLRU(std::size_t capacity, std::shared_ptr<MetricsRegistry> registry)
    : registry_(or_default(std::move(registry))),
      state_(registered(
          std::make_shared<State>(
              checked_capacity(capacity),
              std::array{DeferredCount(registry_->counter(metrics::kSignatureRuns).Add({})),
                         DeferredCount(registry_->counter(metrics::kSignatureUnique).Add({}))}),
          *registry_)) {}

SignatureLRU::~SignatureLRU() {
    state_->before_scrape();  // counts made since the last scrape are not lost
}

bool SignatureLRU::is_new(std::string_view signature) {
    std::lock_guard lock(state_->mutex);
    const bool fresh = state_->lru.touch_or_insert(signature, true) == nullptr;
    ++state_->runs().count;
    if (fresh) ++state_->unique().count;
    return fresh;
}

bool SignatureLRU::contains(std::string_view signature) const {
    std::lock_guard lock(state_->mutex);
    return state_->lru.peek(signature) != nullptr;
}

std::size_t SignatureLRU::size() const {
    std::lock_guard lock(state_->mutex);
    return state_->lru.size();
}

std::size_t SignatureLRU::capacity() const { return state_->lru.capacity(); }

void SignatureLRU::clear() {
    std::lock_guard lock(state_->mutex);
    state_->lru.clear();
}

struct DeterminismProbe::State : LockedLru<std::string, 1> {
    using LockedLru::LockedLru;
    DeferredCount& mismatches() { return counts[0]; }
};

DeterminismProbe::DeterminismProbe(std::size_t capacity, std::shared_ptr<MetricsRegistry> registry)
    : registry_(or_default(std::move(registry))),
      state_(registered(
          std::make_shared<State>(
              checked_capacity(capacity),
              std::array{DeferredCount(registry_->counter(metrics::kSignatureMismatch).Add({}))}),
          *registry_)) {}

DeterminismProbe::~DeterminismProbe() { state_->before_scrape(); }

bool DeterminismProbe::observe(std::string_view input_fingerprint, std::string_view signature) {
    std::lock_guard lock(state_->mutex);
    // The signature is copied only for a new input; a known one is compared in place.
    if (const std::string* reference = state_->lru.touch(input_fingerprint)) {
        if (*reference == signature) return true;
        ++state_->mismatches().count;
        return false;
    }
    state_->lru.touch_or_insert(input_fingerprint, std::string(signature));
    return true;
}

std::size_t DeterminismProbe::size() const {
    std::lock_guard lock(state_->mutex);
    return state_->lru.size();
}

std::size_t DeterminismProbe::capacity() const { return state_->lru.capacity(); }

void DeterminismProbe::clear() {
    std::lock_guard lock(state_->mutex);
    state_->lru.clear();
}

}  // namespace driftgate

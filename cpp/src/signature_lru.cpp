#include "driftgate/signature_lru.hpp"

#include <stdexcept>
#include <string>

namespace driftgate {

namespace {

std::shared_ptr<MetricsRegistry> or_default(std::shared_ptr<MetricsRegistry> registry) {
    return registry ? std::move(registry) : MetricsRegistry::default_registry();
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

SignatureLRU::SignatureLRU(std::size_t capacity, std::shared_ptr<MetricsRegistry> registry)
    : lru_(checked_capacity(capacity)),
      registry_(or_default(std::move(registry))),
      runs_(registry_->counter(metrics::kSignatureRuns).Add({})),
      unique_(registry_->counter(metrics::kSignatureUnique).Add({})) {}

bool SignatureLRU::is_new(std::string_view signature) {
    bool fresh;
    {
        std::lock_guard lock(mutex_);
        fresh = lru_.touch(signature) == nullptr;
        if (fresh) lru_.insert(signature, true);
    }
    runs_.Increment();
    if (fresh) unique_.Increment();
    return fresh;
}

bool SignatureLRU::contains(std::string_view signature) const {
    std::lock_guard lock(mutex_);
    return lru_.peek(signature) != nullptr;
}

std::size_t SignatureLRU::size() const {
    std::lock_guard lock(mutex_);
    return lru_.size();
}

void SignatureLRU::clear() {
    std::lock_guard lock(mutex_);
    lru_.clear();
}

DeterminismProbe::DeterminismProbe(std::size_t capacity, std::shared_ptr<MetricsRegistry> registry)
    : lru_(checked_capacity(capacity)),
      registry_(or_default(std::move(registry))),
      mismatches_(registry_->counter(metrics::kSignatureMismatch).Add({})) {}

bool DeterminismProbe::observe(std::string_view input_fingerprint, std::string_view signature) {
    bool consistent;
    {
        std::lock_guard lock(mutex_);
        if (const std::string* reference = lru_.touch(input_fingerprint)) {
            consistent = *reference == signature;
        } else {
            lru_.insert(input_fingerprint, std::string(signature));
            consistent = true;
        }
    }
    if (!consistent) mismatches_.Increment();
    return consistent;
}

std::size_t DeterminismProbe::size() const {
    std::lock_guard lock(mutex_);
    return lru_.size();
}

void DeterminismProbe::clear() {
    std::lock_guard lock(mutex_);
    lru_.clear();
}

}  // namespace driftgate

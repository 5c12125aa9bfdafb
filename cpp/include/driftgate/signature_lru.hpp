#pragma once

#include <cstddef>
#include <memory>
#include <string_view>

#include "driftgate/metrics_registry.hpp"

namespace driftgate {

/// Capacity bounds shared by SignatureLRU and DeterminismProbe.
inline constexpr std::size_t kMaxSignatureCapacity = 10'000'000;
/// Throws std::invalid_argument unless 1 <= capacity <= kMaxSignatureCapacity.
void validate_signature_capacity(std::size_t capacity);

/// Answers "is this solution signature new among the `capacity` most recently seen distinct
/// signatures?" and counts solver_signature_runs_total / solver_signature_unique_total.
/// Thread-safe: a spin mutex held for O(1) work; the counts reach the registry at each scrape.
class SignatureLRU {
  public:
    explicit SignatureLRU(std::size_t capacity = 5000,
                          std::shared_ptr<MetricsRegistry> registry = nullptr);
    ~SignatureLRU();

    /// True when `signature` is not among the recent ones; marks it most recent either way.
    bool is_new(std::string_view signature);
    /// Whether `signature` is among the recent ones, without marking it.
    bool contains(std::string_view signature) const;
    std::size_t size() const;
    std::size_t capacity() const;
    void clear();

  private:
    struct State;
    std::shared_ptr<MetricsRegistry> registry_;
    std::shared_ptr<State> state_;
};

/// Checks that the same input gives the same solution signature: remembers the first
/// signature of each of the `capacity` most recent inputs and counts
/// solver_signature_mismatch_total when an input comes back with another.
/// Thread-safe: a spin mutex held for O(1) work; the count reaches the registry at each scrape.
class DeterminismProbe {
  public:
    explicit DeterminismProbe(std::size_t capacity = 5000,
                              std::shared_ptr<MetricsRegistry> registry = nullptr);
    ~DeterminismProbe();

    /// False when `input_fingerprint` was seen before with a different signature. The first
    /// signature seen stays the reference, so a flapping solver keeps being reported.
    bool observe(std::string_view input_fingerprint, std::string_view signature);
    std::size_t size() const;
    std::size_t capacity() const;
    void clear();

  private:
    struct State;
    std::shared_ptr<MetricsRegistry> registry_;
    std::shared_ptr<State> state_;
};

}  // namespace driftgate

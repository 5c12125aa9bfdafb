#pragma once

#include <cstdint>

namespace driftgate {

/// The standard normal quantile: x with P(Z <= x) = p, for p in (0, 1) (Acklam's rational
/// approximation refined by one Halley step, accurate to about 1e-15).
double normal_quantile(double p);

/// One-sided Wilson score bounds of a proportion `events / total` at `confidence` (e.g. 0.95):
/// the lower bound is exceeded by the true proportion with that confidence, and the upper bound
/// exceeds it with that confidence. An empty sample gives (0, 1).
struct WilsonBounds {
    double lower;
    double upper;
};
WilsonBounds wilson_bounds(std::uint64_t events, std::uint64_t total, double confidence);

/// Throws std::invalid_argument unless 0.5 <= confidence < 1 (and not NaN).
void validate_confidence(double confidence);

}  // namespace driftgate

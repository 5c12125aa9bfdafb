#include "driftgate/statistics.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "format.hpp"

namespace driftgate {

double normal_quantile(double p) {
    if (!(p > 0.0 && p < 1.0)) {
        throw std::invalid_argument("normal_quantile needs 0 < p < 1, got " +
                                    detail::format_number(p));
    }
    // Peter Acklam's coefficients.
    constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                            1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
    constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                            6.680131188771972e+01, -1.328068155288572e+01};
    constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                            -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
    constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                            3.754408661907416e+00};
    constexpr double low = 0.02425;
    double x;
    if (p < low) {
        const double q = std::sqrt(-2 * std::log(p));
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    } else if (p <= 1 - low) {
        const double q = p - 0.5;
        const double r = q * q;
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
    } else {
        const double q = std::sqrt(-2 * std::log(1 - p));
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    }
    // One Halley step against the exact CDF.
    const double e = 0.5 * std::erfc(-x / std::sqrt(2.0)) - p;
    const double u = e * std::sqrt(2 * M_PI) * std::exp(x * x / 2);
    return x - u / (1 + x * u / 2);
}

void validate_confidence(double confidence) {
    if (!(confidence >= 0.5 && confidence < 1.0)) {
        throw std::invalid_argument("confidence=" + detail::format_number(confidence) +
                                    ": expected a number in [0.5, 1)");
    }
}

WilsonBounds wilson_bounds(std::uint64_t events, std::uint64_t total, double confidence) {
    validate_confidence(confidence);
    if (events > total) {
        throw std::invalid_argument("wilson_bounds: events=" + std::to_string(events) +
                                    " exceeds total=" + std::to_string(total));
    }
    if (total == 0) return {0.0, 1.0};
    const double z = normal_quantile(confidence);
    const double n = static_cast<double>(total);
    const double p = static_cast<double>(events) / n;
    const double z2 = z * z;
    const double centre = (p + z2 / (2 * n)) / (1 + z2 / n);
    const double spread = z / (1 + z2 / n) * std::sqrt(p * (1 - p) / n + z2 / (4 * n * n));
    return {std::max(0.0, centre - spread), std::min(1.0, centre + spread)};
}

}  // namespace driftgate

#pragma once

// Formatting of values for error messages, so every message shows a value the same way.

#include <cmath>
#include <cstdio>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>

namespace driftgate::detail {

/// A double as a short, exact-enough literal: 0.005, 1e+300, nan, inf.
inline std::string format_number(double value) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.12g", value);
    return buffer;
}

/// Text quoted for an error message, cut after 80 characters so a huge value stays readable.
inline std::string quote(std::string_view text) {
    constexpr std::size_t kShown = 80;
    std::string out = "'";
    out.append(text.substr(0, kShown));
    if (text.size() > kShown) out.append("...");
    out.append("'");
    return out;
}

/// A fraction as a percent with three decimals, as Python's f"{x:.3%}": 0.006 -> "0.600%".
inline std::string format_percent(double fraction) {
    char buffer[48];
    std::snprintf(buffer, sizeof buffer, "%.3f%%", fraction * 100);
    return buffer;
}

/// Seconds as Python's str(timedelta): "23:00:00", "1 day, 0:00:00", "0:00:01.500000".
inline std::string format_duration(double seconds) {
    const bool negative = seconds < 0;
    const auto micros_total = static_cast<long long>(std::llround(std::fabs(seconds) * 1e6));
    long long micros = micros_total % 1000000;
    long long whole = micros_total / 1000000;
    const long long days = whole / 86400;
    whole %= 86400;
    char buffer[96];
    int n = 0;
    if (days != 0) {
        n = std::snprintf(buffer, sizeof buffer, "%s%lld day%s, ", negative ? "-" : "", days,
                          days == 1 ? "" : "s");
    } else if (negative) {
        n = std::snprintf(buffer, sizeof buffer, "-");
    }
    n += std::snprintf(buffer + n, sizeof buffer - static_cast<std::size_t>(n),
                       "%lld:%02lld:%02lld", whole / 3600, (whole / 60) % 60, whole % 60);
    if (micros != 0) {
        std::snprintf(buffer + n, sizeof buffer - static_cast<std::size_t>(n), ".%06lld", micros);
    }
    return buffer;
}

/// Unix seconds as ISO 8601 UTC with microseconds: "2026-11-22T15:04:05.123456Z".
inline std::string format_iso8601(double unix_seconds) {
    const double whole = std::floor(unix_seconds);
    auto micros = static_cast<long long>(std::llround((unix_seconds - whole) * 1e6));
    auto seconds = static_cast<std::time_t>(whole);
    if (micros >= 1000000) {
        micros -= 1000000;
        seconds += 1;
    }
    std::tm utc{};
    gmtime_r(&seconds, &utc);
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ",
                  utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min,
                  utc.tm_sec, micros);
    return buffer;
}

/// Parses what format_iso8601 writes (also without fraction, and with "+00:00" for "Z");
/// nullopt for anything else.
inline std::optional<double> parse_iso8601(std::string_view text) {
    std::tm utc{};
    int consumed = 0;
    const std::string copy(text);
    if (std::sscanf(copy.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &utc.tm_year, &utc.tm_mon,
                    &utc.tm_mday, &utc.tm_hour, &utc.tm_min, &utc.tm_sec, &consumed) != 6 ||
        consumed != 19) {
        return std::nullopt;
    }
    std::string_view rest = text.substr(19);
    double fraction = 0;
    if (!rest.empty() && rest.front() == '.') {
        std::size_t digits = 1;
        while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') ++digits;
        if (digits == 1) return std::nullopt;
        fraction = std::stod(std::string("0") + std::string(rest.substr(0, digits)));
        rest.remove_prefix(digits);
    }
    if (rest != "Z" && rest != "+00:00") return std::nullopt;
    if (utc.tm_mon < 1 || utc.tm_mon > 12 || utc.tm_mday < 1 || utc.tm_mday > 31 ||
        utc.tm_hour > 23 || utc.tm_min > 59 || utc.tm_sec > 60) {
        return std::nullopt;
    }
    utc.tm_year -= 1900;
    utc.tm_mon -= 1;
    return static_cast<double>(timegm(&utc)) + fraction;
}

}  // namespace driftgate::detail

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

inline std::string printable(std::string_view text);

/// Text quoted for an error message, cut after 80 characters so a huge value stays readable,
/// with bytes that are not printable ASCII escaped.
inline std::string quote(std::string_view text) {
    constexpr std::size_t kShown = 80;
    std::string out = "'";
    out.append(printable(text.substr(0, kShown)));
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

/// Parses what format_iso8601 writes, strictly: "YYYY-MM-DDTHH:MM:SS", an optional fraction of
/// 1 to 9 digits, then "Z" or "+00:00"; a real calendar day of the years 1970 to 9999 (every
/// such time is a Python datetime) and no leap second. nullopt for anything else.
inline std::optional<double> parse_iso8601(std::string_view text) {
    auto digits = [&](std::size_t at, std::size_t count) -> std::optional<int> {
        if (at + count > text.size()) return std::nullopt;
        int value = 0;
        for (std::size_t i = at; i < at + count; ++i) {
            if (text[i] < '0' || text[i] > '9') return std::nullopt;
            value = value * 10 + (text[i] - '0');
        }
        return value;
    };
    auto is = [&](std::size_t at, char c) { return at < text.size() && text[at] == c; };
    const auto year = digits(0, 4), month = digits(5, 2), day = digits(8, 2);
    const auto hour = digits(11, 2), minute = digits(14, 2), second = digits(17, 2);
    if (!year || !month || !day || !hour || !minute || !second || !is(4, '-') || !is(7, '-') ||
        !is(10, 'T') || !is(13, ':') || !is(16, ':')) {
        return std::nullopt;
    }
    if (*year < 1970 || *month < 1 || *month > 12 || *hour > 23 || *minute > 59 || *second > 59) {
        return std::nullopt;
    }
    const bool leap = (*year % 4 == 0 && *year % 100 != 0) || *year % 400 == 0;
    constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const int month_days = kDays[*month - 1] + (*month == 2 && leap ? 1 : 0);
    if (*day < 1 || *day > month_days) return std::nullopt;
    std::size_t at = 19;
    double fraction = 0;
    if (is(at, '.')) {
        ++at;
        double scale = 0.1;
        const std::size_t first = at;
        while (at < text.size() && text[at] >= '0' && text[at] <= '9' && at - first < 9) {
            fraction += (text[at] - '0') * scale;
            scale /= 10;
            ++at;
        }
        if (at == first) return std::nullopt;
    }
    const std::string_view zone = text.substr(at);
    if (zone != "Z" && zone != "+00:00") return std::nullopt;
    std::tm utc{};
    utc.tm_year = *year - 1900;
    utc.tm_mon = *month - 1;
    utc.tm_mday = *day;
    utc.tm_hour = *hour;
    utc.tm_min = *minute;
    utc.tm_sec = *second;
    return static_cast<double>(timegm(&utc)) + fraction;
}

/// Text safe in any message: printable ASCII kept, every other byte as \xNN, so bytes from a
/// file can never make the message invalid UTF-8.
inline std::string printable(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (unsigned char c : text) {
        if (c >= 32 && c < 127) {
            out += static_cast<char>(c);
        } else {
            char escaped[5];
            std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
            out += escaped;
        }
    }
    return out;
}

}  // namespace driftgate::detail

#pragma once

// Formatting of values for error messages, so every message shows a value the same way.

#include <cstdio>
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

}  // namespace driftgate::detail

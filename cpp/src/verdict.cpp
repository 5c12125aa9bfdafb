#include "driftgate/verdict.hpp"

#include <stdexcept>
#include <string>

#include "format.hpp"

namespace driftgate {

namespace {

bool equals_ignoring_case(std::string_view text, std::string_view lower) noexcept {
    if (text.size() != lower.size()) return false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        if (c != lower[i]) return false;
    }
    return true;
}

}  // namespace

std::optional<Verdict> parse_verdict(std::string_view text) noexcept {
    if (equals_ignoring_case(text, "ok")) return Verdict::Ok;
    if (equals_ignoring_case(text, "warn")) return Verdict::Warn;
    if (equals_ignoring_case(text, "fail")) return Verdict::Fail;
    return std::nullopt;
}

Verdict verdict_from_string(std::string_view text) {
    if (auto verdict = parse_verdict(text)) return *verdict;
    throw std::invalid_argument("invalid verdict " + detail::quote(text) +
                                ": expected 'ok', 'warn' or 'fail' (any case)");
}

std::string_view to_string(Verdict verdict) noexcept {
    switch (verdict) {
        case Verdict::Ok:
            return "ok";
        case Verdict::Warn:
            return "warn";
        case Verdict::Fail:
            return "fail";
    }
    return "fail";
}

}  // namespace driftgate

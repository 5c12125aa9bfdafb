#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace driftgate {

/// The outcome of evaluating a policy. The numeric codes are the wire format of
/// `record_batch` buffers and never change.
enum class Verdict : std::uint8_t { Ok = 0, Warn = 1, Fail = 2 };

inline constexpr std::uint8_t kVerdictCodeLimit = 3;

/// "ok", "warn", "fail" in any case; anything else is nullopt.
std::optional<Verdict> parse_verdict(std::string_view text) noexcept;

/// Parses like parse_verdict, or throws std::invalid_argument naming the text.
Verdict verdict_from_string(std::string_view text);

std::string_view to_string(Verdict verdict) noexcept;

}  // namespace driftgate

#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace driftgate {

/// What one pass over pairs of verdict codes (record_batch's buffers) finds.
struct BatchScan {
    std::uint64_t drift = 0;  // pairs whose two codes differ
    bool valid = true;        // every code below kVerdictCodeLimit

    bool operator==(const BatchScan&) const = default;
};

/// One way of scanning pairs of verdict codes: counting the pairs that differ and checking
/// every code in the same pass. `shadow` and `enforced` hold `n` codes each, at any alignment.
struct BatchScanner {
    const char* name;
    BatchScan (*scan)(const std::uint8_t* shadow, const std::uint8_t* enforced,
                      std::size_t n) noexcept;
};

/// The scanners this CPU runs, the fastest first: on x86-64, "avx2" where the CPU has it and
/// "sse2" (every x86-64 has it), then "scalar", which is there on every platform. All of them
/// answer the same for the same input; the first is the one scan_batch uses, chosen once, at
/// run time, so one build runs on any x86-64.
std::span<const BatchScanner> batch_scanners() noexcept;

/// The pairs of `shadow` and `enforced` (of equal length) that differ, and whether every code
/// is valid, with the fastest scanner this CPU runs.
BatchScan scan_batch(std::span<const std::uint8_t> shadow,
                     std::span<const std::uint8_t> enforced) noexcept;

}  // namespace driftgate

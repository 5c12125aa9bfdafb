#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace driftgate {

// Hashing and comparing the short byte strings that key in-memory tables (policy ids,
// signatures).

/// A fast, well-mixed 64-bit hash of a byte string for in-memory tables (8 bytes a step, then
/// a final mix). Not stable across versions and not for sampling: that is murmur3_x86_32.
inline std::uint64_t hash_bytes(std::string_view bytes) noexcept {
    constexpr std::uint64_t kMul1 = 0xbf58476d1ce4e5b9ULL;
    constexpr std::uint64_t kMul2 = 0x94d049bb133111ebULL;
    std::uint64_t h = 0x9e3779b97f4a7c15ULL ^ bytes.size();
    const char* p = bytes.data();
    std::size_t n = bytes.size();
    for (; n >= 8; p += 8, n -= 8) {
        std::uint64_t word;
        std::memcpy(&word, p, 8);
        h = (h ^ word) * kMul1;
        h ^= h >> 31;
    }
    std::uint64_t tail = 0;
    for (std::size_t i = 0; i < n; ++i) {
        tail |= static_cast<std::uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
    }
    h = (h ^ tail) * kMul2;
    return h ^ (h >> 29);
}

/// Byte equality for short strings: an inline loop of 8-byte words, cheaper than a call to
/// memcmp when the hashes already matched and the answer is nearly always yes.
inline bool equal_bytes(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) return false;
    std::size_t i = 0;
    for (; i + 8 <= a.size(); i += 8) {
        std::uint64_t x;
        std::uint64_t y;
        std::memcpy(&x, a.data() + i, 8);
        std::memcpy(&y, b.data() + i, 8);
        if (x != y) return false;
    }
    for (; i < a.size(); ++i) {
        if (a[i] != b[i]) return false;
    }
    return true;
}

}  // namespace driftgate

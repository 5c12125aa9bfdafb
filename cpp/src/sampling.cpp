#include "driftgate/sampling.hpp"

namespace driftgate {

namespace {

constexpr std::uint32_t rotl32(std::uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

constexpr std::uint32_t fmix32(std::uint32_t h) {
    h ^= h >> 16;
    h *= 0x85ebca6bU;
    h ^= h >> 13;
    h *= 0xc2b2ae35U;
    h ^= h >> 16;
    return h;
}

std::uint32_t load_le32(const unsigned char* p) {
    return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
           (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}

}  // namespace

std::uint32_t murmur3_x86_32(std::string_view key, std::uint32_t seed) noexcept {
    constexpr std::uint32_t c1 = 0xcc9e2d51U;
    constexpr std::uint32_t c2 = 0x1b873593U;
    const auto* data = reinterpret_cast<const unsigned char*>(key.data());
    const std::size_t blocks = key.size() / 4;

    std::uint32_t h = seed;
    for (std::size_t i = 0; i < blocks; ++i) {
        std::uint32_t k = load_le32(data + 4 * i);
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
        h = rotl32(h, 13);
        h = h * 5 + 0xe6546b64U;
    }

    const unsigned char* tail = data + 4 * blocks;
    std::uint32_t k = 0;
    switch (key.size() & 3) {
        case 3:
            k ^= static_cast<std::uint32_t>(tail[2]) << 16;
            [[fallthrough]];
        case 2:
            k ^= static_cast<std::uint32_t>(tail[1]) << 8;
            [[fallthrough]];
        case 1:
            k ^= tail[0];
            k *= c1;
            k = rotl32(k, 15);
            k *= c2;
            h ^= k;
    }

    h ^= static_cast<std::uint32_t>(key.size());
    return fmix32(h);
}

}  // namespace driftgate

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "driftgate/ring_blocks.hpp"

using driftgate::BucketSlot;
using driftgate::RingBlocks;

namespace {

std::uintptr_t address(const BucketSlot* block) { return reinterpret_cast<std::uintptr_t>(block); }

bool zeroed(const BucketSlot* block, std::uint32_t slots) {
    return std::all_of(block, block + slots, [](const BucketSlot& s) {
        return s.tag.load() == 0 && s.events.load() == 0 && s.total.load() == 0;
    });
}

}  // namespace

TEST_CASE("boundary: a huge page's worth of blocks one by one, then chunks of huge pages",
          "[ring_blocks][boundary]") {
    constexpr std::uint32_t kSlots = 3 * 60 + 1;  // the default windows and the lifetime slot
    RingBlocks blocks(kSlots);
    REQUIRE(blocks.block_bytes() == kSlots * sizeof(BucketSlot));
    REQUIRE(blocks.chunk_bytes() == RingBlocks::kHugePageBytes);
    REQUIRE(blocks.single_blocks() == RingBlocks::kHugePageBytes / blocks.block_bytes());
    REQUIRE(blocks.single_blocks() == 482);  // 2 MiB / 4,344 bytes
    REQUIRE(blocks.blocks_per_chunk() == 482);

    std::vector<BucketSlot*> got;
    for (std::size_t i = 0; i < blocks.single_blocks(); ++i) got.push_back(blocks.allocate());
    CHECK(blocks.chunks() == 0);  // the last single block is still no chunk's

    got.push_back(blocks.allocate());  // one past: the first chunk's first block
    CHECK(blocks.chunks() == 1);
    CHECK(address(got.back()) % RingBlocks::kHugePageBytes == 0);
    while (got.size() < blocks.single_blocks() + blocks.blocks_per_chunk()) {
        got.push_back(blocks.allocate());
        CHECK(address(got.back()) == address(got[got.size() - 2]) + blocks.block_bytes());
    }
    CHECK(blocks.chunks() == 1);  // the chunk's last block
    got.push_back(blocks.allocate());
    CHECK(blocks.chunks() == 2);  // and one more starts the next chunk
    CHECK(address(got.back()) % RingBlocks::kHugePageBytes == 0);

    // Every block zeroed and apart from every other one.
    for (const BucketSlot* block : got) CHECK(zeroed(block, kSlots));
    std::vector<std::uintptr_t> starts;
    for (const BucketSlot* block : got) starts.push_back(address(block));
    std::sort(starts.begin(), starts.end());
    for (std::size_t i = 1; i < starts.size(); ++i) {
        CHECK(starts[i] - starts[i - 1] >= blocks.block_bytes());
    }
    // Written through, each keeps its own counts.
    for (std::size_t i = 0; i < got.size(); ++i) got[i][kSlots - 1].total.store(i + 1);
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i][kSlots - 1].total.load() == i + 1);
}

TEST_CASE("boundary: a block larger than a huge page takes a chunk of whole huge pages",
          "[ring_blocks][boundary]") {
    const auto just_over =
        static_cast<std::uint32_t>(RingBlocks::kHugePageBytes / sizeof(BucketSlot) + 1);
    RingBlocks big(just_over);
    CHECK(big.chunk_bytes() == 2 * RingBlocks::kHugePageBytes);
    CHECK(big.single_blocks() == 1);
    CHECK(big.blocks_per_chunk() == 1);
    BucketSlot* single = big.allocate();
    BucketSlot* chunked = big.allocate();
    CHECK(big.chunks() == 1);
    CHECK(address(chunked) % RingBlocks::kHugePageBytes == 0);
    CHECK(zeroed(single, just_over));
    CHECK(zeroed(chunked, just_over));
    big.allocate();
    CHECK(big.chunks() == 2);

    // Just under a huge page: a chunk of one, still one block a chunk.
    const auto under = static_cast<std::uint32_t>(RingBlocks::kHugePageBytes / sizeof(BucketSlot));
    RingBlocks page(under);
    CHECK(page.chunk_bytes() == RingBlocks::kHugePageBytes);
    CHECK(page.blocks_per_chunk() == 1);
}

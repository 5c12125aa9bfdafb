#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "driftgate/rolling_window.hpp"

namespace driftgate {

/// The blocks of one writer's rings (every window's ring of one policy, back to back, as
/// PolicyWindows lays them out), one per policy the writer records. The first blocks are
/// allocated one by one, so a writer of a few policies holds no more than they need. Past a
/// huge page's worth, blocks are cut from chunks of huge-page-aligned memory that the kernel is
/// asked to back with huge pages (madvise MADV_HUGEPAGE, which it follows where transparent
/// huge pages are "madvise" or "always"): a writer spread over thousands of policies then
/// touches a few huge pages instead of a page or more per policy, and its records no longer
/// wait for the TLB. A block is zeroed (every tag 0: no bucket counted) and lives as long as
/// this. Not thread-safe: only the shard's writer allocates.
class RingBlocks {
  public:
    /// One x86-64 huge page; a chunk is a whole number of them and holds at least one block.
    static constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

    explicit RingBlocks(std::uint32_t block_slots);

    RingBlocks(const RingBlocks&) = delete;
    RingBlocks& operator=(const RingBlocks&) = delete;

    BucketSlot* allocate();

    std::size_t block_bytes() const { return block_bytes_; }
    std::size_t chunk_bytes() const { return chunk_bytes_; }
    /// How many blocks are allocated one by one before the chunks take over.
    std::size_t single_blocks() const { return single_blocks_; }
    std::size_t blocks_per_chunk() const { return chunk_bytes_ / block_bytes_; }
    /// How many chunks the blocks so far took.
    std::size_t chunks() const { return chunks_.size(); }

  private:
    struct Free {
        void operator()(void* chunk) const noexcept { std::free(chunk); }
    };

    void new_chunk();

    std::uint32_t block_slots_;
    std::size_t block_bytes_;
    std::size_t chunk_bytes_;
    std::size_t single_blocks_;
    std::vector<std::unique_ptr<BucketSlot[]>> singles_;
    std::vector<std::unique_ptr<void, Free>> chunks_;
    std::byte* next_ = nullptr;  // where the newest chunk's next block starts
    std::size_t left_ = 0;       // bytes left in the newest chunk
};

}  // namespace driftgate

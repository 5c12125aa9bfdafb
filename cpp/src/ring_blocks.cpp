#include "driftgate/ring_blocks.hpp"

#include <algorithm>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace driftgate {

RingBlocks::RingBlocks(std::uint32_t block_slots)
    : block_slots_(block_slots),
      block_bytes_(block_slots_ * sizeof(BucketSlot)),
      // Whole huge pages, at least one block.
      chunk_bytes_((block_bytes_ + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes),
      single_blocks_(std::max<std::size_t>(1, kHugePageBytes / block_bytes_)) {}

BucketSlot* RingBlocks::allocate() {
    if (singles_.size() < single_blocks_) {
        singles_.push_back(std::make_unique<BucketSlot[]>(block_slots_));
        return singles_.back().get();
    }
    if (left_ < block_bytes_) new_chunk();
    auto* block = reinterpret_cast<BucketSlot*>(next_);
    std::uninitialized_default_construct_n(block, block_slots_);  // zeroed atomics
    next_ += block_bytes_;
    left_ -= block_bytes_;
    return std::launder(block);
}

void RingBlocks::new_chunk() {
    chunks_.reserve(chunks_.size() + 1);  // so that a chunk allocated is never lost
    void* chunk = std::aligned_alloc(kHugePageBytes, chunk_bytes_);
    if (chunk == nullptr) throw std::bad_alloc();
    chunks_.emplace_back(chunk);
#if defined(MADV_HUGEPAGE)
    // Advice: refused (a kernel without transparent huge pages), the chunk is plain pages.
    ::madvise(chunk, chunk_bytes_, MADV_HUGEPAGE);
#endif
    next_ = static_cast<std::byte*>(chunk);
    left_ = chunk_bytes_;
}

}  // namespace driftgate

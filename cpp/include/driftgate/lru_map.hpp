#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "driftgate/hash.hpp"

namespace driftgate {

/// A map from string keys to values that keeps only the `capacity` most recently used keys.
///
/// Laid out for few cache misses per lookup: an open-addressing table of 8-byte (hash tag,
/// node) buckets; nodes in fixed-size chunks (stable, found by shift and mask) holding short
/// keys inline; and the recency list's links in their own dense array, so moving a node to the
/// front touches 8-byte links, not three scattered nodes.
/// Not thread-safe: its owners (SignatureLRU, DeterminismProbe) lock around it.
template <typename Value>
class LruMap {
  public:
    explicit LruMap(std::size_t capacity) : capacity_(capacity), table_(kMinTable) {}

    std::size_t capacity() const { return capacity_; }
    std::size_t size() const { return size_; }

    /// The value of `key` without making it most recent; nullptr when absent.
    const Value* peek(std::string_view key) const {
        const std::uint32_t node = find(key, hash_bytes(key));
        return node == kNone ? nullptr : &at(node).value;
    }

    /// The value of `key`, made most recent; nullptr when absent.
    Value* touch(std::string_view key) { return touch(key, hash_bytes(key)); }

    /// Touches `key` if present (returns its value), else inserts it as most recent with
    /// `value`, evicting the least recent key when full (returns nullptr). One hash for both.
    Value* touch_or_insert(std::string_view key, Value value) {
        const std::uint64_t hash = hash_bytes(key);
        if (Value* found = touch(key, hash)) return found;
        insert(key, hash, std::move(value));
        return nullptr;
    }

    void clear() {
        chunks_.clear();
        links_.clear();
        size_ = 0;
        head_ = tail_ = kNone;
        table_.assign(kMinTable, Bucket{});
    }

  private:
    static constexpr std::uint32_t kNone = UINT32_MAX;
    static constexpr std::size_t kChunkBits = 10;
    static constexpr std::size_t kChunkSize = std::size_t{1} << kChunkBits;
    static constexpr std::size_t kMinTable = 64;

    /// A key stored inline when short (most signatures and fingerprints), on the heap else.
    class Key {
      public:
        std::string_view view() const { return {heap_ ? heap_.get() : inline_, length_}; }

        void assign(std::string_view key) {
            length_ = key.size();
            if (key.size() <= sizeof inline_) {
                heap_.reset();
                std::memcpy(inline_, key.data(), key.size());
            } else {
                heap_ = std::make_unique<char[]>(key.size());
                std::memcpy(heap_.get(), key.data(), key.size());
            }
        }

      private:
        std::unique_ptr<char[]> heap_;
        std::size_t length_ = 0;
        char inline_[40] = {};
    };

    struct Node {
        Key key;
        Value value{};
        std::uint64_t hash = 0;
    };

    struct Links {
        std::uint32_t prev = kNone;
        std::uint32_t next = kNone;
    };

    /// The high half of the hash, to skip non-matching nodes; the low half picks the home.
    struct Bucket {
        std::uint32_t tag = 0;
        std::uint32_t node = kNone;
    };

    static std::uint32_t tag_of(std::uint64_t hash) {
        return static_cast<std::uint32_t>(hash >> 32);
    }

    Node& at(std::uint32_t node) { return chunks_[node >> kChunkBits][node & (kChunkSize - 1)]; }
    const Node& at(std::uint32_t node) const {
        return chunks_[node >> kChunkBits][node & (kChunkSize - 1)];
    }

    std::size_t home(std::uint64_t hash) const { return hash & (table_.size() - 1); }

    std::uint32_t find(std::string_view key, std::uint64_t hash) const {
        const std::uint32_t tag = tag_of(hash);
        for (std::size_t i = home(hash);; i = (i + 1) & (table_.size() - 1)) {
            const Bucket& bucket = table_[i];
            if (bucket.node == kNone) return kNone;
            if (bucket.tag == tag && equal_bytes(at(bucket.node).key.view(), key)) {
                return bucket.node;
            }
        }
    }

    Value* touch(std::string_view key, std::uint64_t hash) {
        const std::uint32_t node = find(key, hash);
        if (node == kNone) return nullptr;
        if (node != head_) {
            unlink(node);
            link_front(node);
        }
        return &at(node).value;
    }

    void insert(std::string_view key, std::uint64_t hash, Value value) {
        std::uint32_t node;
        if (size_ < capacity_) {
            node = static_cast<std::uint32_t>(size_++);
            if ((node >> kChunkBits) == chunks_.size()) {
                chunks_.push_back(std::make_unique<Node[]>(kChunkSize));
            }
            links_.emplace_back();
            // Grown at half full, so probe runs stay short.
            if (2 * size_ > table_.size()) rehash(2 * table_.size());
        } else {
            node = tail_;
            unlink(node);
            erase_bucket(at(node).hash, node);
        }
        Node& n = at(node);
        n.key.assign(key);
        n.value = std::move(value);
        n.hash = hash;
        place(hash, node);
        link_front(node);
    }

    void place(std::uint64_t hash, std::uint32_t node) {
        std::size_t i = home(hash);
        while (table_[i].node != kNone) i = (i + 1) & (table_.size() - 1);
        table_[i] = {tag_of(hash), node};
    }

    /// Removes a node's bucket and shifts its probe run back, so no tombstones pile up.
    void erase_bucket(std::uint64_t hash, std::uint32_t node) {
        const std::size_t mask = table_.size() - 1;
        std::size_t i = home(hash);
        while (table_[i].node != node) i = (i + 1) & mask;
        for (std::size_t j = (i + 1) & mask; table_[j].node != kNone; j = (j + 1) & mask) {
            const std::size_t want = home(at(table_[j].node).hash);
            // Move j back to the hole at i unless its home lies cyclically in (i, j].
            if (((j - want) & mask) >= ((j - i) & mask)) {
                table_[i] = table_[j];
                i = j;
            }
        }
        table_[i] = Bucket{};
    }

    void rehash(std::size_t buckets) {
        std::vector<Bucket> old = std::exchange(table_, std::vector<Bucket>(buckets));
        for (const Bucket& bucket : old) {
            if (bucket.node != kNone) place(at(bucket.node).hash, bucket.node);
        }
    }

    void unlink(std::uint32_t node) {
        Links& n = links_[node];
        (n.prev == kNone ? head_ : links_[n.prev].next) = n.next;
        (n.next == kNone ? tail_ : links_[n.next].prev) = n.prev;
        n.prev = n.next = kNone;
    }

    void link_front(std::uint32_t node) {
        Links& n = links_[node];
        n.prev = kNone;
        n.next = head_;
        if (head_ != kNone) links_[head_].prev = node;
        head_ = node;
        if (tail_ == kNone) tail_ = node;
    }

    std::size_t capacity_;
    std::size_t size_ = 0;
    std::vector<std::unique_ptr<Node[]>> chunks_;
    std::vector<Links> links_;
    std::vector<Bucket> table_;
    std::uint32_t head_ = kNone;
    std::uint32_t tail_ = kNone;
};

}  // namespace driftgate

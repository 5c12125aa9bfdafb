#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace driftgate {

/// A map from string keys to values that keeps only the `capacity` most recently used keys.
/// Not thread-safe: its owners (SignatureLRU, DeterminismProbe) lock around it.
template <typename Value>
class LruMap {
  public:
    explicit LruMap(std::size_t capacity) : capacity_(capacity) {
        index_.reserve(std::min<std::size_t>(capacity, kInitialReserve));
    }

    std::size_t capacity() const { return capacity_; }
    std::size_t size() const { return index_.size(); }

    /// The value of `key` without making it most recent; nullptr when absent.
    const Value* peek(std::string_view key) const {
        auto it = index_.find(key);
        return it == index_.end() ? nullptr : &nodes_[it->second].value;
    }

    /// The value of `key`, made most recent; nullptr when absent.
    Value* touch(std::string_view key) {
        auto it = index_.find(key);
        if (it == index_.end()) return nullptr;
        move_to_front(it->second);
        return &nodes_[it->second].value;
    }

    /// Inserts an absent key as most recent, evicting the least recent one when full.
    void insert(std::string_view key, Value value) {
        std::uint32_t node;
        if (index_.size() < capacity_) {
            node = static_cast<std::uint32_t>(nodes_.size());
            nodes_.emplace_back();
        } else {
            node = tail_;
            unlink(node);
            index_.erase(nodes_[node].key);
        }
        nodes_[node].key.assign(key);
        nodes_[node].value = std::move(value);
        // The key view points into the node, whose address a deque never moves.
        index_.emplace(nodes_[node].key, node);
        link_front(node);
    }

    void clear() {
        index_.clear();
        nodes_.clear();
        head_ = tail_ = kNone;
    }

  private:
    static constexpr std::uint32_t kNone = UINT32_MAX;
    // A huge capacity grows its index on demand instead of reserving it all up front.
    static constexpr std::size_t kInitialReserve = std::size_t{1} << 16;

    struct Node {
        std::string key;
        Value value{};
        std::uint32_t prev = kNone;
        std::uint32_t next = kNone;
    };

    void unlink(std::uint32_t node) {
        Node& n = nodes_[node];
        (n.prev == kNone ? head_ : nodes_[n.prev].next) = n.next;
        (n.next == kNone ? tail_ : nodes_[n.next].prev) = n.prev;
        n.prev = n.next = kNone;
    }

    void link_front(std::uint32_t node) {
        Node& n = nodes_[node];
        n.prev = kNone;
        n.next = head_;
        if (head_ != kNone) nodes_[head_].prev = node;
        head_ = node;
        if (tail_ == kNone) tail_ = node;
    }

    void move_to_front(std::uint32_t node) {
        if (node == head_) return;
        unlink(node);
        link_front(node);
    }

    std::size_t capacity_;
    std::deque<Node> nodes_;
    std::unordered_map<std::string_view, std::uint32_t> index_;
    std::uint32_t head_ = kNone;
    std::uint32_t tail_ = kNone;
};

}  // namespace driftgate

#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace driftgate {

/// Maps policy ids to dense slots 0..max_policies-1, and every id past the cap to one overflow
/// slot labelled "__overflow__", so per-policy state and metric labels stay bounded.
/// Thread-safe: lookups of known ids are lock-free; admitting a new id takes a mutex once.
class PolicyIndex {
  public:
    static constexpr std::string_view kOverflowLabel = "__overflow__";
    static constexpr std::size_t kMaxIdLength = 64;

    /// `max_policies` must be in 1..65536.
    explicit PolicyIndex(std::size_t max_policies);

    PolicyIndex(const PolicyIndex&) = delete;
    PolicyIndex& operator=(const PolicyIndex&) = delete;

    /// Throws std::invalid_argument unless `id` is 1-64 characters of [A-Za-z0-9_.:-].
    static void validate(std::string_view id);
    static bool is_valid(std::string_view id) noexcept;

    /// The slot of an id, admitting it while there is room; the overflow slot past the cap.
    /// Validates the id (std::invalid_argument) unless it is already known: only valid ids are
    /// ever admitted, so a hit is valid. "__overflow__" is reserved (std::invalid_argument).
    std::uint32_t slot_for(std::string_view id);

    /// The slots of every id in `ids`, admitting the new ones, all or none: nullopt (nothing
    /// admitted) when the new ones do not fit under max_policies. Validates every id first
    /// (std::invalid_argument; "__overflow__" is reserved).
    std::optional<std::vector<std::uint32_t>> admit_all(const std::vector<std::string>& ids);

    /// How many ids are admitted.
    std::size_t admitted() const noexcept { return admitted_.load(std::memory_order_acquire); }

    /// The slot of an admitted id, without admitting it; "__overflow__" names the overflow
    /// slot. nullopt for any other id: never seen, or counted past the cap under
    /// "__overflow__" only.
    std::optional<std::uint32_t> find(std::string_view id) const;

    /// Whether slot_for has given `slot` out: to an admitted id, or as the overflow slot once
    /// an id overflowed.
    bool holds(std::uint32_t slot) const noexcept {
        if (slot == overflow_slot()) return overflowed_.load(std::memory_order_relaxed);
        return slot < admitted_.load(std::memory_order_acquire);
    }

    std::string_view label(std::uint32_t slot) const;
    std::uint32_t overflow_slot() const { return static_cast<std::uint32_t>(max_policies_); }
    std::size_t slot_count() const { return max_policies_ + 1; }
    std::size_t max_policies() const { return max_policies_; }

    /// Admitted ids in the order they came, then "__overflow__" if anything overflowed.
    std::vector<std::string> ids() const;

  private:
    /// The id is stored inline, so a lookup reads one or two cache lines and no heap string.
    struct Entry {
        std::uint64_t hash;
        std::uint32_t slot;
        std::uint32_t length;
        char bytes[kMaxIdLength];

        std::string_view id() const { return {bytes, length}; }
    };

    const Entry* lookup(std::string_view id, std::uint64_t hash) const noexcept;
    /// Adds a new id (the caller holds mutex_ and has checked there is room).
    std::uint32_t admit_locked(std::string_view id, std::uint64_t hash);
    static void validate_admissible(std::string_view id);
    std::uint32_t mark_overflow() noexcept;

    std::size_t max_policies_;
    std::size_t table_mask_;
    std::unique_ptr<std::atomic<const Entry*>[]> table_;
    std::atomic<std::size_t> admitted_{0};
    std::atomic<bool> overflowed_{false};
    mutable std::mutex mutex_;  // guards entries_ growth
    std::deque<Entry> entries_;
};

}  // namespace driftgate

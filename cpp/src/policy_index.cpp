#include "driftgate/policy_index.hpp"

#include <array>
#include <cstring>
#include <stdexcept>

#include "driftgate/hash.hpp"
#include "format.hpp"

namespace driftgate {

namespace {

constexpr std::array<bool, 256> make_id_alphabet() {
    std::array<bool, 256> allowed{};
    for (int c = 'a'; c <= 'z'; ++c) allowed[c] = true;
    for (int c = 'A'; c <= 'Z'; ++c) allowed[c] = true;
    for (int c = '0'; c <= '9'; ++c) allowed[c] = true;
    for (char c : {'_', '.', ':', '-'}) allowed[static_cast<unsigned char>(c)] = true;
    return allowed;
}

constexpr std::array<bool, 256> kIdAlphabet = make_id_alphabet();

std::size_t table_size_for(std::size_t entries) {
    std::size_t size = 16;
    while (size < 2 * entries) size *= 2;
    return size;
}

}  // namespace

PolicyIndex::PolicyIndex(std::size_t max_policies) : max_policies_(max_policies) {
    if (max_policies < 1 || max_policies > 65536) {
        throw std::invalid_argument("max_policies=" + std::to_string(max_policies) +
                                    ": expected 1..65536");
    }
    const std::size_t size = table_size_for(max_policies + 1);
    table_mask_ = size - 1;
    table_ = std::make_unique<std::atomic<const Entry*>[]>(size);
}

bool PolicyIndex::is_valid(std::string_view id) noexcept {
    if (id.empty() || id.size() > kMaxIdLength) return false;
    for (char c : id) {
        if (!kIdAlphabet[static_cast<unsigned char>(c)]) return false;
    }
    return true;
}

void PolicyIndex::validate(std::string_view id) {
    if (!is_valid(id)) {
        throw std::invalid_argument("invalid policy_id " + detail::quote(id) +
                                    ": expected 1-64 characters of [A-Za-z0-9_.:-]");
    }
}

inline const PolicyIndex::Entry* PolicyIndex::lookup(std::string_view id,
                                                     std::uint64_t hash) const noexcept {
    for (std::size_t i = hash & table_mask_;; i = (i + 1) & table_mask_) {
        const Entry* entry = table_[i].load(std::memory_order_acquire);
        if (entry == nullptr || (entry->hash == hash && equal_bytes(entry->id(), id))) return entry;
    }
}

std::uint32_t PolicyIndex::slot_for(std::string_view id) {
    if (id.size() > kMaxIdLength) validate(id);  // never hash an unbounded string
    const std::uint64_t hash = hash_bytes(id);
    if (const Entry* entry = lookup(id, hash)) return entry->slot;
    validate_admissible(id);
    // Full for good: ids are never forgotten, so this needs no lock. The id may have been
    // admitted since the lookup above, though (it took the last slot): the acquire load makes
    // every admitted entry visible, so a second lookup settles it.
    if (admitted_.load(std::memory_order_acquire) >= max_policies_) {
        if (const Entry* entry = lookup(id, hash)) return entry->slot;
        return mark_overflow();
    }
    std::lock_guard lock(mutex_);
    if (const Entry* entry = lookup(id, hash)) return entry->slot;
    if (admitted_.load(std::memory_order_relaxed) >= max_policies_) return mark_overflow();
    return admit_locked(id, hash);
}

void PolicyIndex::validate_admissible(std::string_view id) {
    validate(id);
    if (id == kOverflowLabel) {
        throw std::invalid_argument(
            "policy_id '__overflow__' is reserved: it labels the ids counted past max_policies");
    }
}

std::optional<std::vector<std::uint32_t>> PolicyIndex::admit_all(
    const std::vector<std::string>& ids) {
    for (const std::string& id : ids) validate_admissible(id);
    std::lock_guard lock(mutex_);
    // Under the mutex, so no other admission can take the room counted here.
    std::size_t unknown = 0;
    for (const std::string& id : ids) unknown += lookup(id, hash_bytes(id)) == nullptr ? 1 : 0;
    if (admitted_.load(std::memory_order_relaxed) + unknown > max_policies_) return std::nullopt;
    std::vector<std::uint32_t> slots;
    slots.reserve(ids.size());
    for (const std::string& id : ids) {
        const std::uint64_t hash = hash_bytes(id);
        const Entry* entry = lookup(id, hash);
        slots.push_back(entry != nullptr ? entry->slot : admit_locked(id, hash));
    }
    return slots;
}

std::uint32_t PolicyIndex::admit_locked(std::string_view id, std::uint64_t hash) {
    const std::size_t admitted = admitted_.load(std::memory_order_relaxed);
    Entry& entry = entries_.emplace_back();
    entry.hash = hash;
    entry.slot = static_cast<std::uint32_t>(admitted);
    entry.length = static_cast<std::uint32_t>(id.size());
    std::memcpy(entry.bytes, id.data(), id.size());
    std::size_t i = hash & table_mask_;
    while (table_[i].load(std::memory_order_relaxed) != nullptr) i = (i + 1) & table_mask_;
    table_[i].store(&entry, std::memory_order_release);
    admitted_.store(admitted + 1, std::memory_order_release);
    return entry.slot;
}

std::uint32_t PolicyIndex::mark_overflow() noexcept {
    // Checked first so the hot path of an overflowing id only reads the shared flag.
    if (!overflowed_.load(std::memory_order_relaxed)) {
        overflowed_.store(true, std::memory_order_relaxed);
    }
    return overflow_slot();
}

std::optional<std::uint32_t> PolicyIndex::find(std::string_view id) const {
    if (id == kOverflowLabel) return overflow_slot();
    if (const Entry* entry = lookup(id, hash_bytes(id))) return entry->slot;
    // Not admitted: never seen, or seen past the cap and counted only under "__overflow__".
    // The index cannot tell the two apart, so neither answers the overflow counts.
    return std::nullopt;
}

std::string_view PolicyIndex::label(std::uint32_t slot) const {
    if (slot == overflow_slot()) return kOverflowLabel;
    std::lock_guard lock(mutex_);
    if (slot >= entries_.size())
        throw std::out_of_range("no policy in slot " + std::to_string(slot));
    return entries_[slot].id();
}

std::vector<std::string> PolicyIndex::ids() const {
    std::vector<std::string> out;
    {
        std::lock_guard lock(mutex_);
        out.reserve(entries_.size() + 1);
        for (const Entry& entry : entries_) out.emplace_back(entry.id());
    }
    if (overflowed_.load(std::memory_order_relaxed)) out.emplace_back(kOverflowLabel);
    return out;
}

}  // namespace driftgate

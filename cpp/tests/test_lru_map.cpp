#include <catch2/catch.hpp>

#include <algorithm>
#include <list>
#include <random>
#include <string>

#include "driftgate/lru_map.hpp"

using driftgate::LruMap;

namespace {

/// The obvious LRU: a list, most recent first.
class ReferenceLru {
  public:
    explicit ReferenceLru(std::size_t capacity) : capacity_(capacity) {}

    bool touch_or_insert(const std::string& key) {
        auto it = std::find(keys_.begin(), keys_.end(), key);
        if (it != keys_.end()) {
            keys_.splice(keys_.begin(), keys_, it);
            return true;
        }
        keys_.push_front(key);
        if (keys_.size() > capacity_) keys_.pop_back();
        return false;
    }

    bool contains(const std::string& key) const {
        return std::find(keys_.begin(), keys_.end(), key) != keys_.end();
    }

  private:
    std::size_t capacity_;
    std::list<std::string> keys_;
};

}  // namespace

TEST_CASE("LruMap agrees with a list LRU on random traffic", "[lru_map]") {
    for (std::size_t capacity : {1, 2, 7, 64, 300}) {
        std::mt19937 rng(static_cast<unsigned>(capacity));
        std::uniform_int_distribution<int> key_of(0, static_cast<int>(capacity * 3));
        LruMap<int> map(capacity);
        ReferenceLru reference(capacity);
        for (int step = 0; step < 20000; ++step) {
            const std::string key = "k" + std::to_string(key_of(rng));
            const bool found = map.touch_or_insert(key, step) != nullptr;
            REQUIRE(found == reference.touch_or_insert(key));
            const std::string probe = "k" + std::to_string(key_of(rng));
            REQUIRE((map.peek(probe) != nullptr) == reference.contains(probe));
        }
        CHECK(map.size() == capacity);
    }
}

TEST_CASE("LruMap keeps values and clears", "[lru_map]") {
    LruMap<std::string> map(2);
    CHECK(map.touch_or_insert("a", "1") == nullptr);
    CHECK(*map.touch("a") == "1");
    map.clear();
    CHECK(map.size() == 0);
    CHECK(map.peek("a") == nullptr);
    CHECK(map.touch_or_insert("a", "2") == nullptr);
    CHECK(*map.peek("a") == "2");
}

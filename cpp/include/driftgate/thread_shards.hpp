#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

namespace driftgate {

namespace detail {

/// A number no other pool of this process ever had, so a thread's memo of a pool that is gone
/// can never be mistaken for a live one.
std::uint64_t new_shard_pool_id() noexcept;

/// The shard this thread holds of pool `pool_id`, or nullptr. The last few pools a thread used
/// are answered from a memo of plain thread-local words: a decision writes the tracker's, its
/// enforcer's and its error windows' shards, and each lookup then costs a few compares.
void* thread_shard(std::uint64_t pool_id) noexcept;

/// Records that this thread holds `shard` of pool `pool_id` until it ends, when
/// `release(pool, shard)` runs if the pool is still alive.
void keep_thread_shard(std::uint64_t pool_id, void* shard, std::weak_ptr<void> pool,
                       void (*release)(void* pool, void* shard));

}  // namespace detail

/// Hands each writing thread a shard of its own, so writers never share a cache line and never
/// take a lock: a thread's first write takes an idle shard or makes one, and the thread's end
/// hands it back for the next thread, so the number of shards follows the live writer threads.
/// A shard keeps what was written to it; readers visit every shard ever made.
/// Thread-safe: `local` is lock-free once a thread holds its shard; `with_shards` holds the
/// pool's mutex, which readers may use to guard state they keep beside the shards.
template <typename Shard>
class ShardPool {
  public:
    ShardPool() : id_(detail::new_shard_pool_id()), state_(std::make_shared<State>()) {}

    ShardPool(const ShardPool&) = delete;
    ShardPool& operator=(const ShardPool&) = delete;

    /// This thread's shard; `make()` builds one, under the pool's mutex, when none is idle. A
    /// shard that another thread held before is told so by its `handed_over()`, if it has one.
    template <typename Make>
    Shard& local(Make&& make) {
        if (void* shard = detail::thread_shard(id_)) return *static_cast<Shard*>(shard);
        return adopt(std::forward<Make>(make));
    }

    /// `visit(std::span<const std::unique_ptr<Shard>>)` over every shard ever made, with the
    /// pool's mutex held; returns what `visit` returns.
    template <typename Visit>
    decltype(auto) with_shards(Visit&& visit) const {
        std::lock_guard lock(state_->mutex);
        return std::forward<Visit>(visit)(
            std::span<const std::unique_ptr<Shard>>(state_->shards.data(), state_->shards.size()));
    }

  private:
    struct State {
        std::mutex mutex;  // guards both vectors
        std::vector<std::unique_ptr<Shard>> shards;
        std::vector<Shard*> idle;

        static void release(void* state, void* shard) {
            auto* self = static_cast<State*>(state);
            std::lock_guard lock(self->mutex);
            self->idle.push_back(static_cast<Shard*>(shard));
        }
    };

    template <typename Make>
    Shard& adopt(Make&& make) {
        Shard* shard;
        {
            std::lock_guard lock(state_->mutex);
            if (state_->idle.empty()) {
                shard = state_->shards.emplace_back(std::forward<Make>(make)()).get();
            } else {
                shard = state_->idle.back();
                state_->idle.pop_back();
                // What the shard remembers of the thread that held it is not this thread's.
                if constexpr (requires { shard->handed_over(); }) shard->handed_over();
            }
        }
        detail::keep_thread_shard(id_, shard, state_, &State::release);
        return *shard;
    }

    std::uint64_t id_;
    std::shared_ptr<State> state_;  // shared with the threads that hold its shards
};

}  // namespace driftgate

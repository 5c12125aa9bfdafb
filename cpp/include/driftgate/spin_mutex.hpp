#pragma once

#include <atomic>
#include <thread>

namespace driftgate {

/// A mutex for critical sections of a few dozen nanoseconds (an LRU lookup): uncontended, a
/// lock is one exchange and an unlock one store, inline, where std::mutex costs two calls into
/// libc that take longer than the work they guard. Waiters spin on a plain load and yield, so
/// a preempted holder costs waiters their time slice, not a busy core. Not for sections that
/// block or run long. Thread-safe; satisfies Lockable, so std::lock_guard works.
class SpinMutex {
  public:
    void lock() noexcept {
        while (locked_.exchange(true, std::memory_order_acquire)) {
            while (locked_.load(std::memory_order_relaxed)) std::this_thread::yield();
        }
    }
    bool try_lock() noexcept {
        return !locked_.load(std::memory_order_relaxed) &&
               !locked_.exchange(true, std::memory_order_acquire);
    }
    void unlock() noexcept { locked_.store(false, std::memory_order_release); }

  private:
    std::atomic<bool> locked_{false};
};

}  // namespace driftgate

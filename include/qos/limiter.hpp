// The admission state machine of one limit group: at most max_concurrent permits out, at most
// max_queue requests waiting (or about to wait), served highest priority first and FIFO within a
// level, with direct hand-off on release. Single-threaded and non-blocking: callers serialise
// access (the fiber layer holds a mutex) and pass `now`; the core never reads a clock.
#pragma once

#include <array>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "qos/clock.hpp"
#include "qos/priority.hpp"

namespace qos {

enum class waiter_state : std::uint8_t {
  idle,       // not queued
  waiting,    // in the queue
  granted,    // a release handed it a permit: its owner must return it
  expired,    // removed at its deadline without a permit
  cancelled,  // removed by cancel_all (shutdown) without a permit
};

// One queued request. Pinned: the limiter links to it while it waits, so it must outlive its
// stay in the queue and never move. `context` belongs to the caller (the fiber layer keeps its
// wake-up handle there).
class waiter {
 public:
  waiter() = default;
  waiter(const waiter&) = delete;
  waiter& operator=(const waiter&) = delete;
  ~waiter() { assert(state_ != waiter_state::waiting); }

  waiter_state state() const noexcept { return state_; }
  priority level() const noexcept { return level_; }
  time_point deadline() const noexcept { return deadline_; }
  void* context = nullptr;

 private:
  friend class limiter;
  waiter_state state_ = waiter_state::idle;
  priority level_ = 0;
  time_point deadline_{};
  waiter* prev_ = nullptr;
  waiter* next_ = nullptr;
};

struct limiter_options {
  std::size_t max_concurrent = 1;  // > 0
  std::size_t max_queue = 1000;    // waiting + reserved places; > 0
};

class limiter {
 public:
  enum class enqueue_result { granted, queued, queue_full };

  explicit limiter(limiter_options options) noexcept;
  limiter(const limiter&) = delete;
  limiter& operator=(const limiter&) = delete;
  ~limiter() { assert(waiting_ == 0); }

  // Takes a free permit when nobody waits or holds a reservation (no barging: a newcomer
  // never overtakes a queued request, whatever its priority, since a release hands permits
  // to waiters directly and free permits exist only while the queue is empty).
  bool try_acquire() noexcept;

  // Holds a place in the queue for a request that will call enqueue(reserved = true) later,
  // from another thread. Lets the caller shed on a full queue before creating any fiber.
  bool try_reserve() noexcept;
  void cancel_reservation() noexcept;

  // Grants at once when a permit is free and nobody waits; else queues `w` at `level` until
  // `deadline`. With `reserved`, consumes a reservation made by try_reserve and cannot fail
  // with queue_full.
  enqueue_result enqueue(waiter& w, priority level, time_point deadline, bool reserved) noexcept;

  // Returns one permit. When someone waits, the permit goes straight to the oldest waiter of the
  // highest level, which is marked granted and returned: the caller wakes it, and its owner now
  // holds the permit. Otherwise returns nullptr.
  waiter* release() noexcept;

  // Takes a waiting `w` out of the queue as `final_state` (expired or cancelled) and returns
  // true. Returns false when `w` is no longer waiting: granted at the same instant, its owner
  // holds a permit and must return it.
  bool remove(waiter& w, waiter_state final_state) noexcept;

  // Expires every waiter whose deadline is <= now, calling on_expired(waiter&) for each,
  // in queue order. Returns how many.
  template <class OnExpired>
  std::size_t expire(time_point now, OnExpired&& on_expired);

  // Cancels every waiter (shutdown), calling on_cancelled(waiter&) for each. Returns how many.
  template <class OnCancelled>
  std::size_t cancel_all(OnCancelled&& on_cancelled);

  std::optional<time_point> next_deadline() const noexcept;

  std::size_t in_use() const noexcept { return in_use_; }
  std::size_t waiting() const noexcept { return waiting_; }
  std::size_t reserved() const noexcept { return reserved_; }
  std::size_t max_concurrent() const noexcept { return options_.max_concurrent; }
  std::size_t max_queue() const noexcept { return options_.max_queue; }

 private:
  struct level_queue {
    waiter* head = nullptr;
    waiter* tail = nullptr;
  };

  void push_back(waiter& w) noexcept;
  void unlink(waiter& w) noexcept;
  waiter* front_of_highest() const noexcept;

  limiter_options options_;
  std::size_t in_use_ = 0;
  std::size_t waiting_ = 0;
  std::size_t reserved_ = 0;
  std::uint32_t nonempty_ = 0;  // bit i set <=> levels_[i] has waiters
  std::array<level_queue, priority_levels> levels_{};
  static_assert(priority_levels <= 32, "nonempty_ holds one bit per level");
};

template <class OnExpired>
std::size_t limiter::expire(time_point now, OnExpired&& on_expired) {
  std::size_t n = 0;
  for (auto& q : levels_) {
    for (waiter* w = q.head; w != nullptr;) {
      waiter* next = w->next_;
      if (w->deadline_ <= now) {
        unlink(*w);
        w->state_ = waiter_state::expired;
        ++n;
        on_expired(*w);
      }
      w = next;
    }
  }
  return n;
}

template <class OnCancelled>
std::size_t limiter::cancel_all(OnCancelled&& on_cancelled) {
  std::size_t n = 0;
  for (auto& q : levels_) {
    while (waiter* w = q.head) {
      unlink(*w);
      w->state_ = waiter_state::cancelled;
      ++n;
      on_cancelled(*w);
    }
  }
  return n;
}

}  // namespace qos

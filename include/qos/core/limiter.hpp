// The admission state machine of one limit group: at most `limit` permit units out (a request
// may take several: its cost), at most max_queue requests waiting (or about to wait), served by
// priority level (optionally aged) and, within a level, by the group's queue discipline, with
// direct hand-off on release. Single-threaded and non-blocking: callers serialise access (the
// fiber layer holds a mutex) and pass `now`; the core never reads a clock.
#pragma once

#include <array>
#include <bit>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "qos/core/clock.hpp"
#include "qos/core/priority.hpp"

namespace qos {

enum class waiter_state : std::uint8_t {
  idle,       // not queued
  waiting,    // in the queue
  granted,    // handed `cost` permit units: its owner must return them
  expired,    // removed at its deadline without a permit
  cancelled,  // removed by cancel_all (shutdown) without a permit
  shed,       // dropped by the queue discipline (CoDel) without a permit
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
  time_point enqueued() const noexcept { return enqueued_; }
  std::uint32_t cost() const noexcept { return cost_; }
  void* context = nullptr;

 private:
  friend class limiter;
  friend class waiter_list;
  waiter_state state_ = waiter_state::idle;
  priority level_ = 0;
  std::uint32_t cost_ = 1;
  time_point deadline_{};
  time_point enqueued_{};
  waiter* prev_ = nullptr;
  waiter* next_ = nullptr;
  waiter* listed_next_ = nullptr;  // link in a waiter_list, once out of the queue
};

// The waiters one call took out of the queue (granted, shed, cancelled), linked through the
// waiters themselves: collecting them never allocates, so it can happen under a lock in
// noexcept code. A waiter may be in one list at a time.
class waiter_list {
 public:
  void push(waiter& w) noexcept {
    w.listed_next_ = nullptr;
    (tail_ != nullptr ? tail_->listed_next_ : head_) = &w;
    tail_ = &w;
  }
  bool empty() const noexcept { return head_ == nullptr; }
  // Calls f(waiter&) in push order. Reads each link before calling f, so f may end the
  // waiter's life (wake its owner, who may return).
  template <class F>
  void for_each(F&& f) noexcept {
    for (waiter* w = head_; w != nullptr;) {
      waiter* next = w->listed_next_;
      f(*w);
      w = next;
    }
    head_ = tail_ = nullptr;
  }

 private:
  waiter* head_ = nullptr;
  waiter* tail_ = nullptr;
};

enum class queue_discipline : std::uint8_t {
  fifo,           // oldest first
  codel,          // oldest first; once a level's queue has not been empty for `interval`,
                  // its waiters older than `target` are shed at each hand-off
  adaptive_lifo,  // oldest first until a level's queue has not been empty for `interval`
                  // (a standing queue), then newest first: fresh requests still meet deadlines
};

struct limiter_options {
  std::size_t max_concurrent = 1;  // initial limit (permit units); > 0
  std::size_t max_queue = 1000;    // waiting + reserved places; > 0
  queue_discipline discipline = queue_discipline::fifo;
  duration target = std::chrono::milliseconds(5);      // codel
  duration interval = std::chrono::milliseconds(100);  // codel, adaptive_lifo
  // Starvation guard: a waiter counts one level higher per aging_step waited (zero: off).
  duration aging_step = duration::zero();
  // Headroom, like a database's connections reserved for its administrators: a request below
  // reserve_level is granted only while `reserve` units stay free after the grant, so that a
  // request at reserve_level or above finds a free permit however deep the lower levels'
  // queue is. (Should an adaptive limit fall to the reserve or below, lower levels may still
  // take one unit when nothing else is out.) Zero: off.
  std::size_t reserve = 0;
  priority reserve_level = max_priority;

  bool operator==(const limiter_options&) const = default;
};

// What a request asks for when it queues.
struct wait_spec {
  priority level = 0;
  time_point deadline{};
  time_point now{};
  std::uint32_t cost = 1;
};

class limiter {
 public:
  enum class enqueue_result { granted, queued, queue_full };

  explicit limiter(limiter_options options) noexcept;
  limiter(const limiter&) = delete;
  limiter& operator=(const limiter&) = delete;
  ~limiter() { assert(waiting_ == 0); }

  // Takes `cost` free units when nobody waits or holds a reservation (no barging: a newcomer
  // never overtakes a queued request, whatever its priority), within what `level` may use. A
  // level entitled to the headroom takes it past queued lower levels, which cannot use it.
  bool try_acquire(std::uint32_t cost = 1, priority level = 0) noexcept;

  // Holds a place in the queue for a request that will call enqueue(reserved = true) later,
  // from another thread. Lets the caller shed on a full queue before creating any fiber.
  bool try_reserve() noexcept;
  void cancel_reservation() noexcept;

  // Grants at once when the units are free and nobody waits (or, for a level entitled to the
  // headroom, when only lower levels wait: they cannot use it); else queues `w`. With
  // `reserved`, consumes a reservation made by try_reserve and cannot fail with queue_full.
  enqueue_result enqueue(waiter& w, const wait_spec& spec, bool reserved) noexcept;

  // Returns `cost` units and hands free units to waiters in order. on_change(waiter&) is called
  // for each waiter that left the queue here: granted (its owner now holds the units) or shed.
  template <class OnChange>
  void release(std::uint32_t cost, time_point now, OnChange&& on_change);

  // Changes the limit (adaptive limits). Raising it grants waiters (reported to on_change);
  // lowering it lets the excess drain as permits come back.
  template <class OnChange>
  void set_limit(std::size_t limit, time_point now, OnChange&& on_change);

  // Replaces every option at once (a config reload); options.max_concurrent becomes the limit.
  // Nothing already decided is undone: waiters keep their place, level and cost (a lowered
  // max_queue only refuses newcomers), held units stay held (a lowered limit takes effect as
  // they come back) and reservations stay valid. Units a raised limit (or a smaller reserve)
  // frees go to waiters in order at once, by the new discipline, reported to on_change. The
  // standing-queue clocks carry over, so a switch to codel or adaptive_lifo judges a queue
  // that already stands as standing.
  template <class OnChange>
  void reconfigure(const limiter_options& options, time_point now, OnChange&& on_change);

  // Takes a waiting `w` out of the queue as `final_state` (expired or cancelled) and returns
  // true. Returns false when `w` is no longer waiting: granted at the same instant, its owner
  // holds the units and must return them (or it was shed: it holds nothing).
  bool remove(waiter& w, waiter_state final_state) noexcept;

  // Expires every waiter whose deadline is <= now, calling on_expired(waiter&) for each.
  template <class OnExpired>
  std::size_t expire(time_point now, OnExpired&& on_expired);

  // Cancels every waiter (shutdown), calling on_cancelled(waiter&) for each.
  template <class OnCancelled>
  std::size_t cancel_all(OnCancelled&& on_cancelled);

  std::optional<time_point> next_deadline() const noexcept;

  // Waiters a newcomer at `level` would queue behind (same level or higher, aging aside).
  std::size_t waiting_at_or_above(priority level) const noexcept;
  // Requests queued at exactly `level`.
  std::size_t waiting_at(priority level) const noexcept {
    return levels_[static_cast<std::size_t>(level)].count;
  }

  std::size_t in_use() const noexcept { return in_use_; }
  std::size_t waiting() const noexcept { return waiting_; }
  std::size_t reserved() const noexcept { return reserved_; }
  std::size_t limit() const noexcept { return limit_; }
  std::size_t max_queue() const noexcept { return options_.max_queue; }
  const limiter_options& options() const noexcept { return options_; }

 private:
  struct level_queue {
    waiter* head = nullptr;
    waiter* tail = nullptr;
    time_point nonempty_since{};  // when this level's standing-queue clock started
    time_point last_shed{};       // when CoDel last shed here (epoch: never)
    bool ever_shed = false;
    std::size_t count = 0;
  };

  // Grants waiters while their units fit; sheds per discipline on the way.
  template <class OnChange>
  void dispatch(time_point now, OnChange&& on_change);
  // The units `level` may hold in all: the limit, less the headroom below reserve_level.
  std::size_t cap(priority level) const noexcept {
    if (options_.reserve == 0 || level >= options_.reserve_level) return limit_;
    return limit_ > options_.reserve ? limit_ - options_.reserve : 1;
  }
  // Someone waits at a level entitled to the headroom.
  bool entitled_waiting() const noexcept { return (nonempty_ >> options_.reserve_level) != 0; }
  // The level to serve next (aging applied), or -1 when nobody waits.
  int pick_level(time_point now) const noexcept;
  bool standing(const level_queue& q, time_point now) const noexcept {
    return now - q.nonempty_since >= options_.interval;
  }
  void push_back(waiter& w, time_point now) noexcept;
  void unlink(waiter& w) noexcept;

  limiter_options options_;
  std::size_t limit_;
  std::size_t in_use_ = 0;
  std::size_t waiting_ = 0;
  std::size_t reserved_ = 0;
  std::uint32_t nonempty_ = 0;  // bit i set <=> levels_[i] has waiters
  std::array<level_queue, priority_levels> levels_{};
  static_assert(priority_levels <= 32, "nonempty_ holds one bit per level");
};

template <class OnChange>
void limiter::release(std::uint32_t cost, time_point now, OnChange&& on_change) {
  assert(in_use_ >= cost);
  in_use_ -= cost;
  dispatch(now, on_change);
}

template <class OnChange>
void limiter::set_limit(std::size_t limit, time_point now, OnChange&& on_change) {
  limit_ = limit == 0 ? 1 : limit;
  dispatch(now, on_change);
}

template <class OnChange>
void limiter::reconfigure(const limiter_options& options, time_point now, OnChange&& on_change) {
  assert(options.max_concurrent > 0);
  assert(options.max_queue > 0);
  options_ = options;
  limit_ = options.max_concurrent;
  // Only a free unit is handed out. Without one, dispatch would still let CoDel shed a
  // standing queue here; a reload is no hand-off and must drop nobody.
  if (in_use_ < limit_) dispatch(now, on_change);
}

template <class OnChange>
void limiter::dispatch(time_point now, OnChange&& on_change) {
  for (;;) {
    const int lvl = pick_level(now);
    if (lvl < 0) return;
    auto& q = levels_[static_cast<std::size_t>(lvl)];
    if (options_.discipline == queue_discipline::codel && standing(q, now)) {
      // A standing queue: whoever already waited past the target is shed rather than served
      // late; the head is the oldest, so stop at the first one within the target.
      bool shed_any = false;
      while (q.head != nullptr && now - q.head->enqueued_ > options_.target) {
        waiter* w = q.head;
        unlink(*w);
        w->state_ = waiter_state::shed;
        shed_any = true;
        q.last_shed = now;
        q.ever_shed = true;
        on_change(*w);
      }
      if (shed_any) continue;  // the level may be empty now: pick again
    }
    waiter* w = q.head;
    if (options_.discipline == queue_discipline::adaptive_lifo && standing(q, now)) w = q.tail;
    // Strict order: a waiter whose cost does not fit blocks the ones behind it, so heavy
    // requests are not starved by light ones. Only the headroom is different: what a lower
    // level may not use goes to the most urgent waiter entitled to it (aging can put a lower
    // level first).
    if (in_use_ + w->cost_ > cap(w->level_)) {
      if (options_.reserve == 0 || lvl >= static_cast<int>(options_.reserve_level) ||
          !entitled_waiting()) {
        return;
      }
      w = levels_[static_cast<std::size_t>(31 - std::countl_zero(nonempty_))].head;
      if (in_use_ + w->cost_ > limit_) return;
    }
    unlink(*w);
    in_use_ += w->cost_;
    w->state_ = waiter_state::granted;
    on_change(*w);
  }
}

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

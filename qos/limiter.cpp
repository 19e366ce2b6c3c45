#include "qos/limiter.hpp"

#include <bit>

namespace qos {

limiter::limiter(limiter_options options) noexcept : options_(options) {
  assert(options_.max_concurrent > 0);
  assert(options_.max_queue > 0);
}

bool limiter::try_acquire() noexcept {
  if (in_use_ >= options_.max_concurrent || waiting_ != 0 || reserved_ != 0) return false;
  ++in_use_;
  return true;
}

bool limiter::try_reserve() noexcept {
  if (waiting_ + reserved_ >= options_.max_queue) return false;
  ++reserved_;
  return true;
}

void limiter::cancel_reservation() noexcept {
  assert(reserved_ > 0);
  --reserved_;
}

limiter::enqueue_result limiter::enqueue(waiter& w, priority level, time_point deadline,
                                         bool reserved) noexcept {
  assert(w.state_ == waiter_state::idle);
  assert(level <= max_priority);
  if (reserved) {
    cancel_reservation();
  }
  // The reservation is gone now, so a reserved request competes exactly like a newcomer that
  // arrived at this instant; others still reserved keep their place behind it.
  if (in_use_ < options_.max_concurrent && waiting_ == 0) {
    ++in_use_;
    w.state_ = waiter_state::granted;
    return enqueue_result::granted;
  }
  if (!reserved && waiting_ + reserved_ >= options_.max_queue) return enqueue_result::queue_full;
  w.level_ = level;
  w.deadline_ = deadline;
  w.state_ = waiter_state::waiting;
  push_back(w);
  return enqueue_result::queued;
}

waiter* limiter::release() noexcept {
  assert(in_use_ > 0);
  waiter* w = front_of_highest();
  if (w == nullptr) {
    --in_use_;
    return nullptr;
  }
  // Direct hand-off: in_use_ stays, the permit changes owner.
  unlink(*w);
  w->state_ = waiter_state::granted;
  return w;
}

bool limiter::remove(waiter& w, waiter_state final_state) noexcept {
  assert(final_state == waiter_state::expired || final_state == waiter_state::cancelled);
  if (w.state_ != waiter_state::waiting) return false;
  unlink(w);
  w.state_ = final_state;
  return true;
}

std::optional<time_point> limiter::next_deadline() const noexcept {
  std::optional<time_point> best;
  for (const auto& q : levels_) {
    for (const waiter* w = q.head; w != nullptr; w = w->next_) {
      if (!best || w->deadline_ < *best) best = w->deadline_;
    }
  }
  return best;
}

void limiter::push_back(waiter& w) noexcept {
  auto& q = levels_[w.level_];
  w.prev_ = q.tail;
  w.next_ = nullptr;
  if (q.tail != nullptr) {
    q.tail->next_ = &w;
  } else {
    q.head = &w;
  }
  q.tail = &w;
  nonempty_ |= 1u << w.level_;
  ++waiting_;
}

void limiter::unlink(waiter& w) noexcept {
  auto& q = levels_[w.level_];
  (w.prev_ != nullptr ? w.prev_->next_ : q.head) = w.next_;
  (w.next_ != nullptr ? w.next_->prev_ : q.tail) = w.prev_;
  w.prev_ = w.next_ = nullptr;
  if (q.head == nullptr) nonempty_ &= ~(1u << w.level_);
  assert(waiting_ > 0);
  --waiting_;
}

waiter* limiter::front_of_highest() const noexcept {
  if (nonempty_ == 0) return nullptr;
  const int top = 31 - std::countl_zero(nonempty_);
  return levels_[static_cast<std::size_t>(top)].head;
}

}  // namespace qos

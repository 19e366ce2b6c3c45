#include "qos/core/limiter.hpp"

#include <bit>

namespace qos {

limiter::limiter(limiter_options options) noexcept
    : options_(options), limit_(options.max_concurrent) {
  assert(options_.max_concurrent > 0);
  assert(options_.max_queue > 0);
}

bool limiter::try_acquire(std::uint32_t cost, priority level) noexcept {
  if (in_use_ + cost > cap(level)) return false;
  // Nobody may be overtaken, except by a level entitled to the headroom: queued lower levels
  // cannot use it (even a full queue of them must not keep it from the level it is for).
  const bool headroom =
      options_.reserve != 0 && level >= options_.reserve_level && !entitled_waiting();
  if ((waiting_ != 0 || reserved_ != 0) && !headroom) return false;
  in_use_ += cost;
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

limiter::enqueue_result limiter::enqueue(waiter& w, const wait_spec& spec, bool reserved) noexcept {
  assert(w.state_ == waiter_state::idle);
  assert(spec.level <= max_priority);
  assert(spec.cost > 0);
  if (reserved) cancel_reservation();
  // The reservation is gone now, so a reserved request competes exactly like a newcomer that
  // arrived at this instant; others still reserved keep their place behind it.
  w.cost_ = spec.cost;
  const bool fits = in_use_ + spec.cost <= cap(spec.level);
  // Waiters that cannot use the headroom do not stand between it and a level that can.
  const bool ahead = waiting_ != 0 && (spec.level < options_.reserve_level ||
                                       options_.reserve == 0 || entitled_waiting());
  if (fits && !ahead) {
    in_use_ += spec.cost;
    w.state_ = waiter_state::granted;
    return enqueue_result::granted;
  }
  if (!reserved && waiting_ + reserved_ >= options_.max_queue) return enqueue_result::queue_full;
  w.level_ = spec.level;
  w.deadline_ = spec.deadline;
  w.state_ = waiter_state::waiting;
  push_back(w, spec.now);
  return enqueue_result::queued;
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

std::size_t limiter::waiting_at_or_above(priority level) const noexcept {
  std::size_t n = 0;
  for (std::size_t l = level; l < levels_.size(); ++l) n += levels_[l].count;
  return n;
}

int limiter::pick_level(time_point now) const noexcept {
  if (nonempty_ == 0) return -1;
  const int top = 31 - std::countl_zero(nonempty_);
  if (options_.aging_step <= duration::zero()) return top;
  // Aging: a level's claim is its number plus one per aging_step its oldest waiter has waited
  // (capped at the top level); the older head wins a tie, so a long-waiting low level gets
  // its turn under sustained high-priority load.
  int best = -1;
  long best_claim = -1;
  duration best_age{};
  for (std::uint32_t bits = nonempty_; bits != 0; bits &= bits - 1) {
    const int lvl = std::countr_zero(bits);
    const duration age = now - levels_[static_cast<std::size_t>(lvl)].head->enqueued_;
    long claim = lvl + static_cast<long>(age / options_.aging_step);
    if (claim > max_priority) claim = max_priority;
    if (claim > best_claim || (claim == best_claim && age > best_age)) {
      best = lvl;
      best_claim = claim;
      best_age = age;
    }
  }
  return best;
}

void limiter::push_back(waiter& w, time_point now) noexcept {
  auto& q = levels_[w.level_];
  w.enqueued_ = now;
  w.prev_ = q.tail;
  w.next_ = nullptr;
  if (q.tail != nullptr) {
    q.tail->next_ = &w;
  } else {
    q.head = &w;
    // Like CoDel's dropping state: a queue that emptied only because we shed it, less than an
    // interval ago, is still the same standing queue; restarting its clock would give the next
    // arrivals a free interval of plain FIFO and let late service creep back in.
    const bool still_dropping = q.ever_shed && now - q.last_shed < options_.interval;
    if (!still_dropping) q.nonempty_since = now;
  }
  q.tail = &w;
  nonempty_ |= 1u << w.level_;
  ++q.count;
  ++waiting_;
}

void limiter::unlink(waiter& w) noexcept {
  auto& q = levels_[w.level_];
  (w.prev_ != nullptr ? w.prev_->next_ : q.head) = w.next_;
  (w.next_ != nullptr ? w.next_->prev_ : q.tail) = w.prev_;
  w.prev_ = w.next_ = nullptr;
  if (q.head == nullptr) nonempty_ &= ~(1u << w.level_);
  --q.count;
  assert(waiting_ > 0);
  --waiting_;
}

}  // namespace qos

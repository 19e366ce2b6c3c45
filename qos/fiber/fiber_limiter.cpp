#include "qos/fiber/fiber_limiter.hpp"

#include <mutex>

#include <boost/fiber/condition_variable.hpp>

namespace qos {

// What a parked fiber waits on. Lives on the fiber's stack; the waker signals it under `m`,
// and a waiter that learns it left the queue by someone else's hand always waits for that
// signal before leaving, so the signal never touches a dead frame.
// `m` is a std::mutex, never held across the suspension (the condition variable releases it
// first): boost::fibers::mutex goes through a library spinlock whose 5 KiB frame put a second
// stack page of every parked fiber in RSS (measured 8.1 -> 4.1 KiB per parked wait).
struct fiber_limiter::parked {
  waiter node;
  std::mutex m;
  boost::fibers::condition_variable_any cv;
  bool signalled = false;  // guarded by m
  grant_hook* hook = nullptr;
  qos::permit granted;  // the waker's offer to `hook`; what it left goes to the fiber
};

fiber_limiter::fiber_limiter(limiter_options options, std::unique_ptr<limit_algorithm> algorithm)
    : ctl_(options, std::move(algorithm)) {}

namespace {
std::unique_ptr<limit_algorithm> algorithm_for(const std::optional<limit_options>& limit) {
  return limit ? make_limit_algorithm(*limit) : nullptr;
}
}  // namespace

fiber_limiter::fiber_limiter(limiter_options options, const std::optional<limit_options>& limit)
    : ctl_(options, limit.value_or(limit_options{}), algorithm_for(limit)) {}

void fiber_limiter::reconfigure(const limiter_options& options,
                                const std::optional<limit_options>& limit) {
  // Made before the lock (it allocates, and may throw); dropped unused when the running
  // algorithm was made from the same options.
  auto fresh = algorithm_for(limit);
  waiter_list woken;
  {
    std::lock_guard lk(mutex_);
    // The hand-off reads the time only when someone waits, as release does.
    const time_point now = ctl_.limiter().waiting() != 0 ? clock::now() : time_point{};
    ctl_.reconfigure(options, limit, std::move(fresh), now, woken);
  }
  wake_all(woken);
}

fiber_limiter::admit_result fiber_limiter::try_admit(std::uint32_t cost, priority level) noexcept {
  std::lock_guard lk(mutex_);
  if (closed_) return {admit_kind::shutdown, {}, {}};
  auto& core = ctl_.limiter();
  if (core.try_acquire(cost, level)) return {admit_kind::granted, permit(*this, cost), {}};
  if (core.try_reserve()) return {admit_kind::queued, {}, ticket(*this)};
  return {admit_kind::queue_full, {}, {}};
}

void fiber_limiter::cancel_ticket() noexcept {
  std::lock_guard lk(mutex_);
  ctl_.limiter().cancel_reservation();
}

fiber_limiter::acquire_result fiber_limiter::acquire(ticket place, priority level,
                                                     time_point deadline, std::uint32_t cost,
                                                     grant_hook* hook) {
  // From here the place is this wait's: wait() turns it into a queue entry or gives it back.
  place.consume();
  return wait(true, level, deadline, cost, hook);
}

fiber_limiter::acquire_result fiber_limiter::acquire(priority level, time_point deadline,
                                                     std::uint32_t cost, grant_hook* hook) {
  return wait(false, level, deadline, cost, hook);
}

fiber_limiter::acquire_result fiber_limiter::wait(bool has_place, priority level,
                                                  time_point deadline, std::uint32_t cost,
                                                  grant_hook* hook) {
  parked p;
  p.node.context = &p;
  p.hook = hook;
  {
    std::lock_guard lk(mutex_);
    auto& core = ctl_.limiter();
    // Closed: a request that took its queue place before keeps it; nothing new comes in.
    if (stopping_ || (closed_ && !has_place)) {
      if (has_place) core.cancel_reservation();
      return {outcome::shutdown, {}};
    }
    switch (core.enqueue(p.node, wait_spec{level, deadline, clock::now(), cost}, has_place)) {
      case limiter::enqueue_result::granted:
        return {outcome::admitted, permit(*this, cost)};
      case limiter::enqueue_result::queue_full:
        return {outcome::queue_full, {}};
      case limiter::enqueue_result::queued:
        break;
    }
  }
  std::unique_lock lk(p.m);
  if (!p.cv.wait_until(lk, deadline, [&] { return p.signalled; })) {
    bool removed;
    {
      std::lock_guard core_lk(mutex_);
      removed = ctl_.limiter().remove(p.node, waiter_state::expired);
    }
    if (removed) return {outcome::timeout, {}};
    // Granted, shed or cancelled at the deadline: the waker is about to signal us.
    p.cv.wait(lk, [&] { return p.signalled; });
  }
  // The waker changed the state under mutex_ before signalling under p.m: visible here.
  switch (p.node.state()) {
    case waiter_state::granted:
      if (p.hook == nullptr) return {outcome::admitted, permit(*this, cost)};
      // The waker offered the grant to the hook before signalling; what it left is ours.
      if (p.granted) return {outcome::admitted, std::move(p.granted)};
      return {outcome::admitted, {}, true};
    case waiter_state::shed:
      return {outcome::shed, {}};
    default:
      return {outcome::shutdown, {}};
  }
}

void fiber_limiter::wake(waiter& w) noexcept {
  auto* p = static_cast<parked*>(w.context);
  // Set under mutex_ by this thread, which has released it since: the state is final.
  if (p->hook != nullptr && w.state() == waiter_state::granted) {
    p->granted = permit(*this, w.cost());
    p->hook->on_grant(p->granted);
  }
  std::lock_guard lk(p->m);
  p->signalled = true;
  p->cv.notify_one();
}

void fiber_limiter::release_permit(std::uint32_t units) noexcept {
  waiter_list woken;
  {
    std::lock_guard lk(mutex_);
    auto& core = ctl_.limiter();
    // The hand-off reads the time only when someone waits: spare the clock otherwise.
    const time_point now = core.waiting() != 0 ? clock::now() : time_point{};
    core.release(units, now, [&](waiter& w) { woken.push(w); });
  }
  wake_all(woken);
}

void fiber_limiter::on_served(duration rtt, bool dropped) noexcept {
  waiter_list woken;
  {
    std::lock_guard lk(mutex_);
    // A fixed limit never reads the time: spare the clock.
    ctl_.on_served(rtt, dropped, ctl_.adaptive() ? clock::now() : time_point{}, woken);
  }
  wake_all(woken);
}

duration fiber_limiter::estimate_wait(priority level) const noexcept {
  std::lock_guard lk(mutex_);
  return ctl_.estimate_wait(level);
}

void fiber_limiter::close() noexcept {
  std::lock_guard lk(mutex_);
  closed_ = true;
}

void fiber_limiter::shutdown() noexcept {
  waiter_list cancelled;
  {
    std::lock_guard lk(mutex_);
    if (stopping_) return;
    stopping_ = true;
    closed_ = true;
    ctl_.limiter().cancel_all([&](waiter& w) { cancelled.push(w); });
  }
  wake_all(cancelled);
}

group_stats fiber_limiter::stats() const noexcept {
  std::lock_guard lk(mutex_);
  return ctl_.stats();
}

std::array<std::size_t, priority_levels> fiber_limiter::waiting_by_level() const noexcept {
  std::array<std::size_t, priority_levels> out{};
  std::lock_guard lk(mutex_);
  for (int l = 0; l < priority_levels; ++l) {
    out[static_cast<std::size_t>(l)] = ctl_.limiter().waiting_at(static_cast<priority>(l));
  }
  return out;
}

}  // namespace qos

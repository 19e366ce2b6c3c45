#include "qos/fiber_limiter.hpp"

#include <vector>

#include <boost/fiber/condition_variable.hpp>
#include <boost/fiber/mutex.hpp>

namespace qos {

// What a parked fiber waits on. Lives on the fiber's stack; the waker signals it under its
// fiber mutex, and a waiter that learns it was granted or cancelled always waits for that signal
// before leaving, so the signal never touches a dead frame.
struct fiber_limiter::parked {
  waiter node;
  boost::fibers::mutex m;
  boost::fibers::condition_variable cv;
  bool signalled = false;  // guarded by m
};

fiber_limiter::fiber_limiter(limiter_options options) : core_(options) {}

fiber_limiter::admit_result fiber_limiter::try_admit() noexcept {
  std::lock_guard lk(mutex_);
  if (shutting_down_) return {admit_kind::shutting_down, {}};
  if (core_.try_acquire()) return {admit_kind::granted, permit(*this)};
  if (core_.try_reserve()) return {admit_kind::reserved, {}};
  return {admit_kind::queue_full, {}};
}

void fiber_limiter::cancel_reservation() noexcept {
  std::lock_guard lk(mutex_);
  core_.cancel_reservation();
}

fiber_limiter::acquire_result fiber_limiter::acquire(priority level, time_point deadline,
                                                     bool reserved) {
  parked p;
  p.node.context = &p;
  {
    std::lock_guard lk(mutex_);
    if (shutting_down_) {
      if (reserved) core_.cancel_reservation();
      return {outcome::shutting_down, {}};
    }
    switch (core_.enqueue(p.node, level, deadline, reserved)) {
      case limiter::enqueue_result::granted:
        return {outcome::admitted, permit(*this)};
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
      removed = core_.remove(p.node, waiter_state::expired);
    }
    if (removed) return {outcome::timed_out, {}};
    // Granted or cancelled at the deadline: the waker is about to signal us.
    p.cv.wait(lk, [&] { return p.signalled; });
  }
  // The waker changed the state under mutex_ before signalling under p.m: visible here.
  if (p.node.state() == waiter_state::granted) return {outcome::admitted, permit(*this)};
  return {outcome::shutting_down, {}};
}

void fiber_limiter::wake(waiter& w) noexcept {
  auto* p = static_cast<parked*>(w.context);
  std::lock_guard lk(p->m);
  p->signalled = true;
  p->cv.notify_one();
}

void fiber_limiter::release_permit() noexcept {
  waiter* next;
  {
    std::lock_guard lk(mutex_);
    next = core_.release();
  }
  if (next != nullptr) wake(*next);
}

void fiber_limiter::shutdown() noexcept {
  std::vector<waiter*> cancelled;
  {
    std::lock_guard lk(mutex_);
    if (shutting_down_) return;
    shutting_down_ = true;
    cancelled.reserve(core_.waiting());
    core_.cancel_all([&](waiter& w) { cancelled.push_back(&w); });
  }
  for (waiter* w : cancelled) wake(*w);
}

limiter_stats fiber_limiter::stats() const {
  std::lock_guard lk(mutex_);
  return {core_.in_use(), core_.waiting(), core_.reserved(), core_.max_concurrent(),
          core_.max_queue()};
}

}  // namespace qos

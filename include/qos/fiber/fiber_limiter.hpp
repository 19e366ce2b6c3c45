// The policy of one limit group (group_controller) made safe for many threads, with waits that
// park a fiber, not a thread. It only locks and parks: every decision is the controller's.
// Reactor threads use the non-blocking try_admit; fibers use acquire. Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "qos/core/clock.hpp"
#include "qos/core/group_controller.hpp"
#include "qos/core/limit_algorithm.hpp"
#include "qos/core/limiter.hpp"
#include "qos/core/outcome.hpp"
#include "qos/core/permit.hpp"
#include "qos/core/priority.hpp"
#include "qos/core/ticket.hpp"

namespace qos {

class fiber_limiter final : public permit_source, public ticket_source {
 public:
  enum class admit_kind { granted, queued, queue_full, shutdown };
  struct admit_result {
    admit_kind kind;
    qos::permit permit;  // set when granted
    qos::ticket ticket;  // set when queued: a place in the queue for acquire()
  };
  struct acquire_result {
    outcome result;      // admitted, timeout, queue_full, shed or shutdown
    qos::permit permit;  // set when admitted, unless the grant hook took it
    bool taken = false;  // admitted, and the grant hook took the permit
  };

  // Lets a waiter act on its grant where the grant happens. on_grant is called on the thread
  // that hands the units over (one returning a permit, a reload), after the limiter's lock is
  // released and before the parked fiber wakes, with a permit for them. Moving the permit out
  // takes the grant: acquire then returns `admitted`, `taken` and no permit. Left where it is,
  // it goes to the fiber as usual. It must not block or throw. The fiber stays parked
  // meanwhile, so it may use what only that fiber touches. A grant found at once, without
  // parking, does not call it.
  class grant_hook {
   public:
    virtual void on_grant(qos::permit& granted) noexcept = 0;

   protected:
    ~grant_hook() = default;
  };

  explicit fiber_limiter(limiter_options options,
                         std::unique_ptr<limit_algorithm> algorithm = nullptr);
  // With `limit`, an adaptive limit made from it (make_limit_algorithm, which throws
  // std::invalid_argument for options out of range); without, options.max_concurrent, fixed.
  fiber_limiter(limiter_options options, const std::optional<limit_options>& limit);
  fiber_limiter(const fiber_limiter&) = delete;
  fiber_limiter& operator=(const fiber_limiter&) = delete;

  // Never blocks or suspends: takes `cost` free units (as far as `level` may use them), or
  // holds a place in the queue (a ticket for a later acquire), or reports a full queue.
  admit_result try_admit(std::uint32_t cost = 1, priority level = 0) noexcept;

  // Fiber only. Parks the calling fiber until units are handed to it (admitted), `deadline`
  // passes (timeout), the discipline sheds it (shed) or shutdown() (shutdown). Units granted
  // at the very instant of the deadline are kept: the request is admitted. The first form
  // uses the place `place` holds (and so cannot find the queue full); the second takes one.
  // With `hook`, a grant that comes after the fiber parked is offered to it first.
  acquire_result acquire(ticket place, priority level, time_point deadline, std::uint32_t cost = 1,
                         grant_hook* hook = nullptr);
  acquire_result acquire(priority level, time_point deadline, std::uint32_t cost = 1,
                         grant_hook* hook = nullptr);

  // A served request held its permit for `rtt`; call it before returning the permit.
  void on_served(duration rtt, bool dropped) noexcept;
  duration estimate_wait(priority level) const noexcept;

  // Applies new settings while requests wait and run (a config reload; see
  // group_controller::reconfigure): parked fibers keep their place, a raised limit wakes as
  // many as it admits, a lowered one revokes nothing. Throws std::invalid_argument (and changes
  // nothing) when `limit` is out of range. After shutdown() only the settings change.
  void reconfigure(const limiter_options& options, const std::optional<limit_options>& limit);

  // Refuses later admissions (`shutdown`) and lets the waiters already queued wait on: the
  // drain that serves parked requests. Idempotent; shutdown() still wakes them.
  void close() noexcept;
  // Wakes every waiter with `shutdown` and refuses later admissions. Idempotent.
  void shutdown() noexcept;

  group_stats stats() const noexcept;
  // Requests queued at each priority level (the admin status; takes the lock once).
  std::array<std::size_t, priority_levels> waiting_by_level() const noexcept;
  void release_permit(std::uint32_t units) noexcept override;
  void cancel_ticket() noexcept override;

 private:
  struct parked;
  acquire_result wait(bool has_place, priority level, time_point deadline, std::uint32_t cost,
                      grant_hook* hook);
  void wake(waiter& w) noexcept;
  void wake_all(waiter_list& woken) noexcept {
    woken.for_each([this](waiter& w) { wake(w); });
  }

  // Never held across a suspension point, so a plain mutex is right even though fibers
  // migrate between threads. Held for O(1) work, plus O(1) per waiter the call grants, sheds
  // or cancels (a release under CoDel, shutdown); wake-ups happen after it is released.
  mutable std::mutex mutex_;
  group_controller ctl_;   // guarded by mutex_
  bool stopping_ = false;  // guarded by mutex_
  bool closed_ = false;    // guarded by mutex_: close() or shutdown()
};

}  // namespace qos

// The limiter of one group made safe for many threads, with waits that park a fiber, not a
// thread; plus what the group learns from served requests (service-time average, an optional
// adaptive limit). Reactor threads use the non-blocking try_admit; fibers use acquire.
// Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "qos/core/clock.hpp"
#include "qos/core/limit_algorithm.hpp"
#include "qos/core/limiter.hpp"
#include "qos/core/outcome.hpp"
#include "qos/core/permit.hpp"
#include "qos/core/priority.hpp"

namespace qos {

struct limiter_stats {
  std::size_t in_use = 0;
  std::size_t waiting = 0;
  std::size_t reserved = 0;
  std::size_t max_concurrent = 0;  // the limit now (adaptive limits move it)
  std::size_t max_queue = 0;
  duration service_ewma{};  // average time a permit is held (zero: no sample yet)
};

class fiber_limiter final : public permit_source {
 public:
  enum class admit_kind { granted, reserved, queue_full, shutting_down };
  struct admit_result {
    admit_kind kind;
    qos::permit permit;  // set when granted
  };
  struct acquire_result {
    outcome result;      // admitted, timed_out, queue_full, shed or shutting_down
    qos::permit permit;  // set when admitted
  };

  // `algorithm` (optional) moves the limit from served-request samples; without one the
  // limit stays options.max_concurrent.
  explicit fiber_limiter(limiter_options options,
                         std::unique_ptr<limit_algorithm> algorithm = nullptr);
  fiber_limiter(const fiber_limiter&) = delete;
  fiber_limiter& operator=(const fiber_limiter&) = delete;

  // Never blocks or suspends: takes `cost` free units (as far as `level` may use them), or
  // reserves a queue place for a later acquire(reserved = true), or reports a full queue.
  admit_result try_admit(std::uint32_t cost = 1, priority level = 0) noexcept;
  void cancel_reservation() noexcept;

  // Fiber only. Parks the calling fiber until units are handed to it (admitted), `deadline`
  // passes (timed_out), the discipline sheds it (shed) or shutdown() (shutting_down). Units
  // granted at the very instant of the deadline are kept: the request is admitted.
  acquire_result acquire(priority level, time_point deadline, bool reserved,
                         std::uint32_t cost = 1);

  // A served request held its permit for `rtt`; call it before returning the permit. Updates
  // the service-time average and the adaptive limit (`dropped`: the backend showed overload).
  // Never call it for shed or timed-out requests: they say nothing about the backend.
  void on_served(duration rtt, bool dropped) noexcept;

  // Expected wait of a request at `level` that holds a reservation now: the waiters at its
  // level or above and every reservation (its own included) leave at limit / service time per
  // second (Little's law). Zero before the first sample.
  duration estimate_wait(priority level) const noexcept;

  // Wakes every waiter with shutting_down and refuses later admissions. Idempotent.
  void shutdown() noexcept;

  limiter_stats stats() const;
  void release_permit(std::uint32_t units) noexcept override;

 private:
  struct parked;
  static void wake(waiter& w) noexcept;

  // Held for O(1) work only and never across a suspension point, so a plain mutex is right
  // even though fibers migrate between threads.
  mutable std::mutex mutex_;
  limiter core_;                                // guarded by mutex_
  std::unique_ptr<limit_algorithm> algorithm_;  // guarded by mutex_
  double service_ewma_ns_ = 0;                  // guarded by mutex_
  bool shutting_down_ = false;                  // guarded by mutex_
};

}  // namespace qos

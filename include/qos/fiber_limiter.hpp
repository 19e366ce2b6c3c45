// The limiter of one group made safe for many threads, with waits that park a fiber, not a
// thread. Reactor threads use the non-blocking try_admit; fibers use acquire. Thread-safe.
#pragma once

#include <cstddef>
#include <mutex>

#include "qos/clock.hpp"
#include "qos/limiter.hpp"
#include "qos/outcome.hpp"
#include "qos/permit.hpp"
#include "qos/priority.hpp"

namespace qos {

struct limiter_stats {
  std::size_t in_use = 0;
  std::size_t waiting = 0;
  std::size_t reserved = 0;
  std::size_t max_concurrent = 0;
  std::size_t max_queue = 0;
};

class fiber_limiter final : public permit_source {
 public:
  enum class admit_kind { granted, reserved, queue_full, shutting_down };
  struct admit_result {
    admit_kind kind;
    qos::permit permit;  // set when granted
  };
  struct acquire_result {
    outcome result;      // admitted, timed_out, queue_full or shutting_down
    qos::permit permit;  // set when admitted
  };

  explicit fiber_limiter(limiter_options options);
  fiber_limiter(const fiber_limiter&) = delete;
  fiber_limiter& operator=(const fiber_limiter&) = delete;

  // Never blocks or suspends: takes a free permit, or reserves a queue place for a later
  // acquire(reserved = true), or reports a full queue.
  admit_result try_admit() noexcept;
  void cancel_reservation() noexcept;

  // Fiber only. Parks the calling fiber until a permit is handed to it (admitted), `deadline`
  // passes (timed_out), or shutdown() (shutting_down). A permit granted at the very instant of
  // the deadline is kept: the request is admitted.
  acquire_result acquire(priority level, time_point deadline, bool reserved);

  // Wakes every waiter with shutting_down and refuses later admissions. Idempotent.
  void shutdown() noexcept;

  limiter_stats stats() const;
  void release_permit() noexcept override;

 private:
  struct parked;
  static void wake(waiter& w) noexcept;

  // Held for O(1) work only and never across a suspension point, so a plain mutex is right
  // even though fibers migrate between threads.
  mutable std::mutex mutex_;
  limiter core_;                // guarded by mutex_
  bool shutting_down_ = false;  // guarded by mutex_
};

}  // namespace qos

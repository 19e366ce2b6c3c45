// The policy state of one limit group: its limiter (who holds permits, who waits, in what
// order), the service-time average learnt from served requests and, optionally, the adaptive
// limit algorithm that moves the limit. Single-threaded and non-blocking like the limiter:
// callers serialise access and pass `now`; nothing here reads a clock.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>

#include "qos/core/clock.hpp"
#include "qos/core/limit_algorithm.hpp"
#include "qos/core/limiter.hpp"
#include "qos/core/priority.hpp"

namespace qos {

struct group_stats {
  std::size_t in_use = 0;    // permit units held
  std::size_t waiting = 0;   // requests queued
  std::size_t reserved = 0;  // queue places held by tickets
  std::size_t limit = 0;     // the limit now (an adaptive limit moves it)
  std::size_t max_queue = 0;
  duration service_time{};  // average time a permit is held (zero: no sample yet)
  bool adaptive = false;    // an algorithm moves the limit
};

class group_controller {
 public:
  // With an algorithm, the limit starts at the algorithm's and follows it; without one it
  // stays options.max_concurrent.
  explicit group_controller(limiter_options options,
                            std::unique_ptr<limit_algorithm> algorithm = nullptr);
  // The same, remembering the options `algorithm` was made from, so that a reconfigure() with
  // the same options keeps it.
  group_controller(limiter_options options, const limit_options& made_from,
                   std::unique_ptr<limit_algorithm> algorithm);
  group_controller(const group_controller&) = delete;
  group_controller& operator=(const group_controller&) = delete;

  qos::limiter& limiter() noexcept { return limiter_; }
  const qos::limiter& limiter() const noexcept { return limiter_; }

  // A served request held its permit for `rtt` (`dropped`: the backend showed overload). Call
  // it before the permit is returned, so that in_use counts the load the request saw. Updates
  // the service-time average and the adaptive limit; waiters a raised limit grants are pushed
  // to `woken`. Never call it for shed or timed-out requests: they say nothing about the
  // backend (see limit_algorithm.hpp).
  void on_served(duration rtt, bool dropped, time_point now, waiter_list& woken) noexcept {
    const double ns = static_cast<double>(std::chrono::nanoseconds(rtt).count());
    service_ns_ = service_ns_ == 0 ? ns : service_ns_ + ewma_alpha * (ns - service_ns_);
    if (algorithm_) adapt(rtt, dropped, now, woken);
  }

  // Applies new settings (a config reload): `options` to the limiter (limiter::reconfigure:
  // nobody queued is dropped, no held unit revoked) and the limit policy. `limit` absent: a
  // fixed limit of options.max_concurrent. `limit` equal to the options the running algorithm
  // was made from: the algorithm goes on, with what it has learnt, and sets the limit.
  // Otherwise (another algorithm or other parameters, or fixed to adaptive) `fresh`, made from
  // `limit` by the caller, replaces it and the limit restarts at limit->initial, as at startup.
  // The service-time average is kept: it measures the backend, not the settings. Waiters a
  // raised limit grants are pushed to `woken`.
  void reconfigure(limiter_options options, const std::optional<limit_options>& limit,
                   std::unique_ptr<limit_algorithm> fresh, time_point now,
                   waiter_list& woken) noexcept;

  // Expected wait of a request at `level` that holds a ticket now: the waiters at its level or
  // above and every ticket (its own included) leave at limit / service time per second
  // (Little's law). Zero before the first sample.
  duration estimate_wait(priority level) const noexcept;

  duration service_time() const noexcept;
  group_stats stats() const noexcept;
  // Whether on_served reads its `now` (an adaptive limit); callers may spare the clock if not.
  bool adaptive() const noexcept { return algorithm_ != nullptr; }

 private:
  // Weight of a new sample in the service-time average: about the last 20 requests.
  static constexpr double ewma_alpha = 0.05;
  void adapt(duration rtt, bool dropped, time_point now, waiter_list& woken) noexcept;

  qos::limiter limiter_;
  std::unique_ptr<limit_algorithm> algorithm_;
  std::optional<limit_options> made_from_;  // what algorithm_ was made from, when known
  double service_ns_ = 0;                   // EWMA of served rtt; 0: no sample yet
};

}  // namespace qos

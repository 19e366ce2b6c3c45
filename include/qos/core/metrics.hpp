// The metrics interface the admission layer reports to, with a null default. Sinks hand out one
// route_metrics per route at setup, so the hot path is a single virtual call with no lookup.
// Implementations must be thread-safe: any reactor or fiber thread reports.
#pragma once

#include <string_view>

#include "qos/core/clock.hpp"
#include "qos/core/outcome.hpp"
#include "qos/core/priority.hpp"

namespace qos {

// What admission knows of one finished request; reported once per request.
struct request_report {
  outcome result = outcome::admitted;
  priority level = 0;
  duration waited{};   // arrival to admission or fallback; zero when decided at once
  duration handled{};  // how long the handler held its permit; zero when it did not run
  bool ran = false;    // the handler ran (admitted, error, exec_timeout)
};

class route_metrics {
 public:
  virtual ~route_metrics() = default;
  // Once per request, when it reaches admission.
  virtual void on_arrival(priority level) noexcept = 0;
  // Once per request, when it has been answered (or found gone).
  virtual void on_done(const request_report& r) noexcept = 0;
  // Shadow mode: the request ran, but a real gate would have given it `would_be` (timeout
  // stands for "would have waited", queue_full for "would have been shed").
  virtual void on_shadow(outcome would_be) noexcept = 0;
  // Once per fallback for a wait that ran out (timeout, deadline): how long after the wait's
  // deadline the fallback was handed to the transport. The precision of max_wait.
  virtual void on_late_fallback(duration late) noexcept { (void)late; }
};

class metrics_sink {
 public:
  virtual ~metrics_sink() = default;
  // Called once per route while the gate is built; the object must outlive the gate.
  virtual route_metrics& route(std::string_view route, std::string_view group) = 0;
};

// Discards everything.
metrics_sink& null_metrics() noexcept;

}  // namespace qos

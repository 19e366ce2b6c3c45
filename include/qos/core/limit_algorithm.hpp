// Adaptive concurrency-limit algorithms (fixed, AIMD, Gradient2, Vegas): each turns a stream of
// latency samples into a limit within [min, max] and never reads a clock. Not thread-safe: the
// limiter that owns one calls it under its own lock.
//
// The sample contract, which every algorithm relies on: report only requests whose handler ran.
// Shed, expired-in-queue and cancelled requests are never samples. Their latency measures the
// queue, not the backend, and a shed request's near-zero time looks like an idle backend: fed
// such samples, the limit creeps up exactly when the gate is overloaded. A handler that ran and
// saw the backend signal overload (an error, an upstream 503) is reported with `dropped`.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "qos/core/clock.hpp"

namespace qos {

struct limit_sample {
  duration rtt{};            // how long the handler held its permit (service time)
  std::size_t inflight = 0;  // permits in use when the request started (or finished)
  bool dropped = false;      // the backend signalled overload while the handler ran
  time_point now{};          // when the handler ended; non-decreasing from sample to sample
};

enum class limit_kind { fixed, aimd, gradient2, vegas };

// Plain values, checked once by make_limit_algorithm. Every field is checked whatever the kind,
// so a bad value is reported even before it is used.
struct limit_options {
  limit_kind kind = limit_kind::fixed;
  std::size_t min = 1;       // >= 1: a limit of 0 admits nothing, so no sample could raise it
  std::size_t max = 1000;    // >= min
  std::size_t initial = 20;  // within [min, max]
  // aimd
  double backoff_ratio = 0.9;                  // multiplicative decrease, in [0.5, 1)
  duration timeout = std::chrono::seconds(1);  // > 0; a longer rtt counts as a drop
  // gradient2
  double rtt_tolerance = 1.5;     // >= 1: how much slower than the long-term rtt is tolerated
  double smoothing = 0.2;         // in (0, 1]: weight of each new estimate
  std::size_t long_window = 600;  // >= 1: windows in the long-term rtt average
  // gradient2, vegas
  duration probe_interval = std::chrono::seconds(10);  // > 0: how often no-load rtt is measured

  bool operator==(const limit_options&) const = default;
};

class limit_algorithm {
 public:
  virtual ~limit_algorithm() = default;
  // The current limit, always within [min, max].
  virtual std::size_t limit() const noexcept = 0;
  // Folds one sample in and returns the new limit (also within [min, max]).
  virtual std::size_t on_sample(const limit_sample& s) noexcept = 0;
  virtual std::string_view name() const noexcept = 0;
};

// Semantics, after Netflix concurrency-limits (FixedLimit, AIMDLimit, Gradient2Limit,
// VegasLimit) and Envoy's adaptive-concurrency gradient controller; limit_algorithm.cpp gives the
// reason for each departure from them.
//  fixed      the limit is `initial` and never moves.
//  Every adaptive algorithm decides once per window of samples, not per sample (as Netflix's
//  WindowedLimit): a window holds as many samples as the limit was when it opened, one
//  generation of permits, and is summarised as average rtt (of samples that did not drop),
//  largest rtt, largest inflight and whether any sample dropped.
//  aimd       loss-based: a window with a drop or a sample slower than `timeout` cuts the limit
//             to floor(limit * backoff_ratio); otherwise it adds 1, but only while the limit is
//             in use (inflight * 2 >= limit). The knee is found only through `timeout`.
//  gradient2  delay-based: gradient = clamp(rtt_tolerance * long_rtt / rtt, 0.5, 1) where
//             long_rtt is an EWMA over `long_window` windows; the estimate limit * gradient
//             (+ sqrt(limit) when gradient is 1) is blended in with weight `smoothing`; a drop
//             counts as gradient 0.5. No change while inflight < limit / 2.
//  vegas      delay-based: queue = limit * (1 - rtt_noload / rtt), rtt_noload being the least
//             window rtt seen; step = max(1, floor(log10(limit))), alpha = 3 step, beta = 6 step;
//             a drop or queue > beta takes a step off; queue <= step adds beta; queue < alpha
//             adds a step; no increase while inflight * 2 < limit.
//  Probing (gradient2, vegas): every `probe_interval` the limit reads `min` for one window of
//  requests admitted after the probe began; their average rtt becomes rtt_noload (vegas) or
//  long_rtt (gradient2), and the limit returns to its value before the probe. So limit() may
//  fall to `min` for about one service time per interval, and never lower.
// Every result is clamped to [min, max].
// The first option out of range, if any: which field and what it must be.
struct limit_problem {
  std::string_view field;
  std::string message;  // what it must be, and what it is
};
std::optional<limit_problem> check(const limit_options& o) noexcept;

// Throws std::invalid_argument, naming the field, when an option is out of range (check()).
std::unique_ptr<limit_algorithm> make_limit_algorithm(const limit_options& o);

}  // namespace qos

// What a limit group and a guarded route are, as plain values, and the one function per type
// that checks their ranges. The YAML loader and code-side construction (admission) both call
// validate(), so a setting is accepted or refused the same way whichever way it comes in.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include "qos/core/clock.hpp"
#include "qos/core/limit_algorithm.hpp"
#include "qos/core/limiter.hpp"

namespace qos {

// Upper bounds of group and route settings: validate() refuses anything larger, so a typo
// (an extra zero) or a hostile file fails at load instead of exhausting memory or threads
// later. The same everywhere (not derived from the machine), so a file accepted in CI is
// accepted in production. config/qos.yaml documents each with its reason.
namespace bounds {
// Permit units of a group: max_concurrent, limit.min/max/initial, blocking_threads (and so a
// route's cost). Each permit may hold a blocking-pool thread; 100,000 is far beyond any one
// resource a group protects, and within what the kernel's threads-max allows.
inline constexpr std::size_t permits = 100'000;
// max_queue: a parked waiter costs about 9 KiB (a fiber stack's touched pages), so a full
// queue of 10^6 is about 9 GiB, the most one machine could hold.
inline constexpr std::size_t queue = 1'000'000;
// limit.long_window, in windows of about `limit` samples each: 100,000 windows already
// average over hours of traffic at any rate.
inline constexpr std::size_t long_window = 100'000;
// limit.rtt_tolerance: at 10 x the long-term rtt the backend has collapsed; beyond it
// gradient2 would never lower the limit.
inline constexpr double rtt_tolerance = 10.0;
// Every duration of a group or route (max_wait, max_exec, queue.target, queue.interval,
// aging_step, limit.timeout, limit.probe_interval): a request never waits longer than
// max_wait, so larger values of the others could never act.
inline constexpr std::chrono::hours longest{1};
}  // namespace bounds

struct group_options {
  std::string name;
  // The limiter: the limit (initial, when `limit` is set), queue cap, discipline, aging,
  // reserve.
  limiter_options limiter;
  // An adaptive limit; absent: the limit is limiter.max_concurrent, fixed. When set, the
  // limiter starts at limit->initial.
  std::optional<limit_options> limit{};
  std::size_t blocking_threads = 0;  // 0: the most permits the group may ever hand out
  bool shadow = false;               // count decisions, let everything through

  bool operator==(const group_options&) const = default;

  // The most permit units the group can ever hand out at once.
  std::size_t most_permits() const noexcept {
    return limit ? std::max(limit->max, limiter.max_concurrent) : limiter.max_concurrent;
  }
};

struct route_policy {
  std::string name;
  std::string group;
  duration max_wait = std::chrono::seconds(1);  // > 0, <= bounds::longest
  std::uint32_t cost = 1;                       // permit units per request, 1..most_permits
  bool predictive_reject = false;  // answer at once when the estimated wait exceeds the budget
  // Execution timeout: the client gets the exec_timeout fallback at max_exec, the permit stays
  // held until the handler really ends, and its late result is discarded. Needs a handler
  // that returns its response rather than writing it. A blocking job, whose verdict is read
  // only at its end, is judged when its handler returns (the same verdict, with no timer).
  // > 0, <= bounds::longest.
  std::optional<duration> max_exec{};

  bool operator==(const route_policy&) const = default;
};

// A setting out of range. key() is its path within the group or route, in YAML spelling
// ("limit.max", "reserve.permits", "cost"), so the loader can point at the line.
class invalid_option : public std::invalid_argument {
 public:
  invalid_option(std::string key, const std::string& message)
      : std::invalid_argument(key + ": " + message), key_(std::move(key)), message_(message) {}
  const std::string& key() const noexcept { return key_; }
  const std::string& message() const noexcept { return message_; }

 private:
  std::string key_;
  std::string message_;
};

// Throws invalid_option for the first setting out of range (below its minimum or above its
// bound in `bounds`). With a `limit`, checks it as make_limit_algorithm would and sets nothing:
// limiter.max_concurrent is the limit the algorithm starts from only after admission builds the
// group.
void validate(const group_options& g);
// Throws invalid_option when the route cannot work with `group` (already validated).
void validate(const route_policy& r, const group_options& group);

}  // namespace qos

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

  // The most permit units the group can ever hand out at once.
  std::size_t most_permits() const noexcept {
    return limit ? std::max(limit->max, limiter.max_concurrent) : limiter.max_concurrent;
  }
};

struct route_policy {
  std::string name;
  std::string group;
  duration max_wait = std::chrono::seconds(1);  // > 0
  std::uint32_t cost = 1;                       // permit units per request, 1..most_permits
  bool predictive_reject = false;  // answer at once when the estimated wait exceeds the budget
  // Execution timeout: the client gets the exec_timeout fallback at max_exec, the permit stays
  // held until the handler really ends, and its late result is discarded. Needs a handler
  // that returns its response rather than writing it.
  std::optional<duration> max_exec{};
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

// Throws invalid_option for the first setting out of range. With a `limit`, checks it as
// make_limit_algorithm would and sets nothing: limiter.max_concurrent is the limit the
// algorithm starts from only after admission builds the group.
void validate(const group_options& g);
// Throws invalid_option when the route cannot work with `group` (already validated).
void validate(const route_policy& r, const group_options& group);

}  // namespace qos

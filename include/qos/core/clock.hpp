// Time vocabulary of qos. The core never reads a clock itself: callers pass `now`, so unit tests
// drive it with manual_clock and never sleep. Thread-safety: manual_clock is not thread-safe.
#pragma once

#include <chrono>

namespace qos {

using clock = std::chrono::steady_clock;
using time_point = clock::time_point;
using duration = clock::duration;

// A clock that moves only when told to; for tests of deadline logic.
class manual_clock {
 public:
  explicit manual_clock(time_point start = time_point{}) : now_(start) {}
  time_point now() const noexcept { return now_; }
  void advance(duration d) noexcept { now_ += d; }

 private:
  time_point now_;
};

}  // namespace qos

// What a job store throws when its database fails under a call that has no error value of its
// own (claim, heartbeat, complete, fail, status, ...) or cannot be opened. enqueue() never
// throws it: it answers `unavailable`. Consumers catch it, log it and retry later.
#pragma once

#include <stdexcept>

namespace qos::jobs {

class store_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace qos::jobs

// The retry schedule of a failed job, shared by every store: capped exponential backoff with
// uniform ± jitter, so jobs that failed together (a backend outage) do not retry in lockstep.
// Pure functions of their arguments; the randomness is injected so tests are deterministic.
#pragma once

#include <chrono>
#include <functional>

#include "qos/jobs/job_store.hpp"

namespace qos::jobs {

// A uniform draw in [0, 1). Stores call it from one thread at a time.
using unit_random_fn = std::function<double()>;

// The delay before the run that follows failed run `attempt` (1 for the first run):
// min(cap, base * 2^(attempt - 1)) scaled by 1 + jitter * (2 * unit - 1), never negative.
// `unit` is a draw in [0, 1); 0.5 gives the schedule without jitter.
std::chrono::milliseconds retry_delay(const retry_policy& policy, int attempt, double unit);

// A fast non-cryptographic generator seeded from getrandom(2); the returned function is
// thread-safe (jitter needs spread, not secrecy).
unit_random_fn default_unit_random();

}  // namespace qos::jobs

#include "qos/jobs/backoff.hpp"

#include <sys/random.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>

namespace qos::jobs {

std::chrono::milliseconds retry_delay(const retry_policy& policy, int attempt, double unit) {
  // In double, so a large attempt count saturates at the cap instead of overflowing a shift.
  const double base = static_cast<double>(std::max<std::int64_t>(policy.base.count(), 0));
  const double cap = static_cast<double>(std::max<std::int64_t>(policy.cap.count(), 0));
  const int doublings = std::clamp(attempt, 1, 64) - 1;
  const double raw = std::min(cap, base * std::ldexp(1.0, doublings));
  const double jitter = std::clamp(policy.jitter, 0.0, 1.0);
  const double spread = 1.0 + jitter * (2.0 * std::clamp(unit, 0.0, 1.0) - 1.0);
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(raw * spread)));
}

unit_random_fn default_unit_random() {
  struct state {
    std::mutex mutex;
    std::mt19937_64 engine;
  };
  std::uint64_t seed = 0;
  if (::getrandom(&seed, sizeof seed, 0) != static_cast<ssize_t>(sizeof seed)) {
    seed = std::random_device{}();
  }
  auto shared = std::make_shared<state>();
  shared->engine.seed(seed);
  return [shared] {
    const std::lock_guard lock(shared->mutex);
    return std::uniform_real_distribution<double>(0.0, 1.0)(shared->engine);
  };
}

}  // namespace qos::jobs

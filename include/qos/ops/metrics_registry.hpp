// Counters behind the metrics_sink interface, their Prometheus text exposition, and the
// shedding monitor that logs when a group starts and stops shedding (once per transition,
// never per request). Counters are atomics: any thread reports. render/tick are thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>

#include "qos/admission/admission.hpp"
#include "qos/core/metrics.hpp"

namespace qos {

class metrics_registry final : public metrics_sink {
 public:
  // Upper bounds (seconds) of the wait-time histogram buckets; +Inf is implied.
  static constexpr std::array<double, 11> wait_buckets = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                          0.25,  0.5,   1.0,  2.5,   5.0};

  // Upper bounds (seconds) of the fallback-lateness histogram buckets; +Inf is implied.
  static constexpr std::array<double, 9> late_buckets = {0.0005, 0.001, 0.002, 0.005, 0.01,
                                                         0.025,  0.05,  0.1,   0.25};

  struct route_counters final : route_metrics {
    std::string route, group;
    std::array<std::atomic<std::uint64_t>, outcome_count> outcomes{};
    std::array<std::atomic<std::uint64_t>, wait_buckets.size() + 1> wait_hist{};
    std::atomic<std::uint64_t> wait_ns_sum{0};
    std::atomic<std::uint64_t> served{0};
    std::atomic<std::uint64_t> served_ns_sum{0};
    std::atomic<std::uint64_t> shadow_queued{0};  // shadow mode: would have waited
    std::atomic<std::uint64_t> shadow_shed{0};    // shadow mode: would have been shed
    std::array<std::atomic<std::uint64_t>, late_buckets.size() + 1> late_hist{};
    std::atomic<std::uint64_t> late_ns_sum{0};

    std::atomic<std::uint64_t> arrivals{0};
    void on_arrival(priority level) noexcept override;
    void on_done(const request_report& r) noexcept override;
    void on_outcome(outcome o, duration waited) noexcept;
    void on_served(duration took) noexcept;
    void on_shadow(outcome would_be) noexcept override;
    void on_late_fallback(duration late) noexcept override;
    std::uint64_t count(outcome o) const noexcept {
      return outcomes[static_cast<std::size_t>(o)].load(std::memory_order_relaxed);
    }
  };

  route_metrics& route(std::string_view route, std::string_view group) override;

  // Prometheus text format 0.0.4: per-route outcome counters, wait histogram, handler time,
  // and per-group gauges read from `adm`.
  std::string render(admission& adm) const;

  // Call about once a second: logs a warning when a group starts shedding (queue full,
  // timeouts, refused posts, CoDel, deadlines, predictions) and a note when it stops, and a
  // note when an adaptive limit moved since the last tick.
  void tick(admission& adm);

  const route_counters* find(const std::string& route) const;

 private:
  struct shed_state {
    std::uint64_t last_total = 0;
    bool shedding = false;
    clock::time_point since{};
    std::uint64_t at_start = 0;
    std::size_t last_limit = 0;
  };

  mutable std::mutex mutex_;           // guards the maps' shape, not the counters
  std::deque<route_counters> routes_;  // deque: stable addresses
  std::map<std::string, route_counters*, std::less<>> by_name_;
  std::map<std::string, shed_state, std::less<>> shed_;
};

}  // namespace qos

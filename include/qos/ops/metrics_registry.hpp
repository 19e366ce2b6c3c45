// The qos metrics on prometheus-cpp's core library: the metrics_sink admission reports to, the
// text exposition of a prometheus::Registry (its own, or the application's so that both sets of
// metrics share one page), and the shedding monitor that logs when a group starts and stops
// shedding (once per transition, never per request). Thread-safe; reporting takes no lock once
// a route has seen a priority level (see route_series).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "qos/admission/admission.hpp"
#include "qos/core/metrics.hpp"
#include "qos/core/outcome.hpp"
#include "qos/core/priority.hpp"

namespace qos {

// Every metric family qos exports, in one list. Labels: route and group on the per-route
// families, plus priority (the level, "0".."15") on the two request counters and outcome (the
// wire word of outcome_table) on qos_requests_total; decision ("queue", "shed") on the shadow
// counter; group on the group gauges; version on qos_build_info.
enum class metric : std::uint8_t {
  requests_arrived,       // counter {route, group, priority}
  requests,               // counter {route, group, outcome, priority}
  wait_seconds,           // histogram {route, group}
  handler_seconds,        // histogram {route, group}
  fallback_late_seconds,  // histogram {route, group}
  shadow,                 // counter {route, group, decision}
  group_limit,            // gauge {group}, read from admission at scrape time
  group_in_use,           // gauge {group}
  group_waiting,          // gauge {group}
  group_queue_limit,      // gauge {group}
  group_service_seconds,  // gauge {group}
  build_info,             // gauge {version}, always 1
  config_reloads,         // counter {result}: "ok" or "error"
  config_last_reload,     // gauge, no labels: Unix time of the last applied reload
};

struct metric_traits {
  metric value;
  std::string_view name;
  std::string_view help;  // written as is: prometheus-cpp 1.0 escapes no '\\' or newline in HELP
};

inline constexpr std::array<metric_traits, 14> metric_table{{
    {metric::requests_arrived, "qos_requests_arrived_total",
     "Guarded requests that reached admission, by priority level."},
    {metric::requests, "qos_requests_total",
     "Guarded requests answered, by outcome and priority level. Once every request is "
     "answered, the sum over outcomes equals qos_requests_arrived_total."},
    {metric::wait_seconds, "qos_wait_seconds", "Time from arrival to admission or fallback."},
    {metric::handler_seconds, "qos_handler_seconds", "Time handlers held their permit."},
    {metric::fallback_late_seconds, "qos_fallback_late_seconds",
     "How long after the end of its wait (max_wait or the client's deadline) a fallback was "
     "handed to the transport."},
    {metric::shadow, "qos_shadow_total",
     "Shadow mode: requests let through that a real gate would have queued or shed."},
    {metric::group_limit, "qos_group_limit",
     "The concurrency limit now (adaptive limits move it)."},
    {metric::group_in_use, "qos_group_in_use", "Permits held now."},
    {metric::group_waiting, "qos_group_waiting",
     "Requests parked now (including reserved places)."},
    {metric::group_queue_limit, "qos_group_queue_limit", "Configured max_queue."},
    {metric::group_service_seconds, "qos_group_service_seconds",
     "Average time a permit is held (over about the last 20 requests; 0 before the first)."},
    {metric::build_info, "qos_build_info", "The qos version these metrics come from; always 1."},
    {metric::config_reloads, "qos_config_reloads_total",
     "Config reloads asked for, by result: ok (applied) or error (refused; the running config "
     "stayed)."},
    {metric::config_last_reload, "qos_config_last_reload_success_timestamp_seconds",
     "Unix time of the last config reload that was applied (0: none since start)."},
}};

constexpr const metric_traits& traits(metric m) noexcept {
  return metric_table[static_cast<std::size_t>(m)];
}

consteval bool metric_table_is_sound() {
  for (std::size_t i = 0; i < metric_table.size(); ++i) {
    if (static_cast<std::size_t>(metric_table[i].value) != i) return false;
    for (char c : metric_table[i].help) {
      if (c == '\\' || c == '\n') return false;
    }
  }
  return true;
}
static_assert(metric_table_is_sound());

class metrics_registry final : public metrics_sink {
  // A histogram the hot path feeds without a lock. prometheus-cpp 1.0's Histogram::Observe
  // locks a mutex per series (so that a scrape sees a count and a sum that match), so
  // observations go to relaxed atomics, and fold() adds those that came since the last fold to
  // the prometheus Histogram in one ObserveMultiple. The sum is kept in integer nanoseconds:
  // exact. A scrape may see a count and a sum one observation apart; the next one catches up.
  template <std::size_t N>
  class atomic_histogram {
   public:
    atomic_histogram(const std::array<double, N>& upper, prometheus::Histogram& target) noexcept
        : upper_(upper), target_(target) {}
    atomic_histogram(const atomic_histogram&) = delete;
    atomic_histogram& operator=(const atomic_histogram&) = delete;

    void observe(duration d) noexcept;
    std::uint64_t count() const noexcept;
    // Callers serialize folds (the registry's mutex_).
    void fold();

   private:
    const std::array<double, N>& upper_;  // bucket upper bounds in seconds; +Inf implied
    prometheus::Histogram& target_;
    std::array<std::atomic<std::uint64_t>, N + 1> counts_{};  // per bucket, not cumulative
    std::atomic<std::uint64_t> sum_ns_{0};
    std::array<std::uint64_t, N + 1> folded_{};  // counts_ at the last fold
    std::uint64_t folded_sum_ns_ = 0;            // sum_ns_ at the last fold
  };

 public:
  // Upper bounds (seconds) of the histogram buckets; +Inf is implied.
  static constexpr std::array<double, 11> wait_buckets = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                          0.25,  0.5,   1.0,  2.5,   5.0};
  static constexpr std::array<double, 13> handler_buckets = {
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};
  static constexpr std::array<double, 9> late_buckets = {0.0005, 0.001, 0.002, 0.005, 0.01,
                                                         0.025,  0.05,  0.1,   0.25};

  // The prometheus-cpp families, registered once in the constructor.
  struct families {
    prometheus::Family<prometheus::Counter>* arrived;
    prometheus::Family<prometheus::Counter>* requests;
    prometheus::Family<prometheus::Histogram>* wait;
    prometheus::Family<prometheus::Histogram>* handler;
    prometheus::Family<prometheus::Histogram>* late;
    prometheus::Family<prometheus::Counter>* shadow;
    prometheus::Family<prometheus::Gauge>* group_limit;
    prometheus::Family<prometheus::Gauge>* group_in_use;
    prometheus::Family<prometheus::Gauge>* group_waiting;
    prometheus::Family<prometheus::Gauge>* group_queue_limit;
    prometheus::Family<prometheus::Gauge>* group_service;
    prometheus::Family<prometheus::Gauge>* build_info;
    prometheus::Family<prometheus::Counter>* config_reloads;
    prometheus::Family<prometheus::Gauge>* config_last_reload;
  };

  // One route's series. The histograms and shadow counters exist from route(); the counters of
  // a priority level are all created (at 0) when the route first sees that level, under
  // create_mutex_, and published through an atomic pointer. After that a report takes no lock
  // and allocates nothing: a pointer load, prometheus::Counter::Increment (a CAS on an atomic
  // double) and relaxed atomic adds into the histograms. Pinned: admission holds a pointer to it.
  class route_series final : public route_metrics {
   public:
    route_series(const families& f, std::string route, std::string group);
    route_series(const route_series&) = delete;
    route_series& operator=(const route_series&) = delete;

    void on_arrival(priority level) noexcept override;
    void on_done(const request_report& r) noexcept override;
    void on_shadow(outcome would_be) noexcept override;
    void on_late_fallback(duration late) noexcept override;

    const std::string& route() const noexcept { return route_; }
    const std::string& group() const noexcept { return group_; }
    // Reads for the shedding monitor and tests, summed over priority levels. A request in
    // flight has arrived but has no outcome yet.
    std::uint64_t arrivals() const noexcept;
    std::uint64_t count(outcome o) const noexcept;
    std::uint64_t count(outcome o, priority level) const noexcept;
    // Observations in the fallback-lateness histogram, folded into the registry or not.
    std::uint64_t late_count() const noexcept;

   private:
    friend class metrics_registry;
    struct level_series {
      prometheus::Counter* arrived = nullptr;
      std::array<prometheus::Counter*, outcome_count> outcomes{};
    };
    // The level's counters; creates them on the route's first request at that level.
    const level_series& at(priority level) noexcept;

    const families& families_;
    const std::string route_, group_;
    // Folded into the registry's histograms by metrics_registry::refresh, under its mutex_.
    atomic_histogram<wait_buckets.size()> wait_;
    atomic_histogram<handler_buckets.size()> handler_;
    atomic_histogram<late_buckets.size()> late_;
    prometheus::Counter& shadow_queued_;  // shadow mode: would have waited
    prometheus::Counter& shadow_shed_;    // shadow mode: would have been shed

    std::mutex create_mutex_;                            // guards storage_ while it is written
    std::array<level_series, priority_levels> storage_;  // written once per level, then read-only
    // storage_[level] once complete (release; the hot path loads with acquire), else null.
    std::array<std::atomic<const level_series*>, priority_levels> levels_{};
  };

  // Registers the qos families in `registry` (the application's own, so that its metrics and
  // qos's appear on one page). Throws std::invalid_argument when the registry already has one of
  // metric_table's names as another type, or has one and was made with InsertBehavior::Throw.
  // With InsertBehavior::Merge (the default) two metrics_registry on one registry share their
  // series. The families stay in the registry after this object is gone.
  explicit metrics_registry(std::shared_ptr<prometheus::Registry> registry);
  // A registry of its own.
  metrics_registry();
  metrics_registry(const metrics_registry&) = delete;
  metrics_registry& operator=(const metrics_registry&) = delete;

  route_metrics& route(std::string_view route, std::string_view group) override;

  // Brings the registry up to date: sets the group gauges from `adm` and adds the histograms'
  // observations since the last refresh (the counters are always up to date). render() and
  // tick() call it; an application that serializes the registry its own way calls it first, or
  // relies on tick(), once a second.
  void refresh(admission& adm);

  // Prometheus text format 0.0.4 of the whole registry (with the application's own metrics
  // when it is the application's), after refresh(adm).
  std::string render(admission& adm);

  // Call about once a second: logs a warning when a group starts shedding (queue full,
  // timeouts, refused posts, CoDel, deadlines, predictions) and a note when it stops, and a
  // note when an adaptive limit moved since the last tick. Calls refresh(adm).
  void tick(admission& adm);

  // Counts one config reload: applied (`ok`, which also sets the time of the last one to now)
  // or refused. Thread-safe; no lock.
  void on_reload(bool ok) noexcept;
  // qos_config_reloads_total{result="ok"} or {result="error"}.
  std::uint64_t reloads(bool ok) const noexcept;

  // The series of a route, or null when no route of that name was registered.
  const route_series* find(std::string_view route) const;
  // Every route's series, by name.
  std::vector<const route_series*> routes() const;
  // Whether tick() last found `group` shedding.
  bool shedding(std::string_view group) const;

  const std::shared_ptr<prometheus::Registry>& registry() const noexcept { return registry_; }

 private:
  struct group_gauges {
    prometheus::Gauge* limit;
    prometheus::Gauge* in_use;
    prometheus::Gauge* waiting;
    prometheus::Gauge* queue_limit;
    prometheus::Gauge* service;
  };
  struct shed_state {
    std::uint64_t last_total = 0;
    bool shedding = false;
    clock::time_point since{};
    std::uint64_t at_start = 0;
    std::size_t last_limit = 0;
  };

  void refresh_locked(admission& adm);

  const std::shared_ptr<prometheus::Registry> registry_;
  const families families_;
  prometheus::Counter& reloads_ok_;
  prometheus::Counter& reloads_error_;
  prometheus::Gauge& last_reload_;

  mutable std::mutex mutex_;         // guards everything below; reports never take it
  std::deque<route_series> routes_;  // deque: stable addresses
  std::map<std::string, route_series*, std::less<>> by_name_;
  std::map<std::string, group_gauges, std::less<>> groups_;
  std::map<std::string, shed_state, std::less<>> shed_;
};

}  // namespace qos

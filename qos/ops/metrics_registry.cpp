#include "qos/ops/metrics_registry.hpp"

#include <algorithm>
#include <chrono>
#include <sstream>

#include <spdlog/spdlog.h>

namespace qos {
namespace {

std::uint64_t ns(duration d) {
  return static_cast<std::uint64_t>(
      std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
}

}  // namespace

void metrics_registry::route_counters::on_arrival(priority) noexcept {
  arrivals.fetch_add(1, std::memory_order_relaxed);
}

void metrics_registry::route_counters::on_done(const request_report& r) noexcept {
  on_outcome(r.result, r.waited);
  if (r.ran) on_served(r.handled);
}

void metrics_registry::route_counters::on_outcome(outcome o, duration waited) noexcept {
  outcomes[static_cast<std::size_t>(o)].fetch_add(1, std::memory_order_relaxed);
  const double s = std::chrono::duration<double>(waited).count();
  std::size_t b = 0;
  while (b < wait_buckets.size() && s > wait_buckets[b]) ++b;
  wait_hist[b].fetch_add(1, std::memory_order_relaxed);
  wait_ns_sum.fetch_add(ns(waited), std::memory_order_relaxed);
  if (spdlog::should_log(spdlog::level::debug)) {
    spdlog::debug("qos: route={} group={} outcome={} waited_ms={:.3f}", route, group, to_string(o),
                  s * 1000.0);
  }
}

void metrics_registry::route_counters::on_served(duration took) noexcept {
  served.fetch_add(1, std::memory_order_relaxed);
  served_ns_sum.fetch_add(ns(took), std::memory_order_relaxed);
}

void metrics_registry::route_counters::on_shadow(outcome would_be) noexcept {
  (would_be == outcome::queue_full ? shadow_shed : shadow_queued)
      .fetch_add(1, std::memory_order_relaxed);
}

void metrics_registry::route_counters::on_late_fallback(duration late) noexcept {
  const double s = std::chrono::duration<double>(late).count();
  std::size_t b = 0;
  while (b < late_buckets.size() && s > late_buckets[b]) ++b;
  late_hist[b].fetch_add(1, std::memory_order_relaxed);
  late_ns_sum.fetch_add(ns(late), std::memory_order_relaxed);
}

route_metrics& metrics_registry::route(std::string_view route, std::string_view group) {
  std::lock_guard lk(mutex_);
  auto& c = routes_.emplace_back();
  c.route = std::string(route);
  c.group = std::string(group);
  by_name_[c.route] = &c;
  return c;
}

const metrics_registry::route_counters* metrics_registry::find(const std::string& route) const {
  std::lock_guard lk(mutex_);
  auto it = by_name_.find(route);
  return it == by_name_.end() ? nullptr : it->second;
}

std::string metrics_registry::render(admission& adm) const {
  std::ostringstream out;
  std::lock_guard lk(mutex_);
  out << "# HELP qos_requests_total Guarded requests by route and outcome.\n"
         "# TYPE qos_requests_total counter\n";
  for (const auto& c : routes_) {
    for (std::size_t i = 0; i < outcome_count; ++i) {
      out << "qos_requests_total{route=\"" << c.route << "\",group=\"" << c.group << "\",outcome=\""
          << to_string(static_cast<outcome>(i)) << "\"} "
          << c.outcomes[i].load(std::memory_order_relaxed) << '\n';
    }
  }
  out << "# HELP qos_wait_seconds Time from arrival to admission or fallback.\n"
         "# TYPE qos_wait_seconds histogram\n";
  for (const auto& c : routes_) {
    std::uint64_t cumulative = 0;
    const std::string labels = "route=\"" + c.route + "\",group=\"" + c.group + "\"";
    for (std::size_t b = 0; b <= wait_buckets.size(); ++b) {
      cumulative += c.wait_hist[b].load(std::memory_order_relaxed);
      out << "qos_wait_seconds_bucket{" << labels << ",le=\"";
      if (b < wait_buckets.size()) {
        out << wait_buckets[b];
      } else {
        out << "+Inf";
      }
      out << "\"} " << cumulative << '\n';
    }
    out << "qos_wait_seconds_sum{" << labels << "} "
        << static_cast<double>(c.wait_ns_sum.load(std::memory_order_relaxed)) / 1e9 << '\n';
    out << "qos_wait_seconds_count{" << labels << "} " << cumulative << '\n';
  }
  out << "# HELP qos_fallback_late_seconds How long after the end of its wait (max_wait or the "
         "client's deadline) a fallback was handed to the transport.\n"
         "# TYPE qos_fallback_late_seconds histogram\n";
  for (const auto& c : routes_) {
    std::uint64_t cumulative = 0;
    const std::string labels = "route=\"" + c.route + "\",group=\"" + c.group + "\"";
    for (std::size_t b = 0; b <= late_buckets.size(); ++b) {
      cumulative += c.late_hist[b].load(std::memory_order_relaxed);
      out << "qos_fallback_late_seconds_bucket{" << labels << ",le=\"";
      if (b < late_buckets.size()) {
        out << late_buckets[b];
      } else {
        out << "+Inf";
      }
      out << "\"} " << cumulative << '\n';
    }
    out << "qos_fallback_late_seconds_sum{" << labels << "} "
        << static_cast<double>(c.late_ns_sum.load(std::memory_order_relaxed)) / 1e9 << '\n';
    out << "qos_fallback_late_seconds_count{" << labels << "} " << cumulative << '\n';
  }
  out << "# HELP qos_handler_seconds Time handlers held their permit.\n"
         "# TYPE qos_handler_seconds summary\n";
  for (const auto& c : routes_) {
    const std::string labels = "route=\"" + c.route + "\",group=\"" + c.group + "\"";
    out << "qos_handler_seconds_sum{" << labels << "} "
        << static_cast<double>(c.served_ns_sum.load(std::memory_order_relaxed)) / 1e9 << '\n';
    out << "qos_handler_seconds_count{" << labels << "} "
        << c.served.load(std::memory_order_relaxed) << '\n';
  }
  out << "# HELP qos_shadow_total Shadow mode: requests let through that a real gate would "
         "have queued or shed.\n# TYPE qos_shadow_total counter\n";
  for (const auto& c : routes_) {
    const std::string labels = "route=\"" + c.route + "\",group=\"" + c.group + "\"";
    out << "qos_shadow_total{" << labels << ",decision=\"queue\"} "
        << c.shadow_queued.load(std::memory_order_relaxed) << '\n';
    out << "qos_shadow_total{" << labels << ",decision=\"shed\"} "
        << c.shadow_shed.load(std::memory_order_relaxed) << '\n';
  }
  out << "# HELP qos_group_in_use Permits held now.\n# TYPE qos_group_in_use gauge\n";
  auto groups = adm.groups();
  for (auto* g : groups) {
    out << "qos_group_in_use{group=\"" << g->name() << "\"} " << g->stats().in_use << '\n';
  }
  out << "# HELP qos_group_waiting Requests parked now (including reserved places).\n"
         "# TYPE qos_group_waiting gauge\n";
  for (auto* g : groups) {
    const auto s = g->stats();
    out << "qos_group_waiting{group=\"" << g->name() << "\"} " << s.waiting + s.reserved << '\n';
  }
  out << "# HELP qos_group_limit The concurrency limit now (adaptive limits move it).\n# TYPE "
         "qos_group_limit gauge\n";
  for (auto* g : groups) {
    out << "qos_group_limit{group=\"" << g->name() << "\"} " << g->stats().limit << '\n';
  }
  out << "# HELP qos_group_queue_limit Configured max_queue.\n"
         "# TYPE qos_group_queue_limit gauge\n";
  for (auto* g : groups) {
    out << "qos_group_queue_limit{group=\"" << g->name() << "\"} " << g->stats().max_queue << '\n';
  }
  return out.str();
}

void metrics_registry::tick(admission& adm) {
  std::lock_guard lk(mutex_);
  std::map<std::string, std::uint64_t, std::less<>> totals;
  for (const auto& c : routes_) {
    auto& t = totals[c.group];
    for (std::size_t i = 0; i < outcome_count; ++i) {
      if (outcome_table[i].shed) t += c.count(static_cast<outcome>(i));
    }
  }
  const auto now = clock::now();
  for (auto& [group, total] : totals) {
    auto& s = shed_[group];
    const std::uint64_t delta = total - s.last_total;
    s.last_total = total;
    group_stats st;
    if (auto* g = adm.find_group(group)) st = g->stats();
    if (s.last_limit != 0 && st.limit != s.last_limit) {
      spdlog::info("qos: group '{}' limit {} -> {} (in use {}, waiting {}, service {:.1f} ms)",
                   group, s.last_limit, st.limit, st.in_use, st.waiting + st.reserved,
                   std::chrono::duration<double, std::milli>(st.service_time).count());
    }
    s.last_limit = st.limit;
    if (delta > 0 && !s.shedding) {
      s.shedding = true;
      s.since = now;
      s.at_start = total - delta;
      spdlog::warn(
          "qos: group '{}' started shedding: {} requests answered by fallback in the "
          "last tick (in use {}/{}, waiting {}/{})",
          group, delta, st.in_use, st.limit, st.waiting + st.reserved, st.max_queue);
    } else if (delta == 0 && s.shedding) {
      s.shedding = false;
      spdlog::info("qos: group '{}' stopped shedding after {:.1f} s; {} requests shed", group,
                   std::chrono::duration<double>(now - s.since).count(), total - s.at_start);
    }
  }
}

}  // namespace qos

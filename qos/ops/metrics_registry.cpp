#include "qos/ops/metrics_registry.hpp"

#include <algorithm>
#include <cassert>
#include <chrono>
#include <type_traits>
#include <utility>
#include <vector>

#include <prometheus/text_serializer.h>
#include "qos/ops/log.hpp"

#include "qos/version.hpp"

namespace qos {

// Pinned: admission keeps pointers to the route_series a registry hands out.
static_assert(!std::is_copy_constructible_v<metrics_registry> &&
              !std::is_move_constructible_v<metrics_registry>);
static_assert(!std::is_copy_constructible_v<metrics_registry::route_series> &&
              !std::is_move_constructible_v<metrics_registry::route_series>);
// What "a report takes no lock" rests on: prometheus::Counter is an std::atomic<double>.
static_assert(std::atomic<double>::is_always_lock_free &&
              std::atomic<std::uint64_t>::is_always_lock_free);

namespace {

using prometheus::Labels;

double seconds(duration d) noexcept {
  return std::max(0.0, std::chrono::duration<double>(d).count());
}

std::uint64_t nanoseconds(duration d) noexcept {
  return static_cast<std::uint64_t>(
      std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
}

template <std::size_t N>
prometheus::Histogram::BucketBoundaries boundaries(const std::array<double, N>& upper) {
  return {upper.begin(), upper.end()};
}

// The values of the priority label, "0".."15".
const std::array<std::string, priority_levels>& level_names() {
  static const auto names = [] {
    std::array<std::string, priority_levels> n;
    for (int i = 0; i < priority_levels; ++i) n[static_cast<std::size_t>(i)] = std::to_string(i);
    return n;
  }();
  return names;
}

template <typename Builder>
auto* add_family(Builder builder, prometheus::Registry& registry, metric m) {
  return &builder.Name(std::string(traits(m).name))
              .Help(std::string(traits(m).help))
              .Register(registry);
}

metrics_registry::families register_families(prometheus::Registry& r) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  return {
      .arrived = add_family(BuildCounter(), r, metric::requests_arrived),
      .requests = add_family(BuildCounter(), r, metric::requests),
      .wait = add_family(BuildHistogram(), r, metric::wait_seconds),
      .handler = add_family(BuildHistogram(), r, metric::handler_seconds),
      .late = add_family(BuildHistogram(), r, metric::fallback_late_seconds),
      .shadow = add_family(BuildCounter(), r, metric::shadow),
      .group_limit = add_family(BuildGauge(), r, metric::group_limit),
      .group_in_use = add_family(BuildGauge(), r, metric::group_in_use),
      .group_waiting = add_family(BuildGauge(), r, metric::group_waiting),
      .group_queue_limit = add_family(BuildGauge(), r, metric::group_queue_limit),
      .group_service = add_family(BuildGauge(), r, metric::group_service_seconds),
      .build_info = add_family(BuildGauge(), r, metric::build_info),
      .config_reloads = add_family(BuildCounter(), r, metric::config_reloads),
      .config_last_reload = add_family(BuildGauge(), r, metric::config_last_reload),
  };
}

}  // namespace

template <std::size_t N>
void metrics_registry::atomic_histogram<N>::observe(duration d) noexcept {
  const std::uint64_t ns = nanoseconds(d);
  const double s = static_cast<double>(ns) / 1e9;
  // The bucket prometheus-cpp would pick: the first upper bound >= s (le is inclusive).
  std::size_t b = 0;
  while (b < N && s > upper_[b]) ++b;
  counts_[b].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(ns, std::memory_order_relaxed);
}

template <std::size_t N>
std::uint64_t metrics_registry::atomic_histogram<N>::count() const noexcept {
  std::uint64_t n = 0;
  for (const auto& c : counts_) n += c.load(std::memory_order_relaxed);
  return n;
}

template <std::size_t N>
void metrics_registry::atomic_histogram<N>::fold() {
  std::vector<double> increments(N + 1);
  bool any = false;
  for (std::size_t b = 0; b <= N; ++b) {
    const std::uint64_t now = counts_[b].load(std::memory_order_relaxed);
    increments[b] = static_cast<double>(now - folded_[b]);
    any = any || now != folded_[b];
    folded_[b] = now;
  }
  const std::uint64_t sum = sum_ns_.load(std::memory_order_relaxed);
  const double sum_s = static_cast<double>(sum - folded_sum_ns_) / 1e9;
  folded_sum_ns_ = sum;
  if (any || sum_s != 0) target_.ObserveMultiple(increments, sum_s);
}

metrics_registry::route_series::route_series(const families& f, std::string route,
                                             std::string group)
    : families_(f),
      route_(std::move(route)),
      group_(std::move(group)),
      wait_(wait_buckets,
            f.wait->Add({{"route", route_}, {"group", group_}}, boundaries(wait_buckets))),
      handler_(handler_buckets,
               f.handler->Add({{"route", route_}, {"group", group_}}, boundaries(handler_buckets))),
      late_(late_buckets,
            f.late->Add({{"route", route_}, {"group", group_}}, boundaries(late_buckets))),
      shadow_queued_(f.shadow->Add({{"route", route_}, {"group", group_}, {"decision", "queue"}})),
      shadow_shed_(f.shadow->Add({{"route", route_}, {"group", group_}, {"decision", "shed"}})) {}

// The slow path runs at most once per level and route. It allocates (the labels, the series);
// running out of memory here ends the process, as a report cannot fail.
const metrics_registry::route_series::level_series& metrics_registry::route_series::at(
    priority level) noexcept {
  const auto l = std::min(level, max_priority);
  if (const auto* s = levels_[l].load(std::memory_order_acquire)) return *s;
  std::lock_guard lk(create_mutex_);
  if (const auto* s = levels_[l].load(std::memory_order_relaxed)) return *s;
  auto& s = storage_[l];
  const std::string& name = level_names()[l];
  s.arrived = &families_.arrived->Add({{"route", route_}, {"group", group_}, {"priority", name}});
  for (const auto& row : outcome_table) {
    s.outcomes[index(row.value)] = &families_.requests->Add({{"route", route_},
                                                             {"group", group_},
                                                             {"outcome", std::string(row.name)},
                                                             {"priority", name}});
  }
  levels_[l].store(&s, std::memory_order_release);
  return s;
}

void metrics_registry::route_series::on_arrival(priority level) noexcept {
  at(level).arrived->Increment();
}

void metrics_registry::route_series::on_done(const request_report& r) noexcept {
  assert(index(r.result) < outcome_count);
  at(r.level).outcomes[index(r.result)]->Increment();
  wait_.observe(r.waited);
  if (r.ran) handler_.observe(r.handled);
}

void metrics_registry::route_series::on_shadow(outcome would_be) noexcept {
  (would_be == outcome::queue_full ? shadow_shed_ : shadow_queued_).Increment();
}

void metrics_registry::route_series::on_late_fallback(duration late) noexcept {
  late_.observe(late);
}

std::uint64_t metrics_registry::route_series::arrivals() const noexcept {
  std::uint64_t n = 0;
  for (const auto& level : levels_) {
    if (const auto* s = level.load(std::memory_order_acquire)) {
      n += static_cast<std::uint64_t>(s->arrived->Value());
    }
  }
  return n;
}

std::uint64_t metrics_registry::route_series::count(outcome o) const noexcept {
  std::uint64_t n = 0;
  for (int l = 0; l < priority_levels; ++l) n += count(o, static_cast<priority>(l));
  return n;
}

std::uint64_t metrics_registry::route_series::count(outcome o, priority level) const noexcept {
  const auto* s = levels_[std::min(level, max_priority)].load(std::memory_order_acquire);
  return s == nullptr ? 0 : static_cast<std::uint64_t>(s->outcomes[index(o)]->Value());
}

std::uint64_t metrics_registry::route_series::late_count() const noexcept {
  return late_.count();
}

metrics_registry::metrics_registry(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)),
      families_(register_families(*registry_)),
      reloads_ok_(families_.config_reloads->Add({{"result", "ok"}})),
      reloads_error_(families_.config_reloads->Add({{"result", "error"}})),
      last_reload_(families_.config_last_reload->Add({})) {
  families_.build_info->Add({{"version", std::string(version())}}).Set(1);
}

void metrics_registry::on_reload(bool ok) noexcept {
  (ok ? reloads_ok_ : reloads_error_).Increment();
  if (ok) {
    const auto since_epoch = std::chrono::system_clock::now().time_since_epoch();
    last_reload_.Set(std::chrono::duration<double>(since_epoch).count());
  }
}

std::uint64_t metrics_registry::reloads(bool ok) const noexcept {
  return static_cast<std::uint64_t>((ok ? reloads_ok_ : reloads_error_).Value());
}

metrics_registry::metrics_registry() : metrics_registry(std::make_shared<prometheus::Registry>()) {}

route_metrics& metrics_registry::route(std::string_view route, std::string_view group) {
  std::lock_guard lk(mutex_);
  auto& r = routes_.emplace_back(families_, std::string(route), std::string(group));
  by_name_.insert_or_assign(r.route(), &r);
  return r;
}

const metrics_registry::route_series* metrics_registry::find(std::string_view route) const {
  std::lock_guard lk(mutex_);
  auto it = by_name_.find(route);
  return it == by_name_.end() ? nullptr : it->second;
}

std::vector<const metrics_registry::route_series*> metrics_registry::routes() const {
  std::lock_guard lk(mutex_);
  std::vector<const route_series*> out;
  out.reserve(by_name_.size());
  for (const auto& [name, series] : by_name_) out.push_back(series);
  return out;
}

bool metrics_registry::shedding(std::string_view group) const {
  std::lock_guard lk(mutex_);
  auto it = shed_.find(group);
  return it != shed_.end() && it->second.shedding;
}

void metrics_registry::refresh(admission& adm) {
  std::lock_guard lk(mutex_);
  refresh_locked(adm);
}

void metrics_registry::refresh_locked(admission& adm) {
  for (auto& r : routes_) {
    r.wait_.fold();
    r.handler_.fold();
    r.late_.fold();
  }
  for (auto* g : adm.groups()) {
    auto it = groups_.find(g->name());
    if (it == groups_.end()) {
      const Labels labels{{"group", g->name()}};
      it = groups_
               .emplace(g->name(),
                        group_gauges{
                            .limit = &families_.group_limit->Add(labels),
                            .in_use = &families_.group_in_use->Add(labels),
                            .waiting = &families_.group_waiting->Add(labels),
                            .queue_limit = &families_.group_queue_limit->Add(labels),
                            .service = &families_.group_service->Add(labels),
                        })
               .first;
    }
    const auto s = g->stats();
    const auto& gauges = it->second;
    gauges.limit->Set(static_cast<double>(s.limit));
    gauges.in_use->Set(static_cast<double>(s.in_use));
    gauges.waiting->Set(static_cast<double>(s.waiting + s.reserved));
    gauges.queue_limit->Set(static_cast<double>(s.max_queue));
    gauges.service->Set(seconds(s.service_time));
  }
}

std::string metrics_registry::render(admission& adm) {
  refresh(adm);
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

void metrics_registry::tick(admission& adm) {
  std::lock_guard lk(mutex_);
  refresh_locked(adm);
  std::map<std::string, std::uint64_t, std::less<>> totals;
  for (const auto& c : routes_) {
    auto& t = totals[c.group()];
    for (const auto& row : outcome_table) {
      if (row.shed) t += c.count(row.value);
    }
  }
  const auto now = clock::now();
  for (auto& [group, total] : totals) {
    auto& s = shed_[group];
    const std::uint64_t delta = total - s.last_total;
    s.last_total = total;
    group_stats st;
    if (auto* g = adm.find_group(group)) st = g->stats();
    // Only an adaptive limit moves by itself; a reload logs its own changes.
    if (st.adaptive && s.last_limit != 0 && st.limit != s.last_limit) {
      logger()->info("qos: group '{}' limit {} -> {} (in use {}, waiting {}, service {:.1f} ms)",
                     group, s.last_limit, st.limit, st.in_use, st.waiting + st.reserved,
                     std::chrono::duration<double, std::milli>(st.service_time).count());
    }
    s.last_limit = st.limit;
    if (delta > 0 && !s.shedding) {
      s.shedding = true;
      s.since = now;
      s.at_start = total - delta;
      logger()->warn(
          "qos: group '{}' started shedding: {} requests answered by fallback in the "
          "last tick (in use {}/{}, waiting {}/{})",
          group, delta, st.in_use, st.limit, st.waiting + st.reserved, st.max_queue);
    } else if (delta == 0 && s.shedding) {
      s.shedding = false;
      logger()->info("qos: group '{}' stopped shedding after {:.1f} s; {} requests shed", group,
                     std::chrono::duration<double>(now - s.since).count(), total - s.at_start);
    }
  }
}

}  // namespace qos

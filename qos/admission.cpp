#include "qos/admission.hpp"

#include <stdexcept>
#include <utility>

namespace qos {

limit_group::limit_group(const group_options& options)
    : name_(options.name),
      limiter_(limiter_options{options.max_concurrent, options.max_queue}),
      pool_(options.blocking_threads != 0 ? options.blocking_threads : options.max_concurrent) {}

admission::admission(const std::vector<group_options>& groups,
                     const std::vector<route_policy>& routes, executor& exec, metrics_sink& metrics)
    : exec_(exec) {
  for (const auto& g : groups) {
    if (!groups_.emplace(g.name, std::make_unique<limit_group>(g)).second) {
      throw std::invalid_argument("duplicate group '" + g.name + "'");
    }
  }
  for (const auto& r : routes) {
    auto* group = find_group(r.group);
    if (group == nullptr) {
      throw std::invalid_argument("route '" + r.name + "' names unknown group '" + r.group + "'");
    }
    auto& m = metrics.route(r.name, r.group);
    if (!routes_.emplace(r.name, route_entry{r, group, &m}).second) {
      throw std::invalid_argument("duplicate route '" + r.name + "'");
    }
  }
}

const admission::route_entry* admission::find_route(const std::string& name) const {
  auto it = routes_.find(name);
  return it == routes_.end() ? nullptr : &it->second;
}

limit_group* admission::find_group(const std::string& name) {
  auto it = groups_.find(name);
  return it == groups_.end() ? nullptr : it->second.get();
}

std::vector<limit_group*> admission::groups() {
  std::vector<limit_group*> out;
  for (auto& [name, g] : groups_) out.push_back(g.get());
  return out;
}

namespace {

// Runs an admitted request and reports it. The permit is released when `p` goes out of scope,
// after the handler returned or threw.
void serve(const admission::route_entry& route, request_job& job, permit p, duration waited) {
  if (!job.client_connected()) {
    p.reset();  // hand the permit on before anything else: nobody will use it here
    route.metrics->on_outcome(outcome::client_gone, waited);
    job.reject(outcome::client_gone);
    return;
  }
  const auto start = clock::now();
  const outcome o = job.run(*route.group);
  p.reset();
  route.metrics->on_served(clock::now() - start);
  route.metrics->on_outcome(o, waited);
}

}  // namespace

void admission::submit(const route_entry& route, priority level,
                       std::unique_ptr<request_job> job) noexcept {
  const auto arrival = clock::now();
  auto& limiter = route.group->limiter();
  auto admit = limiter.try_admit();
  switch (admit.kind) {
    case fiber_limiter::admit_kind::queue_full:
    case fiber_limiter::admit_kind::shutting_down: {
      const auto why = admit.kind == fiber_limiter::admit_kind::queue_full ? outcome::queue_full
                                                                           : outcome::shutting_down;
      route.metrics->on_outcome(why, duration::zero());
      job->reject(why);
      return;
    }
    case fiber_limiter::admit_kind::granted:
    case fiber_limiter::admit_kind::reserved:
      break;
  }
  const bool reserved = admit.kind == fiber_limiter::admit_kind::reserved;
  request_job* raw = job.get();
  // Allocation failure here ends the process (noexcept): there is no sane answer to give.
  unique_task task([&route, level, arrival, reserved, j = std::move(job),
                    p = std::move(admit.permit)]() mutable {
    if (!reserved) {
      serve(route, *j, std::move(p), duration::zero());
      return;
    }
    const auto deadline = arrival + route.policy.max_wait;
    auto got = route.group->limiter().acquire(level, deadline, true);
    const auto waited = clock::now() - arrival;
    if (got.result != outcome::admitted) {
      route.metrics->on_outcome(got.result, waited);
      j->reject(got.result);
      return;
    }
    serve(route, *j, std::move(got.permit), waited);
  });
  if (!exec_.try_post(task)) {
    // The task still owns the job and any permit; cancel the reservation, drop the permit,
    // and answer from here.
    if (reserved) limiter.cancel_reservation();
    route.metrics->on_outcome(outcome::rejected, duration::zero());
    raw->reject(outcome::rejected);
    return;  // `task` destroys the job and returns the permit
  }
}

void admission::shutdown() noexcept {
  for (auto& [name, g] : groups_) g->limiter().shutdown();
}

}  // namespace qos

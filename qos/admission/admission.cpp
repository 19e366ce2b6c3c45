#include "qos/admission/admission.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace qos {

namespace {

std::size_t pool_size(const group_options& o) {
  if (o.blocking_threads != 0) return o.blocking_threads;
  // The pool must be able to run as many handlers as the group may ever admit at once.
  return o.limit ? std::max(o.limit->max, o.limiter.max_concurrent) : o.limiter.max_concurrent;
}

std::unique_ptr<limit_algorithm> algorithm_for(const group_options& o) {
  return o.limit ? make_limit_algorithm(*o.limit) : nullptr;
}

}  // namespace

limit_group::limit_group(const group_options& options)
    : name_(options.name),
      shadow_(options.shadow),
      limiter_(options.limiter, algorithm_for(options)),
      pool_(pool_size(options)) {}

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

// Runs an admitted request and reports it. The permit (empty in shadow mode) is returned after
// the handler ended, whether it returned, threw or overran max_exec. `start` is now, or the
// arrival of a request served inline at once (one clock read fewer on the cheapest path).
void serve(const admission::route_entry& route, request_job& job, permit p, duration waited,
           const request_context& ctx, time_point start, bool on_caller) {
  if (!job.client_connected()) {
    p.reset();  // hand the permit on before anything else: nobody will use it here
    route.metrics->on_outcome(outcome::client_gone, waited);
    job.reject(outcome::client_gone);
    return;
  }
  outcome o;
  if (on_caller) {
    inline_request_scope scope(&ctx);
    o = job.run(*route.group, route.policy);
  } else {
    request_scope scope(&ctx);
    o = job.run(*route.group, route.policy);
  }
  const auto took = clock::now() - start;
  // Only requests that really ran are latency samples; an overrun says the backend is slow.
  if (p) route.group->limiter().on_served(took, o == outcome::exec_timeout);
  p.reset();
  route.metrics->on_served(took);
  route.metrics->on_outcome(o, waited);
}

// How long a request may wait: max_wait, or less when the client's deadline minus the
// expected service time comes first (zero or less: it cannot finish in time).
duration wait_budget(const admission::route_entry& route, const request_info& info) {
  duration budget = route.policy.max_wait;
  if (info.deadline) {
    const auto service = route.group->stats().service_ewma;
    budget = std::min(budget, *info.deadline - info.arrival - service);
  }
  return budget;
}

}  // namespace

void admission::submit(const route_entry& route, const request_info& info,
                       std::unique_ptr<request_job> job) noexcept {
  auto& limiter = route.group->limiter();
  auto answer_now = [&](outcome why) {
    route.metrics->on_outcome(why, duration::zero());
    job->reject(why);
  };
  const duration budget = wait_budget(route, info);
  if (budget <= duration::zero()) return answer_now(outcome::deadline);

  auto admit = limiter.try_admit(route.policy.cost, info.level);
  if (admit.kind == fiber_limiter::admit_kind::shutting_down) {
    return answer_now(outcome::shutting_down);
  }
  bool reserved = admit.kind == fiber_limiter::admit_kind::reserved;
  if (route.group->shadow() && admit.kind != fiber_limiter::admit_kind::granted) {
    // Shadow mode: count what a real gate would do, then let the request through unlimited.
    if (reserved) limiter.cancel_reservation();
    route.metrics->on_shadow(reserved ? outcome::timed_out : outcome::queue_full);
    reserved = false;
  } else if (admit.kind == fiber_limiter::admit_kind::queue_full) {
    return answer_now(outcome::queue_full);
  } else if (reserved && route.policy.predictive_reject &&
             limiter.estimate_wait(info.level) > budget) {
    limiter.cancel_reservation();
    return answer_now(outcome::predicted_timeout);
  }

  if (!reserved && job->runs_inline()) {
    // A free permit and trivial code: no fiber, no hand-off (the permit is back before return).
    serve(route, *job, std::move(admit.permit), duration::zero(), request_context{info.deadline},
          info.arrival, true);
    return;
  }
  try {
    job->detach();
  } catch (...) {
    if (reserved) limiter.cancel_reservation();
    admit.permit.reset();
    return answer_now(outcome::rejected);
  }

  request_job* raw = job.get();
  // Allocation failure here ends the process (noexcept): there is no sane answer to give.
  unique_task task([&route, info, budget, reserved, j = std::move(job),
                    p = std::move(admit.permit)]() mutable {
    const request_context ctx{info.deadline};
    if (!reserved) {
      serve(route, *j, std::move(p), duration::zero(), ctx, clock::now(), false);
      return;
    }
    auto got =
        route.group->limiter().acquire(info.level, info.arrival + budget, true, route.policy.cost);
    const auto waited = clock::now() - info.arrival;
    if (got.result != outcome::admitted) {
      // A wait cut short by the client's deadline is reported as such.
      const bool by_deadline = got.result == outcome::timed_out && budget < route.policy.max_wait;
      const outcome why = by_deadline ? outcome::deadline : got.result;
      route.metrics->on_outcome(why, waited);
      j->reject(why);
      if (got.result == outcome::timed_out) {
        route.metrics->on_late_fallback(clock::now() - (info.arrival + budget));
      }
      return;
    }
    serve(route, *j, std::move(got.permit), waited, ctx, clock::now(), false);
  });
  if (!exec_.try_post(task)) {
    // The task still owns the job and any permit; cancel the reservation, answer from here,
    // and let `task` return the permit as it goes.
    if (reserved) limiter.cancel_reservation();
    route.metrics->on_outcome(outcome::rejected, duration::zero());
    raw->reject(outcome::rejected);
  }
}

void admission::shutdown() noexcept {
  for (auto& [name, g] : groups_) g->limiter().shutdown();
}

}  // namespace qos

// The life of one guarded request, top to bottom: submit (decide on the calling thread),
// wait_and_run (wait on a fiber), post_to_pool (a job's run handed whole to a pool thread),
// run (the permit held), execute (the handler, where it runs, max_exec). Exactly one answer
// per request on every path; permits and queue places are RAII.
#include "qos/admission/admission.hpp"

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <tuple>
#include <utility>

#include <boost/fiber/future.hpp>

#include "qos/admission/request_context.hpp"

namespace qos {

namespace {

std::size_t pool_size(const group_options& o) {
  // The pool must be able to run as many handlers as the group may ever admit at once.
  return o.blocking_threads != 0 ? o.blocking_threads : o.most_permits();
}

limiter_options initial_limiter(const group_options& o) {
  limiter_options l = o.limiter;
  if (o.limit) l.max_concurrent = o.limit->initial;  // the limiter starts where the limit does
  return l;
}

}  // namespace

limit_group::limit_group(const group_options& options)
    : name_(options.name),
      shadow_(options.shadow),
      limiter_(initial_limiter(options), options.limit),
      pool_(pool_size(options)) {}

void limit_group::reconfigure(const group_options& options) {
  assert(options.name == name_);
  // Threads first: a raised limit grants waiters at once, and blocking ones must find a
  // thread to run on rather than queue in the pool.
  pool_.set_max_threads(pool_size(options));
  limiter_.reconfigure(initial_limiter(options), options.limit);
  shadow_.store(options.shadow, std::memory_order_relaxed);
}

admission::route::route(std::shared_ptr<const route_policy> policy, limit_group* group,
                        route_metrics* metrics)
    : group(group), metrics(metrics), name_(policy->name), policy_(std::move(policy)) {}

void admission::set_policy(const route& r, std::shared_ptr<const route_policy> policy) noexcept {
  assert(policy && policy->name == r.name_);
  r.policy_.store(std::move(policy), std::memory_order_release);
}

admission::admission(const std::vector<group_options>& groups,
                     const std::vector<route_policy>& routes, executor& exec, metrics_sink& metrics)
    : exec_(exec) {
  for (const auto& g : groups) {
    validate(g);
    if (!groups_.emplace(g.name, std::make_unique<limit_group>(g)).second) {
      throw std::invalid_argument("duplicate group '" + g.name + "'");
    }
  }
  for (const auto& r : routes) {
    auto* group = find_group(r.group);
    if (group == nullptr) {
      throw std::invalid_argument("route '" + r.name + "' names unknown group '" + r.group + "'");
    }
    const auto g = std::find_if(groups.begin(), groups.end(),
                                [&](const group_options& o) { return o.name == r.group; });
    validate(r, *g);
    if (routes_.contains(r.name)) throw std::invalid_argument("duplicate route '" + r.name + "'");
    auto& m = metrics.route(r.name, r.group);
    routes_.emplace(std::piecewise_construct, std::forward_as_tuple(r.name),
                    std::forward_as_tuple(std::make_shared<const route_policy>(r), group, &m));
  }
}

admission::~admission() {
  // A job's run on a pool thread uses its route and metrics: it must end before they go.
  for (auto& [name, g] : groups_) g->pool().stop();
}

const admission::route* admission::find_route(const std::string& name) const {
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

void admission::close() noexcept {
  for (auto& [name, g] : groups_) g->limiter().close();
}

void admission::shutdown() noexcept {
  for (auto& [name, g] : groups_) g->limiter().shutdown();
}

std::size_t admission::waiting() noexcept {
  std::size_t n = 0;
  for (auto& [name, g] : groups_) {
    const auto s = g->stats();
    n += s.waiting + s.reserved;
  }
  return n;
}

namespace {

// The last step of every request: the metrics and the edge learn how it ended.
void report(const admission::route& r, transport& t, const request_report& what) noexcept {
  r.metrics->on_done(what);
  t.done(what);
}

// Answers without running the handler, and reports it. The counters move before the answer
// leaves, so a client that saw its fallback finds it counted.
void answer_now(const admission::route& r, transport& t, outcome why, priority level,
                duration waited) noexcept {
  const request_report what{.result = why, .level = level, .waited = waited};
  r.metrics->on_done(what);
  t.fallback(why);
  t.done(what);
}

// How long a request may wait: max_wait, or less when the client's deadline minus the
// expected service time comes first (zero or less: it cannot finish in time).
duration wait_budget(const admission::route& r, const route_policy& p, const request_info& info) {
  duration budget = p.max_wait;
  if (info.deadline) {
    budget = std::min(budget, *info.deadline - info.arrival - r.group->stats().service_time);
  }
  return budget;
}

// Where run() is called: on the submitting thread (a reactor handler with a free permit), on
// the request's fiber, or on a thread of the group's blocking pool (a blocking handler whose
// answer nobody awaits).
enum class site : std::uint8_t { caller, fiber, pool };

// On a pool thread: the handler runs here, and max_exec is judged when it returns. Nobody
// awaits the answer before done(), so an overrun's result (or failure) is dropped for the
// fallback, as a timer at max_exec would have done, and without one.
outcome execute_here(const route_policy& p, transport& t) noexcept {
  const time_point began = clock::now();
  std::optional<response> result;
  std::exception_ptr error;
  try {
    result = t.handle();
  } catch (...) {
    error = std::current_exception();
  }
  if (p.max_exec && clock::now() - began > *p.max_exec) {
    t.fallback(outcome::exec_timeout);
    return outcome::exec_timeout;
  }
  if (error) {
    t.fail(std::move(error));
    return outcome::error;
  }
  if (result) t.answer(std::move(*result));
  return outcome::admitted;
}

// Runs the handler where `kind` says, within max_exec, and answers through `t`. Returns
// admitted, error (the handler failed; `t` answered 500) or exec_timeout (`t` answered the
// fallback at max_exec, and the handler was waited for: its group slot is not free before).
outcome execute(const admission::route& r, const route_policy& p, transport& t, handler_kind kind,
                const request_context* ctx, site where) noexcept {
  if (where == site::pool) return execute_here(p, t);
  try {
    // Another thread or fiber carries the request's context with it.
    auto call = [&t, ctx] {
      request_scope scope(ctx);
      return t.handle();
    };
    if (p.max_exec) {
      boost::fibers::future<std::optional<response>> running =
          kind == handler_kind::blocking ? r.group->pool().post(call)
                                         : boost::fibers::async(boost::fibers::launch::post, call);
      if (running.wait_for(*p.max_exec) == boost::fibers::future_status::timeout) {
        t.fallback(outcome::exec_timeout);
        running.wait();  // abandoned work still occupies the group until it really ends
        try {
          (void)running.get();  // its result, or failure, comes too late for anyone
        } catch (...) {
        }
        return outcome::exec_timeout;
      }
      if (auto result = running.get()) t.answer(std::move(*result));
      return outcome::admitted;
    }
    std::optional<response> result =
        kind == handler_kind::blocking ? r.group->pool().run(call) : t.handle();
    if (result) t.answer(std::move(*result));
    return outcome::admitted;
  } catch (...) {
    t.fail(std::current_exception());
    return outcome::error;
  }
}

// The request holds `p` (empty in shadow mode): run it and report. The permit is returned
// after the handler ended, whether it returned, threw or overran max_exec. `start` is now, or
// the arrival of a request served inline at once (one clock read fewer on the cheapest path).
void run(const admission::route& r, const route_policy& policy, transport& t, handler_kind kind,
         permit p, priority level, duration waited, const request_context& ctx, time_point start,
         site where) noexcept {
  if (!t.connected()) {
    p.reset();  // hand the permit on before anything else: nobody will use it here
    answer_now(r, t, outcome::client_gone, level, waited);
    return;
  }
  outcome o;
  if (where == site::fiber) {
    request_scope scope(&ctx);
    o = execute(r, policy, t, kind, &ctx, where);
  } else {
    // Runs to its end on this thread: nothing else runs here meanwhile.
    inline_request_scope scope(&ctx);
    o = execute(r, policy, t, kind, &ctx, where);
  }
  const auto took = clock::now() - start;
  // Only requests that really ran are latency samples; an overrun says the backend is slow.
  if (p) r.group->limiter().on_served(took, o == outcome::exec_timeout);
  p.reset();
  report(r, t, {.result = o, .level = level, .waited = waited, .handled = took, .ran = true});
}

// Whether a request holding a permit runs from here to its end on a pool thread.
bool to_pool(handler_kind kind, const transport& t) noexcept {
  return kind == handler_kind::blocking && !t.answer_awaited();
}

// A request holding a permit, on its way to a pool thread.
struct pool_run {
  const admission::route* r = nullptr;
  std::shared_ptr<const route_policy> policy;
  std::unique_ptr<transport> t;
  permit p;
  priority level = 0;
  duration waited{};
  std::optional<time_point> deadline;
  time_point start{};  // the permit is held from here: the hop to the pool is inside it
};

// Hands the request holding `p` to a thread of its group's pool, which runs it to its report:
// no fiber waits for the handler, so neither the hop back to one nor a fiber wake-up is
// inside the permit, and the thread that ends one job (and, with run slots, submits the next)
// finds that job in the pool's queue without sleeping. False when the pool refused (it is
// stopping): `t` and `p` are then the caller's again, as they were.
bool post_to_pool(const admission::route& r, const std::shared_ptr<const route_policy>& policy,
                  std::unique_ptr<transport>& t, permit& p, priority level, duration waited,
                  std::optional<time_point> deadline) noexcept {
  // Allocation failure here ends the process (noexcept), as in submit().
  auto run_state = std::make_unique<pool_run>(pool_run{.r = &r,
                                                       .policy = policy,
                                                       .t = std::move(t),
                                                       .p = std::move(p),
                                                       .level = level,
                                                       .waited = waited,
                                                       .deadline = deadline,
                                                       .start = clock::now()});
  pool_run* const raw = run_state.get();
  unique_task task([s = std::move(run_state)] {
    const request_context ctx{s->deadline};
    run(*s->r, *s->policy, *s->t, handler_kind::blocking, std::move(s->p), s->level, s->waited, ctx,
        s->start, site::pool);
  });
  if (r.group->pool().try_submit(task)) return true;
  // The task was left as it was: take the request back out of it.
  t = std::move(raw->t);
  p = std::move(raw->p);
  return false;
}

// A job waiting on a fiber for its permit: the thread that grants the permit hands the job to
// the pool itself. That thread is usually a pool thread whose job just gave its permit back;
// it picks the next job from the pool's queue once it has reported its own, so no fiber and no
// other thread has to wake inside the permit.
class pool_on_grant final : public fiber_limiter::grant_hook {
 public:
  pool_on_grant(const admission::route& r, const std::shared_ptr<const route_policy>& policy,
                const request_info& info, std::unique_ptr<transport>& t) noexcept
      : r_(r), policy_(policy), info_(info), t_(t) {}
  void on_grant(permit& granted) noexcept override {
    // Refused (the pool is stopping): the request and the permit stay the fiber's.
    (void)post_to_pool(r_, policy_, t_, granted, info_.level, clock::now() - info_.arrival,
                       info_.deadline);
  }

 private:
  const admission::route& r_;
  const std::shared_ptr<const route_policy>& policy_;
  const request_info& info_;
  std::unique_ptr<transport>& t_;
};

// On a fiber: waits for a permit with the place `place` holds (none: it already has one, or
// in shadow mode the place only stands for the queue it would have joined), then runs.
void wait_and_run(const admission::route& r, const std::shared_ptr<const route_policy>& policy_ptr,
                  const request_info& info, duration budget, handler_kind kind,
                  std::unique_ptr<transport>& t_ptr, permit p, ticket place, bool wait) noexcept {
  const route_policy& policy = *policy_ptr;
  transport& t = *t_ptr;
  const request_context ctx{info.deadline};
  const bool job = to_pool(kind, t);
  duration waited = duration::zero();
  if (wait) {
    const time_point until = info.arrival + budget;
    pool_on_grant hand_over(r, policy_ptr, info, t_ptr);
    auto got = r.group->limiter().acquire(std::move(place), info.level, until, policy.cost,
                                          job ? &hand_over : nullptr);
    if (got.taken) return;  // on its pool thread already
    waited = clock::now() - info.arrival;
    if (got.result != outcome::admitted) {
      // A wait cut short by the client's deadline is reported as such.
      const bool by_deadline = got.result == outcome::timeout && budget < policy.max_wait;
      answer_now(r, t, by_deadline ? outcome::deadline : got.result, info.level, waited);
      if (got.result == outcome::timeout) r.metrics->on_late_fallback(clock::now() - until);
      return;
    }
    p = std::move(got.permit);
    // Granted at once, or the pool refused the hook: from here it needs no fiber. (A shadow run
    // never waits: it keeps its fiber, which holds its queue place to the end.)
    if (job && post_to_pool(r, policy_ptr, t_ptr, p, info.level, waited, info.deadline)) {
      return;
    }
  }
  run(r, policy, t, kind, std::move(p), info.level, waited, ctx, clock::now(), site::fiber);
}

}  // namespace

void admission::submit(const route& r, const request_info& info, handler_kind kind,
                       std::unique_ptr<transport> t) noexcept {
  submit(r, r.policy(), info, kind, std::move(t));
}

void admission::submit(const route& r, std::shared_ptr<const route_policy> policy,
                       const request_info& info, handler_kind kind,
                       std::unique_ptr<transport> t) noexcept {
  // 1. Decide, on the calling thread, without blocking, under the one policy snapshot the
  // request keeps to its end.
  const route_policy& p = *policy;
  r.metrics->on_arrival(info.level);
  const duration budget = wait_budget(r, p, info);
  if (budget <= duration::zero()) return answer_now(r, *t, outcome::deadline, info.level, {});

  auto admit = r.group->limiter().try_admit(p.cost, info.level);
  using kind_t = fiber_limiter::admit_kind;
  bool wait = admit.kind == kind_t::queued;
  if (admit.kind == kind_t::shutdown) return answer_now(r, *t, outcome::shutdown, info.level, {});
  if (r.group->shadow() && admit.kind != kind_t::granted) {
    // Shadow mode: count what a real gate would do, then let the request through unlimited.
    // A request that would have queued keeps its queue place while it runs, so a lasting
    // excess fills the queue it would have had and later ones count as shed.
    r.metrics->on_shadow(wait ? outcome::timeout : outcome::queue_full);
    wait = false;
  } else if (admit.kind == kind_t::queue_full) {
    return answer_now(r, *t, outcome::queue_full, info.level, {});
  } else if (wait && p.predictive_reject && r.group->limiter().estimate_wait(info.level) > budget) {
    // The ticket gives its place back as it goes.
    return answer_now(r, *t, outcome::predicted_timeout, info.level, {});
  }

  // 2. A free permit and trivial code: run it here, no fiber, no hand-off.
  if (admit.permit && kind == handler_kind::reactor && !p.max_exec) {
    run(r, p, *t, kind, std::move(admit.permit), info.level, duration::zero(),
        request_context{info.deadline}, info.arrival, site::caller);
    return;
  }

  // Whatever comes next, the request leaves the submitting thread.
  try {
    t->detach();
  } catch (...) {
    return answer_now(r, *t, outcome::rejected, info.level, {});
  }

  // 3. A free permit and a blocking handler whose answer nobody awaits (a job): straight to
  // the pool, no fiber.
  if (admit.kind == kind_t::granted && to_pool(kind, *t) &&
      post_to_pool(r, policy, t, admit.permit, info.level, duration::zero(), info.deadline)) {
    return;
  }

  // 4. Anything else waits and runs on a fiber.
  transport* raw = t.get();
  // Allocation failure here ends the process (noexcept): there is no sane answer to give.
  unique_task task([&r, policy = std::move(policy), info, budget, kind, wait, t = std::move(t),
                    held = std::move(admit.permit), place = std::move(admit.ticket)]() mutable {
    wait_and_run(r, policy, info, budget, kind, t, std::move(held), std::move(place), wait);
  });
  if (!exec_.try_post(task)) {
    // Refused: the task still owns the request, its permit and its place; answer from here,
    // and let the task give them back as it goes.
    answer_now(r, *raw, outcome::rejected, info.level, {});
  }
}

}  // namespace qos

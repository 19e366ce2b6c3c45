// Admission: the route table, its limit groups, and the whole life of one guarded request, with
// no HTTP in it. submit() decides on the calling thread (answer now, run now, or wait), waits on
// a fiber of the executor, runs the handler (on that fiber, on the group's blocking pool, or
// inline for handler_kind::reactor), applies max_exec, returns the permit and reports the
// outcome. An edge takes part only through its transport. Every request gets exactly one
// answer. Thread-safe after construction.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qos/admission/options.hpp"
#include "qos/admission/transport.hpp"
#include "qos/core/clock.hpp"
#include "qos/core/group_controller.hpp"
#include "qos/core/metrics.hpp"
#include "qos/core/priority.hpp"
#include "qos/fiber/blocking_pool.hpp"
#include "qos/fiber/executor.hpp"
#include "qos/fiber/fiber_limiter.hpp"

namespace qos {

// One limit group: its limiter and the blocking pool its blocking handlers run on. Pinned:
// routes point at it for the admission's life, across reloads.
class limit_group {
 public:
  explicit limit_group(const group_options& options);
  const std::string& name() const noexcept { return name_; }
  bool shadow() const noexcept { return shadow_.load(std::memory_order_relaxed); }
  fiber_limiter& limiter() noexcept { return limiter_; }
  blocking_pool& pool() noexcept { return pool_; }
  group_stats stats() const noexcept { return limiter_.stats(); }

  // Applies `options` (validated; same name) while requests wait and run: the pool may start
  // as many threads as the new limit can admit, then the limiter changes under its lock
  // (fiber_limiter::reconfigure: nobody parked is dropped, no permit revoked), then shadow.
  // Throws std::bad_alloc (the pool's size may have grown already: harmless).
  void reconfigure(const group_options& options);

 private:
  const std::string name_;
  // Read once per request without a lock; a request that raced a reload sees either value.
  std::atomic<bool> shadow_;
  fiber_limiter limiter_;
  blocking_pool pool_;
};

// What the edge learnt about one request before admission.
struct request_info {
  priority level = 0;
  time_point arrival{};                  // when the request reached the gate
  std::optional<time_point> deadline{};  // the client's own deadline, if it sent one
};

class admission {
 public:
  // A route as admission runs it. Pinned (find_route's pointer stays valid for the
  // admission's life). Its group and metrics never change; its policy is an immutable
  // snapshot that a reload replaces whole (set_policy). A request reads the policy once, on
  // arrival, and keeps that snapshot to its end: it sees the old policy or the new one, never
  // a mix.
  class route {
   public:
    route(std::shared_ptr<const route_policy> policy, limit_group* group, route_metrics* metrics);
    route(const route&) = delete;
    route& operator=(const route&) = delete;

    // The policy in force now: one atomic load (and a reference count), no lock of our own.
    std::shared_ptr<const route_policy> policy() const noexcept {
      return policy_.load(std::memory_order_acquire);
    }
    const std::string& name() const noexcept { return name_; }

    limit_group* const group;
    route_metrics* const metrics;

   private:
    friend class admission;
    const std::string name_;
    // The one mutable part of a route: written by set_policy, read by every request.
    mutable std::atomic<std::shared_ptr<const route_policy>> policy_;
  };

  // Validates every group and route (invalid_option) and throws std::invalid_argument for an
  // unknown group or a duplicate name.
  admission(const std::vector<group_options>& groups, const std::vector<route_policy>& routes,
            executor& exec, metrics_sink& metrics = null_metrics());
  admission(const admission&) = delete;
  admission& operator=(const admission&) = delete;
  // Stops the groups' pools first (their queued work runs): a job running on one uses its
  // route. Requests on fibers are the executor's to wait for.
  ~admission();

  const route* find_route(const std::string& name) const;
  limit_group* find_group(const std::string& name);
  std::vector<limit_group*> groups();

  // Never blocks. Answers at once (on the calling thread) when the queue is full, the client's
  // deadline cannot be met, the predicted wait exceeds the budget, or the executor refuses the
  // request; runs a reactor handler at once on the calling thread when a permit is free;
  // otherwise the request is detached and moves to a fiber that waits at most the wait budget:
  // max_wait, or less when the client's deadline minus the expected service time comes first.
  // A blocking handler whose answer nobody awaits (transport::answer_awaited() false: a job)
  // runs with its permit from start to report on a pool thread, with no fiber once it holds
  // one; if it had to wait, the thread that grants its permit hands it to the pool.
  void submit(const route& r, const request_info& info, handler_kind kind,
              std::unique_ptr<transport> t) noexcept;
  // The same under `policy`, a snapshot of r's policy the caller took on arrival (the HTTP
  // gate takes one with its own settings of the route, so that both come from one reload).
  // Kept alive until the request ends.
  void submit(const route& r, std::shared_ptr<const route_policy> policy, const request_info& info,
              handler_kind kind, std::unique_ptr<transport> t) noexcept;

  // Publishes `policy` (validated against r's group; same name and group) for requests that
  // arrive from now on; requests already in flight finish under the snapshot they took.
  static void set_policy(const route& r, std::shared_ptr<const route_policy> policy) noexcept;

  // Refuses new requests (`shutdown`); parked ones wait on for their permit or max_wait.
  void close() noexcept;
  // Wakes every waiter with `shutdown` and refuses new requests. Running handlers go on.
  void shutdown() noexcept;
  // Requests parked in every group now.
  std::size_t waiting() noexcept;

 private:
  executor& exec_;
  std::map<std::string, std::unique_ptr<limit_group>, std::less<>> groups_;
  std::map<std::string, route, std::less<>> routes_;
};

}  // namespace qos

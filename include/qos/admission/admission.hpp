// Admission: the route table, its limit groups and the path of one guarded request, with no
// HTTP in it. submit() is called on a reactor thread and never blocks; waiting happens on a
// fiber of the executor. Exactly one of a job's run/reject is called, exactly once.
// Thread-safe after construction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qos/fiber/blocking_pool.hpp"
#include "qos/core/clock.hpp"
#include "qos/fiber/executor.hpp"
#include "qos/fiber/fiber_limiter.hpp"
#include "qos/core/limit_algorithm.hpp"
#include "qos/core/limiter.hpp"
#include "qos/core/metrics.hpp"
#include "qos/core/outcome.hpp"
#include "qos/core/priority.hpp"
#include "qos/admission/request_context.hpp"

namespace qos {

struct group_options {
  std::string name;
  limiter_options limiter;             // initial limit, queue cap, discipline, aging
  std::optional<limit_options> limit;  // adaptive limit; absent: fixed
  std::size_t blocking_threads = 0;    // 0: the most permits the group may ever hand out
  bool shadow = false;                 // count decisions, let everything through
};

struct route_policy {
  std::string name;
  std::string group;
  duration max_wait = std::chrono::seconds(1);
  std::uint32_t cost = 1;            // permit units per request
  bool predictive_reject = false;    // answer at once when the estimated wait exceeds the budget
  std::optional<duration> max_exec;  // execution timeout (enforced by the job)
};

// One limit group: its limiter and the blocking pool its blocking handlers run on.
class limit_group {
 public:
  explicit limit_group(const group_options& options);
  const std::string& name() const noexcept { return name_; }
  bool shadow() const noexcept { return shadow_; }
  fiber_limiter& limiter() noexcept { return limiter_; }
  blocking_pool& pool() noexcept { return pool_; }
  limiter_stats stats() const { return limiter_.stats(); }

 private:
  std::string name_;
  bool shadow_;
  fiber_limiter limiter_;
  blocking_pool pool_;
};

// One guarded request, as the admission layer sees it.
class request_job {
 public:
  virtual ~request_job() = default;
  // Asked once the request holds a permit, before its handler would start.
  virtual bool client_connected() noexcept = 0;
  // Runs the handler and answers; the permit is held until it returns. Returns admitted,
  // error (the handler failed; the job answered 500) or exec_timeout (the job answered the
  // fallback at max_exec and waited for the handler to end before returning).
  virtual outcome run(limit_group& group, const route_policy& policy) noexcept = 0;
  // Answers without running the handler (fallback response).
  virtual void reject(outcome why) noexcept = 0;
  // True when the handler is trivial code that never blocks or suspends: given a free permit
  // on arrival, submit() runs it on the calling thread, with no hand-off to a fiber.
  virtual bool runs_inline() const noexcept { return false; }
  // Called before the job leaves the calling thread (to wait, or to run on a fiber): the job
  // must stop borrowing from the caller's frame. May throw (allocation); the job is then
  // answered `rejected` from the calling thread.
  virtual void detach() {}
};

// What the edge learnt about one request before admission.
struct request_info {
  priority level = 0;
  time_point arrival{};                // when the request reached the gate
  std::optional<time_point> deadline;  // the client's own deadline, if it sent one
};

class admission {
 public:
  struct route_entry {
    route_policy policy;
    limit_group* group;
    route_metrics* metrics;
  };

  // Throws std::invalid_argument for an unknown group or a duplicate name (config validation
  // normally catches those first).
  admission(const std::vector<group_options>& groups, const std::vector<route_policy>& routes,
            executor& exec, metrics_sink& metrics = null_metrics());
  admission(const admission&) = delete;
  admission& operator=(const admission&) = delete;

  const route_entry* find_route(const std::string& name) const;
  limit_group* find_group(const std::string& name);
  std::vector<limit_group*> groups();

  // Never blocks. Answers at once (on the calling thread) when the queue is full, the client's
  // deadline cannot be met, the predicted wait exceeds the budget, or the executor refuses the
  // job; runs an inline job (runs_inline()) at once on the calling thread when a permit is
  // free; otherwise the job is detached and moves to a fiber that waits at most the wait
  // budget: max_wait, or less when the client's deadline minus the expected service time
  // comes first.
  void submit(const route_entry& route, const request_info& info,
              std::unique_ptr<request_job> job) noexcept;
  // Shorthand: level only, arriving now, no client deadline.
  void submit(const route_entry& route, priority level, std::unique_ptr<request_job> job) noexcept {
    submit(route, request_info{level, clock::now(), std::nullopt}, std::move(job));
  }

  // Wakes every waiter with shutting_down and refuses new requests. Running handlers go on.
  void shutdown() noexcept;

 private:
  executor& exec_;
  std::map<std::string, std::unique_ptr<limit_group>, std::less<>> groups_;
  std::map<std::string, route_entry, std::less<>> routes_;
};

}  // namespace qos

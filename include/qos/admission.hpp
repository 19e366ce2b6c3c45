// Admission: the route table, its limit groups and the path of one guarded request, with no
// HTTP in it. submit() is called on a reactor thread and never blocks; waiting happens on a
// fiber of the executor. Exactly one of a job's run/reject is called, exactly once.
// Thread-safe after construction.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qos/blocking_pool.hpp"
#include "qos/clock.hpp"
#include "qos/executor.hpp"
#include "qos/fiber_limiter.hpp"
#include "qos/metrics.hpp"
#include "qos/outcome.hpp"
#include "qos/priority.hpp"

namespace qos {

struct group_options {
  std::string name;
  std::size_t max_concurrent = 1;
  std::size_t max_queue = 1000;
  std::size_t blocking_threads = 0;  // 0: max_concurrent
};

struct route_policy {
  std::string name;
  std::string group;
  duration max_wait = std::chrono::seconds(1);
};

// One limit group: its limiter and the blocking pool its blocking handlers run on.
class limit_group {
 public:
  explicit limit_group(const group_options& options);
  const std::string& name() const noexcept { return name_; }
  fiber_limiter& limiter() noexcept { return limiter_; }
  blocking_pool& pool() noexcept { return pool_; }
  limiter_stats stats() const { return limiter_.stats(); }

 private:
  std::string name_;
  fiber_limiter limiter_;
  blocking_pool pool_;
};

// One guarded request, as the admission layer sees it.
class request_job {
 public:
  virtual ~request_job() = default;
  // Asked once the request holds a permit, before its handler would start.
  virtual bool client_connected() noexcept = 0;
  // Runs the handler and answers; the permit is held until it returns. Returns admitted, or
  // error when the handler failed (the job has then answered 500).
  virtual outcome run(limit_group& group) noexcept = 0;
  // Answers without running the handler (fallback response).
  virtual void reject(outcome why) noexcept = 0;
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

  // Never blocks. Sheds on a full queue or a refused post right here; otherwise the job moves
  // to a fiber that waits at most the route's max_wait.
  void submit(const route_entry& route, priority level, std::unique_ptr<request_job> job) noexcept;

  // Wakes every waiter with shutting_down and refuses new requests. Running handlers go on.
  void shutdown() noexcept;

 private:
  executor& exec_;
  std::map<std::string, std::unique_ptr<limit_group>, std::less<>> groups_;
  std::map<std::string, route_entry, std::less<>> routes_;
};

}  // namespace qos

// The HTTP side of the durable job queue (accept-mode routes, issue 13): the store threads that
// make every store call a request needs, the store built from `jobs:`, the status routes
// (GET /jobs/{id}, GET /jobs/{id}/result), the operator actions on dead jobs, and the jobs
// metrics. qos::runtime owns one when its config has `jobs:` (or was handed a store); the gate's
// accept() and the admin listener reach it through the runtime.
//
// The contract:
// - Store calls block (SQLite's group commit and fsync, PostgreSQL round trips), so none runs on
//   a reactor or a fiber: a request's call goes to one of `store_threads` threads, and at most
//   `max_pending` calls wait for one; beyond that, and once closed, the request is answered
//   503 + Retry-After at once, on the reactor, with nothing stored.
// - Every request handed to the store threads is answered exactly once, from the store thread,
//   after its call returned, also when its client went away meanwhile (the write then goes
//   nowhere) and at close(): close() refuses new calls and runs those already queued.
// - A store call that throws (store_error: the database failed) is answered 503 + Retry-After.
//
// Thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pistache/http.h>
#include <pistache/router.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>

#include "qos/admission/transport.hpp"
#include "qos/config/config.hpp"
#include "qos/jobs/job_store.hpp"
#include "qos/ops/metrics_registry.hpp"

namespace qos {

// The store `cfg` names: a sqlite_store (path as given: the loader resolves it against the
// config file's folder), or a pg_store when qos was built with libpq (qos_jobs_pg). Throws
// std::invalid_argument for `store: postgres` without it, or without a conninfo; the store's
// own error (store_error, pg_store_error) when it cannot be opened.
std::unique_ptr<jobs::job_store> make_job_store(const config::jobs_config& cfg);

// Whether this build has the PostgreSQL store.
bool have_pg_store() noexcept;

// A fixed set of threads running queued tasks in order, with a bounded queue.
class store_threads {
 public:
  store_threads(std::size_t threads, std::size_t max_pending);
  ~store_threads();  // close()
  store_threads(const store_threads&) = delete;
  store_threads& operator=(const store_threads&) = delete;

  // False (and `task` not run) when max_pending tasks wait already, or after close().
  bool post(std::function<void()> task);
  // Refuses new tasks, runs every queued one, joins the threads. Idempotent.
  void close();
  std::size_t pending() const;

 private:
  void main();

  const std::size_t max_pending_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // guarded by mutex_
  bool closed_ = false;                      // guarded by mutex_
  std::vector<std::thread> threads_;
  std::once_flag joined_;
};

// What /qos/status shows of the jobs.
struct jobs_snapshot {
  struct route {
    std::string name, group;
    std::size_t depth = 0;  // queued + running, as last sampled
  };
  struct group {
    std::string name;
    std::uint64_t claimed = 0, succeeded = 0, failed = 0, given_back = 0, fenced_out = 0,
                  requeued = 0, abandoned = 0;
    std::size_t held = 0;
    std::size_t run_slots = 0;  // held by its consumer (PostgreSQL store)
  };
  std::vector<route> routes;
  std::vector<group> groups;  // one per consumer running here
};

class job_front {
 public:
  // The counters of one accept route's enqueues, by result (enqueue_result::kind order).
  struct route_counters {
    std::array<prometheus::Counter*, 5> by_result{};
    void count(jobs::enqueue_result::kind k) noexcept {
      by_result[static_cast<std::size_t>(k)]->Increment();
    }
  };

  // `status_retry_after`: the Retry-After (seconds) of GET /jobs/{id} while a job is pending.
  job_front(std::shared_ptr<jobs::job_store> store, const config::jobs_config& cfg,
            metrics_registry& metrics, int status_retry_after);
  ~job_front();
  job_front(const job_front&) = delete;
  job_front& operator=(const job_front&) = delete;

  jobs::job_store& store() noexcept { return *store_; }
  const std::shared_ptr<jobs::job_store>& shared_store() const noexcept { return store_; }

  // Runs `work` on a store thread and sends what it returns through `writer` (see the
  // contract). When the queue is full or closed, answers 503 + Retry-After now, on the calling
  // thread, and returns false. `refused`, if given, runs first in that case (to count it).
  bool serve(Pistache::Http::ResponseWriter writer, std::function<response(jobs::job_store&)> work,
             const std::function<void()>& refused = {});

  // Whether enqueues are still taken (false from close_accepting() on: 503).
  bool accepting() const noexcept { return accepting_.load(std::memory_order_acquire); }
  // Enqueues from now on get 503; status reads go on.
  void close_accepting() noexcept { accepting_.store(false, std::memory_order_release); }
  // Refuses every new store call and answers those queued (store_threads::close()).
  void close();

  // The enqueue counters of `route` (created on first use; pinned).
  route_counters& counters(const std::string& route);
  // Called with the job's group after each enqueue that created a job (the runtime wakes that
  // group's consumer, so a job here does not wait for the next poll). Thread-safe.
  void on_created(std::function<void(const std::string& group)> hook);
  void created(const std::string& group) const noexcept;
  // Logs a store failure under an enqueue, at most once a second (with how many were not).
  void log_unavailable(const std::string& route, const std::string& why);

  // GET /jobs/:id and GET /jobs/:id/result.
  Pistache::Rest::Route::Handler status_handler();
  Pistache::Rest::Route::Handler result_handler();
  // Admin: POST /qos/jobs/:id/requeue (dead → queued; 404 unknown, 409 not dead) and
  // DELETE /qos/jobs/:id (purges a dead job; 404 unknown, 409 not dead).
  Pistache::Rest::Route::Handler requeue_handler();
  Pistache::Rest::Route::Handler purge_handler();

  // Sampled by the runtime's maintenance thread.
  void set_depth(const std::string& route, const std::string& group, std::size_t depth);
  // Consumer counters of `group` now: the finished counters move by what changed since the
  // last call, the held gauge is set.
  void set_group(const jobs_snapshot::group& now);
  jobs_snapshot snapshot() const;

  // The status document of a job (also for tests).
  static std::string status_json(const jobs::job_status& s);

 private:
  Pistache::Rest::Route::Handler by_id(
      std::function<response(jobs::job_store&, const std::string& id)> work);

  std::shared_ptr<jobs::job_store> store_;
  int status_retry_after_;
  std::atomic<bool> accepting_{true};
  store_threads threads_;

  prometheus::Family<prometheus::Counter>& enqueued_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Gauge>& held_;
  prometheus::Family<prometheus::Gauge>& run_slots_;
  prometheus::Family<prometheus::Gauge>& depth_;

  mutable std::mutex mutex_;  // guards what follows
  std::map<std::string, std::unique_ptr<route_counters>, std::less<>> counters_;
  std::map<std::string, jobs_snapshot::route, std::less<>> depths_;
  std::map<std::string, jobs_snapshot::group, std::less<>> groups_;

  std::atomic<std::shared_ptr<const std::function<void(const std::string&)>>> on_created_;
  std::mutex log_mutex_;
  std::chrono::steady_clock::time_point last_log_{};
  std::uint64_t unlogged_ = 0;
};

}  // namespace qos

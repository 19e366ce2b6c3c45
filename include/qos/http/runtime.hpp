// Everything the gate needs except a listener, for a service that already has its own
// Pistache Endpoint and Router: the fiber executor, admission (the limit groups), the gate,
// the metrics and the shedding monitor, built from a config (loaded from YAML or built in code;
// both go through the same validation). It owns no endpoint, installs no signal handler and
// leaves the process's loggers alone (the access log, when the config enables it, writes
// through a logger of its own). Setup (gate().guard..., prime) before the endpoint
// serves; then thread-safe.
//
// Reload (reload(), reload_file()): applies a new config while serving, without dropping a
// request. The contract:
//  - All or nothing: a config that fails validation, or asks for a change a reload cannot
//    make (removing a route the code guards; max_exec for a handler guarded with guard()),
//    changes nothing; the result carries the loader's "file:line:col: key: message".
//  - Each request runs under one policy, the old or the new, never a mix: a route's settings
//    (max_wait, max_exec, cost, predictive_reject, priority and deadline rules, fallbacks)
//    are one immutable snapshot, replaced whole and read once when the request arrives.
//  - Group settings (limit, fixed or adaptive, max_queue, queue discipline, aging, reserve,
//    shadow, blocking_threads) change under the group's lock, between two decisions. Parked
//    requests stay parked, in order. A raised limit admits as many waiters as it adds
//    permits, at once; a lowered one revokes nothing: running handlers finish, and the new
//    limit holds once enough permits came back. A lowered max_queue sheds nobody already
//    queued; only newcomers meet it. A waiter whose cost exceeds a lowered limit waits until
//    its max_wait.
//  - Settings that need a restart (server.*, logging.*, a route's group; see
//    config/reload_plan.hpp) keep their running values and are listed in restart_needed.
//  - Reloads serialise; any thread may ask, while requests run. A reload waits for no
//    request: it takes each group's lock briefly, like one permit release.
//  - Each reload is logged once through qos::logger() (a line per change) and counted in
//    qos_config_reloads_total{result="ok"|"error"}; an applied one also sets
//    qos_config_last_reload_success_timestamp_seconds.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pistache/router.h>
#include <prometheus/registry.h>

#include "qos/admission/admission.hpp"
#include "qos/config/config.hpp"
#include "qos/fiber/executor.hpp"
#include "qos/http/gate.hpp"
#include "qos/http/job_front.hpp"
#include "qos/jobs/consumer.hpp"
#include "qos/ops/access_log.hpp"
#include "qos/ops/metrics_registry.hpp"

namespace qos {

// What a reload did.
struct reload_result {
  bool applied = false;
  std::string error{};  // when not applied: why, as "<file>:<line>:<column>: <key>: <message>"
  std::vector<std::string> changes{};         // one line per setting now in force, "group db: ..."
  std::vector<std::string> restart_needed{};  // changed in the file, left as they were
};

class runtime {
 public:
  // Throws qos::invalid_option (a std::invalid_argument naming the key) for a setting out of
  // range, and std::system_error when threads cannot start. With `registry`, qos registers its
  // metrics there, beside the application's own (metrics().render() serializes all of it).
  //
  // With `jobs:` in the config, the runtime also owns the job store of the accept routes
  // (make_job_store: SQLite, or PostgreSQL when built with libpq) and its store threads; it
  // throws std::invalid_argument for an accept route without `jobs:`, and the store's error
  // when it cannot be opened.
  explicit runtime(config::app_config cfg,
                   std::shared_ptr<prometheus::Registry> registry = nullptr);
  // The same with a job store built by the caller (shared with other code, or a store the
  // config cannot describe); `cfg.jobs` still gives the store threads and consumer settings
  // (defaults when absent).
  runtime(config::app_config cfg, std::shared_ptr<jobs::job_store> store,
          std::shared_ptr<prometheus::Registry> registry = nullptr);
  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;
  // drain(shutdown_grace) if not drained yet, then waits for handlers still running. Destroy
  // the runtime before the Endpoint: running handlers hold writers into Pistache.
  ~runtime();

  qos::gate& gate() noexcept { return *gate_; }
  // The access log of logging.access_log (its own logger "qos.access"), or nullptr when the
  // config leaves it off.
  qos::access_log* access_log() noexcept { return access_log_.get(); }
  qos::admission& admission() noexcept { return *admission_; }
  metrics_registry& metrics() noexcept { return metrics_; }
  // The config the runtime started with; what a restart-needed setting still reads.
  const config::app_config& config() const noexcept { return cfg_; }
  // The config in force now: the one started with, then each applied reload's (with the
  // restart-needed settings kept as they were).
  std::shared_ptr<const config::app_config> current_config() const noexcept {
    return current_.load(std::memory_order_acquire);
  }

  // Applies `next` (see the contract at the top of this file). Never throws for a bad config:
  // the result says why it was refused.
  reload_result reload(config::app_config next);
  // Loads `path` with config::load_config (so errors name the file's line, column and key),
  // then reload(). A file that cannot be read or parsed is an error like any other.
  reload_result reload_file(const std::string& path);

  // Registers a route for every HTTP method on `router` once, so that Pistache 0.0.5's Router
  // never inserts into its method map while reactors read it (a data race). Call it on your
  // router before the endpoint serves.
  static void prime(Pistache::Rest::Router& router) { gate::prime_router(router); }

  // A GET handler answering the Prometheus text exposition of these metrics.
  Pistache::Rest::Route::Handler metrics_handler();

  // Accept routes (gate().accept(...)). Call start_jobs() after the accept() calls, before the
  // endpoint serves (qos::server::start does): with jobs.consume it starts one consumer per
  // limit group that has accept routes given to accept() (jobs::consumer: claims within the
  // group's N, runs the jobs through admission, leases, retries), and a maintenance thread
  // that prunes terminal jobs every jobs.prune_interval (jobs.retention) and samples the
  // queue depths and consumer counters about once a second. A group's consumer takes lease,
  // max_attempts and backoff from its first accept route (config order); the others' are
  // used only if equal (a warning says otherwise). Idempotent; without a store: nothing.
  void start_jobs();
  // GET /jobs/:id and GET /jobs/:id/result (qos::server registers both when the config has
  // accept routes). /jobs/:id: queued or running: 200 JSON {id, state, attempts, run_at,
  // created, last_error?} + Retry-After (the smallest retry_after of the accept routes);
  // succeeded: 303 See Other to /jobs/:id/result, which answers the stored status, headers
  // and body (404 until then); dead: 200 JSON with state dead and last_error; an unknown,
  // pruned or malformed id: 404. Served through the store threads. Throws std::logic_error
  // without a job store.
  Pistache::Rest::Route::Handler job_status_handler();
  Pistache::Rest::Route::Handler job_result_handler();
  // The store and its HTTP side, or null without `jobs:`.
  jobs::job_store* job_store() noexcept { return store_.get(); }
  qos::job_front* jobs() noexcept { return jobs_.get(); }

  // Stops admitting: new requests get the shutdown fallback at once; parked ones get it now
  // (`parked` shed) or may still be served within `grace` and get it at its end (serve);
  // running handlers get up to `grace` to finish. When `*hurry` turns true (a second signal),
  // parked requests get their fallback at once and the wait for handlers ends. Returns false
  // when some still run (then neither the runtime nor the Endpoint may be destroyed). Call it
  // before Endpoint::shutdown(). Idempotent; later calls wait again, up to their own grace.
  //
  // With a job store, first: enqueues get 503 from now on, the store calls already queued are
  // answered, the consumers stop (stop(grace): jobs not started are given back, running ones
  // get the grace to end), then admission drains as above with what is left of the grace.
  // The store is closed when the runtime is destroyed.
  bool drain(std::chrono::milliseconds grace, config::drain_mode parked = config::drain_mode::shed,
             const std::atomic<bool>* hurry = nullptr);

 private:
  void monitor_main();
  void setup_jobs();
  void jobs_main();
  void stop_jobs(std::chrono::milliseconds grace);

  reload_result refused(const std::string& why);

  config::app_config cfg_;
  std::atomic<std::shared_ptr<const config::app_config>> current_;
  std::mutex reload_mutex_;  // serialises reloads
  metrics_registry metrics_;
  // Declared before the executor: destroyed after every handler that may still use them.
  std::shared_ptr<jobs::job_store> store_;
  std::unique_ptr<job_front> jobs_;
  std::unique_ptr<executor> executor_;
  std::unique_ptr<qos::admission> admission_;
  std::unique_ptr<qos::gate> gate_;
  std::unique_ptr<qos::access_log> access_log_;
  bool drained_ = false;

  std::mutex monitor_mutex_;
  std::condition_variable monitor_cv_;
  bool monitor_stop_ = false;  // guarded by monitor_mutex_
  std::thread monitor_;

  // The consumers (one per group with accept routes) and their maintenance thread.
  std::mutex jobs_mutex_;
  bool jobs_started_ = false;  // guarded by jobs_mutex_
  bool jobs_stopped_ = false;  // guarded by jobs_mutex_
  std::vector<std::pair<std::string, std::unique_ptr<jobs::consumer>>> consumers_;
  std::condition_variable jobs_cv_;
  bool jobs_stop_ = false;  // guarded by jobs_mutex_
  std::thread jobs_thread_;
};

}  // namespace qos

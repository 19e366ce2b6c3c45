// Everything the gate needs except a listener, for a service that already has its own
// Pistache Endpoint and Router: the fiber executor, admission (the limit groups), the gate,
// the metrics and the shedding monitor, built from a config (loaded from YAML or built in code;
// both go through the same validation). It owns no endpoint, installs no signal handler and
// leaves the process's loggers alone (the access log, when the config enables it, writes
// through a logger of its own). Setup (gate().guard..., prime) before the endpoint
// serves; then thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include <pistache/router.h>
#include <prometheus/registry.h>

#include "qos/admission/admission.hpp"
#include "qos/config/config.hpp"
#include "qos/fiber/executor.hpp"
#include "qos/http/gate.hpp"
#include "qos/ops/access_log.hpp"
#include "qos/ops/metrics_registry.hpp"

namespace qos {

class runtime {
 public:
  // Throws qos::invalid_option (a std::invalid_argument naming the key) for a setting out of
  // range, and std::system_error when threads cannot start. With `registry`, qos registers its
  // metrics there, beside the application's own (metrics().render() serializes all of it).
  explicit runtime(config::app_config cfg,
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
  const config::app_config& config() const noexcept { return cfg_; }

  // Registers a route for every HTTP method on `router` once, so that Pistache 0.0.5's Router
  // never inserts into its method map while reactors read it (a data race). Call it on your
  // router before the endpoint serves.
  static void prime(Pistache::Rest::Router& router) { gate::prime_router(router); }

  // A GET handler answering the Prometheus text exposition of these metrics.
  Pistache::Rest::Route::Handler metrics_handler();

  // Stops admitting: every parked request gets its shutdown fallback now and new ones at
  // once; running handlers get up to `grace` to finish. Returns false when some still run
  // (then neither the runtime nor the Endpoint may be destroyed). Call it before
  // Endpoint::shutdown(). Idempotent; later calls wait again, up to their own grace.
  bool drain(std::chrono::milliseconds grace);

 private:
  void monitor_main();

  config::app_config cfg_;
  metrics_registry metrics_;
  std::unique_ptr<executor> executor_;
  std::unique_ptr<qos::admission> admission_;
  std::unique_ptr<qos::gate> gate_;
  std::unique_ptr<qos::access_log> access_log_;
  bool drained_ = false;

  std::mutex monitor_mutex_;
  std::condition_variable monitor_cv_;
  bool monitor_stop_ = false;  // guarded by monitor_mutex_
  std::thread monitor_;
};

}  // namespace qos

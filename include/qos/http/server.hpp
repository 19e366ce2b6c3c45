// Builds a whole guarded Pistache server from a config: endpoint, reactor threads, fiber
// executor, limit groups, gate, metrics and the shedding monitor. The one place where wiring
// from config happens. Setup (router(), gate()) before start(); then thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include <pistache/endpoint.h>
#include <pistache/router.h>

#include "qos/admission/admission.hpp"
#include "qos/config/config.hpp"
#include "qos/fiber/executor.hpp"
#include "qos/ops/metrics_registry.hpp"
#include "qos/http/gate.hpp"

namespace qos {

class server {
 public:
  // Threads created here and in start() never receive SIGINT/SIGTERM, so run() can wait for
  // them with sigwait.
  explicit server(config::app_config cfg);
  server(const server&) = delete;
  server& operator=(const server&) = delete;
  ~server();  // shutdown()

  Pistache::Rest::Router& router() noexcept { return router_; }
  qos::gate& gate() noexcept { return *gate_; }
  qos::admission& admission() noexcept { return *admission_; }
  metrics_registry& metrics() noexcept { return metrics_; }
  const config::app_config& config() const noexcept { return cfg_; }

  // GET handler answering the Prometheus text exposition of this server's metrics.
  Pistache::Rest::Route::Handler metrics_handler();

  // Binds and serves on background threads. Throws on bind failure.
  void start();
  // The bound port (the real one when the config asked for port 0).
  std::uint16_t port() const;

  // start() if needed, then waits for SIGINT or SIGTERM and shuts down. Returns the process
  // exit status: 0 after a clean shutdown.
  int run();

  // Stops: every waiting request gets its fallback and new ones get the shutdown fallback at
  // once; running handlers get shutdown_grace to finish; then Pistache stops. Returns false
  // when handlers were still running at the end of the grace (the caller should then exit
  // without destroying the server). Idempotent.
  bool shutdown();

 private:
  void monitor_main();

  config::app_config cfg_;
  metrics_registry metrics_;
  std::unique_ptr<executor> executor_;
  std::unique_ptr<qos::admission> admission_;
  std::unique_ptr<qos::gate> gate_;
  Pistache::Rest::Router router_;
  std::unique_ptr<Pistache::Http::Endpoint> endpoint_;
  bool started_ = false;
  std::atomic<bool> stopped_{false};
  bool drained_ = true;

  std::mutex monitor_mutex_;
  std::condition_variable monitor_cv_;
  bool monitor_stop_ = false;  // guarded by monitor_mutex_
  std::thread monitor_;
};

}  // namespace qos

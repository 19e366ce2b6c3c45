// The batteries-included server: a qos::runtime (executor, admission, gate, metrics) plus a
// Pistache router behind qos's connection layer and listener (connection.hpp, listener.hpp),
// configured from the same config, and SIGINT/SIGTERM handling in run(). For a service with its own
// endpoint and router, use qos::runtime instead. Setup (router(), gate()) before start(); then
// thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include <pistache/router.h>

#include "qos/config/config.hpp"
#include "qos/http/listener.hpp"
#include "qos/http/runtime.hpp"

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
  qos::runtime& runtime() noexcept { return *runtime_; }
  qos::gate& gate() noexcept { return runtime_->gate(); }
  qos::admission& admission() noexcept { return runtime_->admission(); }
  metrics_registry& metrics() noexcept { return runtime_->metrics(); }
  const config::app_config& config() const noexcept { return runtime_->config(); }

  // GET handler answering the Prometheus text exposition of this server's metrics.
  Pistache::Rest::Route::Handler metrics_handler() { return runtime_->metrics_handler(); }

  // Binds and serves on background threads, with the listener and connection options of
  // `server:` in the config. Throws on bind failure.
  void start();
  // The bound port (the real one when the config asked for port 0).
  std::uint16_t port() const;
  // The listener (connection count, cap, refusals); started by start().
  const qos::listener& listener() const;

  // start() if needed, then waits for SIGINT or SIGTERM and shuts down. Returns the process
  // exit status: 0 after a clean shutdown.
  int run();

  // Stops: every waiting request gets its fallback and new ones get the shutdown fallback at
  // once; running handlers get shutdown_grace to finish; then Pistache stops. Returns false
  // when handlers were still running at the end of the grace (the caller should then exit
  // without destroying the server). Idempotent.
  bool shutdown();

 private:
  std::unique_ptr<qos::runtime> runtime_;
  Pistache::Rest::Router router_;
  std::unique_ptr<qos::listener> listener_;
  bool started_ = false;
  std::atomic<bool> stopped_{false};
  bool drained_ = true;
};

}  // namespace qos

// The batteries-included server: a qos::runtime (executor, admission, gate, metrics) plus a
// Pistache router behind qos's connection layer and listener (connection.hpp, listener.hpp),
// the admin listener when the config has `admin:` (admin.hpp), all configured from the same
// config, and the signals of an operated service in run():
//   SIGHUP           reload the config file (runtime::reload_file); the old one stays on error
//   SIGTERM, SIGINT  drain: /readyz answers 503, server.drain_delay passes, the public listener
//                    closes, parked requests get the shutdown fallback (server.drain_parked:
//                    shed) or may still be served within shutdown_grace (serve), running
//                    handlers get shutdown_grace to finish, their answers are written out
//                    (listener::flush) before the reactors stop; exit 0, or 1 when they
//                    overran it
//   a second SIGTERM/SIGINT during the drain: parked requests are answered at once and the
//                    wait for running handlers ends. For a service with its own
// endpoint and router, use qos::runtime instead. With accept routes in the config, the router
// serves GET /jobs/:id and GET /jobs/:id/result (runtime::job_status_handler), and start()
// starts the job consumers (runtime::start_jobs) after the application's gate().accept() calls.
// Setup (router(), gate()) before start(); then thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include <pistache/router.h>

#include "qos/config/config.hpp"
#include "qos/http/admin.hpp"
#include "qos/http/listener.hpp"
#include "qos/http/runtime.hpp"

namespace qos {

class server {
 public:
  // Threads created here and in start() never receive SIGINT/SIGTERM/SIGHUP, so run() can
  // wait for them with sigwait. The calling thread keeps SIGHUP blocked from here on, so a
  // reload asked for before run() is served by run().
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

  // The admin listener (`admin:` in the config), or null without one. Add the application's
  // admin routes to its router() before start().
  qos::admin* admin() noexcept { return admin_.get(); }

  // Re-reads the file the config came from (config().source) and applies it (see
  // runtime::reload); what SIGHUP and POST /qos/reload do. Thread-safe.
  reload_result reload();

  // Binds and serves on background threads, with the listener and connection options of
  // `server:` in the config. Throws on bind failure.
  void start();
  // The bound port (the real one when the config asked for port 0).
  std::uint16_t port() const;
  // The listener (connection count, cap, refusals); started by start().
  const qos::listener& listener() const;

  // start() if needed, then serves the signals above until a drain ends. Returns the process
  // exit status: 0 after a clean drain, 1 when handlers overran shutdown_grace.
  int run();

  // The drain (see above) without the signals. Returns false when handlers were still running
  // at the end of the grace (the caller should then exit without destroying the server).
  // Idempotent. hurry() from another thread cuts it short, as a second signal does.
  bool shutdown();
  void hurry() noexcept { hurry_.store(true, std::memory_order_release); }

 private:
  std::unique_ptr<qos::runtime> runtime_;
  Pistache::Rest::Router router_;
  std::unique_ptr<qos::listener> listener_;
  std::unique_ptr<qos::admin> admin_;
  std::atomic<std::uint64_t> reloads_applied_{0};
  bool started_ = false;
  std::atomic<bool> stopped_{false};
  std::atomic<bool> hurry_{false};
  bool drained_ = true;
};

}  // namespace qos

// The admin listener: qos's internals on a listener of their own, apart from the public one
// (Envoy's admin port, HAProxy's stats socket). Routes:
//   GET  /metrics      Prometheus text exposition (the runtime's registry)
//   GET  /qos/status   JSON: config version and hash, uptime, per group limit / in use / waiting
//                      (per priority level) / service-time average / shedding state, per route
//                      counters, and with a job store "jobs": {"routes": [{name, group, depth}],
//                      "consumers": [{group, claimed, succeeded, failed, given_back,
//                      fenced_out, requeued, abandoned, held}]} (sampled about once a second)
//   POST /qos/reload   runs the reload hook: 200 with what changed, 400 with the error
//   POST /qos/jobs/:id/requeue   (with a job store) a dead job back to queued, its attempts
//                      from 0: 200; 404 unknown; 409 not dead. Token-protected.
//   DELETE /qos/jobs/:id         (with a job store) purges a dead job: 200; 404; 409 not dead.
//                      Token-protected.
//   GET  /healthz      200 while the process serves (liveness)
//   GET  /readyz       200 while ready; 503 once a drain began (set_ready(false)), so that a
//                      load balancer stops sending before the public listener closes
// plus the application's own (router(), wrapped in protect() for anything that changes state).
//
// Authentication: a bearer token (`Authorization: Bearer <token>`). POST requests always need
// it (with no token configured they are refused with 403); every request needs it when the
// listener is bound beyond loopback. A missing or wrong token gets 401 with
// `WWW-Authenticate: Bearer`. The token is compared in constant time.
//
// Setup (router(), hooks) before start(); then thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <pistache/router.h>

#include "qos/http/listener.hpp"
#include "qos/http/runtime.hpp"

namespace qos {

struct admin_options {
  std::string address = "127.0.0.1";
  std::uint16_t port = 0;  // 0: any free port (port() tells which)
  std::string token;       // empty: no token (POST refused; only allowed on loopback)
};

// What /qos/reload answers: `status` 200 (applied, or nothing to apply) or 400 (refused, the
// old config stays), and a body for the operator (what changed, or the error).
struct admin_reply {
  int status = 200;
  std::string body;
};

class admin {
 public:
  struct hooks {
    std::function<admin_reply()> reload;            // POST /qos/reload; absent: 404
    std::function<std::string()> config_hash;       // /qos/status "config_hash"
    std::function<std::uint64_t()> config_version;  // reloads applied so far, 0 at start
  };

  // Throws std::invalid_argument when `options.address` is not loopback and no token is set.
  admin(qos::runtime& runtime, admin_options options, hooks h = {});
  admin(const admin&) = delete;
  admin& operator=(const admin&) = delete;
  ~admin();

  // Add the application's own admin routes here before start().
  Pistache::Rest::Router& router() noexcept { return router_; }
  // `handler` behind the token check (for routes that change state, or expose secrets).
  Pistache::Rest::Route::Handler protect(Pistache::Rest::Route::Handler handler);

  void start();
  std::uint16_t port() const noexcept { return listener_ ? listener_->port() : 0; }
  void shutdown();

  // /readyz: 200 while true, 503 while false. Starts true.
  void set_ready(bool ready) noexcept { ready_.store(ready, std::memory_order_release); }
  bool ready() const noexcept { return ready_.load(std::memory_order_acquire); }

  // The /qos/status document (also for tests and for a log line).
  std::string status_json() const;

 private:
  enum class access { open, token };
  Pistache::Rest::Route::Handler guarded(access needed, Pistache::Rest::Route::Handler handler);
  bool authorized(const Pistache::Rest::Request& req) const;

  qos::runtime& runtime_;
  admin_options options_;
  hooks hooks_;
  bool loopback_ = true;
  std::chrono::steady_clock::time_point started_;
  std::atomic<bool> ready_{true};
  Pistache::Rest::Router router_;
  std::unique_ptr<listener> listener_;
};

}  // namespace qos

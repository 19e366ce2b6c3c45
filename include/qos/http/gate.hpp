// The Pistache adapter: wraps route handlers so that a guarded route goes through admission
// (which decides, waits, runs and answers), and implements admission's transport over a
// Pistache request and writer. Wrapped handlers run on the reactor thread, never block and
// never throw. Thread-safe after construction; guard(), on_fallback(), on_priority() are for
// setup time. A route's settings (admission policy, priority and deadline rules, fallbacks)
// are one immutable view that apply() replaces whole: a request reads it once, on arrival.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <pistache/http.h>
#include <pistache/router.h>

#include "qos/admission/admission.hpp"
#include "qos/admission/request_context.hpp"  // remaining_budget(), for handlers
#include "qos/admission/transport.hpp"
#include "qos/config/config.hpp"
#include "qos/config/reload_plan.hpp"
#include "qos/core/outcome.hpp"
#include "qos/jobs/consumer.hpp"

namespace qos {

// A guarded handler answers through the writer before it returns. If it returns without
// answering, qos answers 500; if it throws, qos answers 500 unless it had answered already.
using handler =
    std::function<void(const Pistache::Rest::Request&, Pistache::Http::ResponseWriter&)>;

// Answers in place of the handler (stale cache value, placeholder image). Runs on the reactor
// thread for answers given at once (queue_full, shutdown, ...) and on a fiber for a wait that
// ran out: it must not block. The writer already carries the X-QoS-Outcome header. Throwing,
// or returning without answering, falls back to the route's static fallback.
using fallback_handler = std::function<void(outcome why, const Pistache::Rest::Request&,
                                            Pistache::Http::ResponseWriter&)>;

// A handler that returns its response (qos::response, see admission/transport.hpp); qos sends
// it, unless the handler overran the route's max_exec (the client then already has the
// exec_timeout fallback and the result is discarded).
using result_handler = std::function<response(const Pistache::Rest::Request&)>;

// A priority rule in code (a tier from a verified token, a tenant table): consulted before the
// route's configured header rules; nullopt falls through to them. Runs on the reactor thread
// for every request of the route: cheap, never blocking. If it throws, the request is
// answered 500 (outcome error).
using priority_rule = std::function<std::optional<priority>(const Pistache::Rest::Request&)>;

// Adds a response header by name. Pistache 0.0.5 does not write raw headers added with
// headers().addRaw() to responses; this one is written.
void add_header(Pistache::Http::ResponseWriter& w, std::string name, std::string value);

// Header on every response qos makes itself, naming why (the outcome's wire word).
inline constexpr const char* outcome_header = "X-QoS-Outcome";

class access_log;  // ops/access_log.hpp
class job_front;   // http/job_front.hpp

// An accept route's job handler, as the gate recorded it for the route's consumer.
struct accepted_route {
  std::string name;
  jobs::job_handler handler;
  handler_kind kind = handler_kind::blocking;
};

class gate {
 public:
  gate(admission& adm, const config::app_config& cfg);
  gate(const gate&) = delete;
  gate& operator=(const gate&) = delete;
  ~gate();

  // Guards `h` with the route policy `route` of the config. Throws std::invalid_argument for a
  // route name the config does not declare, or one with max_exec (use guard_result: a
  // handler that writes its own response cannot have a late result discarded).
  Pistache::Rest::Route::Handler guard(const std::string& route, handler h,
                                       handler_kind kind = handler_kind::fiber);
  Pistache::Rest::Route::Handler guard_blocking(const std::string& route, handler h) {
    return guard(route, std::move(h), handler_kind::blocking);
  }
  // Guards a handler that returns its response. With max_exec it runs on its own fiber (or
  // the group's blocking pool) while the request's fiber waits at most max_exec for it.
  // Throws std::invalid_argument for handler_kind::reactor (it could not be cut at max_exec).
  Pistache::Rest::Route::Handler guard_result(const std::string& route, result_handler h,
                                              handler_kind kind = handler_kind::blocking);
  // An accept-mode route (issue 13): the request is stored as a durable job and answered
  // 202 Accepted (Location: /jobs/{id}, Retry-After) only once the store committed it; the
  // route's consumer (qos::runtime::start_jobs) later runs `h` through admission under the
  // route's group, like a guarded request. On the reactor thread the handler only validates
  // and copies the request (method, target, the route's accept.keep_headers and Content-Type,
  // body, priority by the route's rules, tenant by accept.tenant_header, Idempotency-Key); the
  // enqueue runs on the runtime's store threads. Answers: 202 (created, or the same key and
  // payload again: the first job's id); 400 for a malformed Idempotency-Key (not printable
  // ASCII, longer than 255 bytes) or a missing one with require_idempotency_key; 422 for a key
  // reused with another payload; accept.full_status + Retry-After at max_depth; 503 +
  // Retry-After when the store failed (nothing stored), when max_pending store calls wait, or
  // once the runtime drains. The accept settings are the route's view: a reload applies them.
  // Throws std::invalid_argument for a route that is not mode accept, a reactor kind or an
  // empty handler, std::logic_error when the runtime has no job store (no `jobs:`).
  Pistache::Rest::Route::Handler accept(const std::string& route, jobs::job_handler h,
                                        handler_kind kind = handler_kind::blocking);
  // The routes given to accept(), in name order (for the runtime's consumers).
  std::vector<accepted_route> accepted() const;
  // The job store's HTTP side accept() uses; set by qos::runtime before any accept() call.
  void attach_jobs(job_front* front) noexcept { jobs_ = front; }

  // An unguarded route: runs `h` on the reactor thread exactly as Pistache would, with only the
  // keep-alive fix applied.
  static Pistache::Rest::Route::Handler plain(handler h);

  // Replaces the static fallback of `route` with code. Setup time only.
  void on_fallback(const std::string& route, fallback_handler f);
  // Adds a priority rule in code to `route`. Setup time only.
  void on_priority(const std::string& route, priority_rule rule);
  // Gives every guarded request of this gate a line in `log` once answered; nullptr (the
  // default) or a disabled log: no lines, and one branch per request. `log` must outlive every
  // request the gate serves. Thread-safe.
  void set_access_log(access_log* log) noexcept;

  // The routes the code guards, and how (for config::plan_reload).
  config::guarded_routes guarded() const;
  // Publishes the settings of `cfg` (validated; see config::plan_reload) for every route the
  // gate knows, as one view per route, to requests arriving from now on; requests in flight
  // finish under the view they took. Routes the gate does not know are ignored (nothing can
  // guard them before a restart), and so is a route whose group differs from the one it runs
  // in. Throws std::bad_alloc before publishing anything. Thread-safe against requests;
  // callers serialise apply() calls.
  void apply(const config::app_config& cfg);

  // Registers a route for every HTTP method once, so that Router never inserts into its method
  // map while reactors read it (a data race in Pistache 0.0.5).
  static void prime_router(Pistache::Rest::Router& router);

  // Pistache 0.0.5 answers `Connection: Close` to an HTTP/1.1 request that sent no Connection
  // header, which makes clients reconnect every time. Restores keep-alive on the writer.
  static void keep_alive(const Pistache::Http::Request& req, Pistache::Http::ResponseWriter& w);

  struct route_view;
  struct http_route;

 private:
  http_route& find(const std::string& route) const;

  admission& adm_;
  job_front* jobs_ = nullptr;
  std::map<std::string, std::unique_ptr<http_route>, std::less<>> routes_;
};

}  // namespace qos

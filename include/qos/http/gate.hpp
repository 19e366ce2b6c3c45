// The Pistache adapter: wraps route handlers so that a guarded route runs under its limit group
// on a fiber, and answers a fallback when it cannot. Wrapped handlers run on the reactor thread,
// never block and never throw. Thread-safe after construction; guard() is for setup time.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <pistache/http.h>
#include <pistache/router.h>

#include "qos/admission/admission.hpp"
#include "qos/config/config.hpp"
#include "qos/core/outcome.hpp"

namespace qos {

// A guarded handler answers through the writer before it returns. If it returns without
// answering, qos answers 500; if it throws, qos answers 500 unless it had answered already.
using handler =
    std::function<void(const Pistache::Rest::Request&, Pistache::Http::ResponseWriter&)>;

// Answers in place of the handler (stale cache value, placeholder image). Runs on the reactor
// thread for queue_full/shutdown/rejected and on a fiber for timeout: it must not block. The
// writer already carries the X-QoS-Outcome header. Throwing falls back to the static fallback.
using fallback_handler = std::function<void(outcome why, const Pistache::Rest::Request&,
                                            Pistache::Http::ResponseWriter&)>;

// What a result handler returns; qos sends it, unless the handler overran the route's
// max_exec (the client then already has the exec_timeout fallback and this is discarded).
struct response {
  Pistache::Http::Code code = Pistache::Http::Code::Ok;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
};
using result_handler = std::function<response(const Pistache::Rest::Request&)>;

enum class handler_kind {
  fiber,     // runs on the fiber: non-blocking code, fiber-aware waits
  blocking,  // calls a synchronous driver: runs on the group's blocking pool
  // Trivial code that never blocks or waits (a computed answer, an in-memory read). With a
  // free permit on arrival it runs at once on the reactor thread, with no hand-off (as a
  // servlet filter would run the chain); a request that must wait runs it on its fiber.
  reactor,
};

// Adds a response header by name. Pistache 0.0.5 does not write raw headers added with
// headers().addRaw() to responses; this one is written.
void add_header(Pistache::Http::ResponseWriter& w, std::string name, std::string value);

// Header on every response qos makes itself, naming why (timeout, queue_full, ...).
inline constexpr const char* outcome_header = "X-QoS-Outcome";

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
  // Guards a handler that returns its response. It runs on its own fiber (or the group's
  // blocking pool) while the request's fiber waits at most the route's max_exec for it.
  // Throws std::invalid_argument for handler_kind::reactor (it could not be cut at max_exec).
  Pistache::Rest::Route::Handler guard_result(const std::string& route, result_handler h,
                                              handler_kind kind = handler_kind::blocking);
  // An unguarded route: runs `h` on the reactor thread exactly as Pistache would, with only the
  // keep-alive fix applied.
  static Pistache::Rest::Route::Handler plain(handler h);

  // Replaces the static fallback of `route` with code. Setup time only.
  void on_fallback(const std::string& route, fallback_handler f);

  // Registers a route for every HTTP method once, so that Router never inserts into its method
  // map while reactors read it (a data race in Pistache 0.0.5).
  static void prime_router(Pistache::Rest::Router& router);

  // Pistache 0.0.5 answers `Connection: Close` to an HTTP/1.1 request that sent no Connection
  // header, which makes clients reconnect every time. Restores keep-alive on the writer.
  static void keep_alive(const Pistache::Http::Request& req, Pistache::Http::ResponseWriter& w);

  struct route_state;

 private:
  const route_state& find(const std::string& route) const;

  admission& adm_;
  std::map<std::string, std::unique_ptr<route_state>, std::less<>> routes_;
};

}  // namespace qos

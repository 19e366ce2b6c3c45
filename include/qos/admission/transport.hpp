// The edge of one guarded request, as admission drives it: an HTTP connection, or a queue
// consumer's job. Admission decides everything and calls exactly one of answer / fallback /
// fail at most once per request (fail and fallback may follow handle() when handle() could not
// answer). Implementations hold the request and the way back to its client.
#pragma once

#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "qos/core/metrics.hpp"
#include "qos/core/outcome.hpp"

namespace qos {

// A response as a handler returns it; the edge turns it into its own wire form.
struct response {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers{};
};

// Where a route's handler runs once its request holds a permit.
enum class handler_kind {
  fiber,     // on the request's fiber: non-blocking code, fiber-aware waits
  blocking,  // calls a synchronous driver: on the group's blocking pool
  // Trivial code that never blocks or waits (a computed answer, an in-memory read). With a
  // free permit on arrival it runs at once on the submitting thread (a reactor), with no
  // hand-off, as a servlet filter runs the chain; a request that must wait runs it on its
  // fiber.
  reactor,
};

class transport {
 public:
  virtual ~transport() = default;

  // Asked once the request holds a permit, before its handler would start.
  virtual bool connected() noexcept = 0;
  // Called before the request leaves the submitting thread (to wait, or to run on a fiber):
  // stop borrowing from the caller's frame. May throw (allocation): the request is then
  // answered `rejected` from the submitting thread.
  virtual void detach() {}
  // Runs the application's handler once, on the thread admission chose. Either the handler
  // answers through the edge itself (returns nullopt) or it returns the response for
  // answer(). With max_exec, handle() runs apart from the request and may still run after
  // fallback(exec_timeout): it must then only compute, never touch the client. Throws what
  // the handler throws, or when it returned without answering.
  virtual std::optional<response> handle() = 0;
  // Sends what handle() returned.
  virtual void answer(response r) noexcept = 0;
  // Answers without the handler's response: the route's fallback for `why`.
  virtual void fallback(outcome why) noexcept = 0;
  // The handler failed (`error` holds what it threw): answer `error` unless it already
  // answered, and say why where operators look.
  virtual void fail(std::exception_ptr error) noexcept = 0;
  // Last call, once the request has been answered: what admission decided and measured (for
  // an access log). The default ignores it.
  virtual void done(const request_report& report) noexcept { (void)report; }
  // True when a client waits for the answer as it is given (an HTTP request). False when the
  // answer is read only at done() (a queue's job): a blocking handler then runs with its
  // permit from start to done() on a thread of its group's pool, with no fiber waiting for
  // it, and max_exec is judged when the handler returns (an overrun's result is dropped for
  // fallback(exec_timeout), as at the deadline). Asked before the request waits for a permit,
  // or once it holds one.
  virtual bool answer_awaited() const noexcept { return true; }
};

}  // namespace qos

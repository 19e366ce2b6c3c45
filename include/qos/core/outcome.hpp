// What happened to one guarded request. Expected outcomes are values, never exceptions.
#pragma once

#include <string_view>

namespace qos {

enum class outcome {
  admitted,           // a permit was granted and the handler ran
  queue_full,         // the group's wait queue was at max_queue: shed at once
  timed_out,          // waited max_wait without a permit
  client_gone,        // the client disconnected before its handler could start
  shutting_down,      // the server is stopping: answered without running the handler
  rejected,           // the executor refused the job (overloaded or stopped)
  error,              // the handler threw: answered 500
  shed,               // dropped from the queue by its discipline (CoDel: waited past the target
                      // while a standing queue persisted)
  deadline,           // the client's own deadline cannot be met: answered at once
  predicted_timeout,  // the estimated wait exceeds the wait budget: answered at once
  exec_timeout,       // the handler ran past max_exec: answered; its late result is discarded
};

inline constexpr int outcome_count = 11;

constexpr std::string_view to_string(outcome o) noexcept {
  switch (o) {
    case outcome::admitted:
      return "admitted";
    case outcome::queue_full:
      return "queue_full";
    case outcome::timed_out:
      return "timeout";
    case outcome::client_gone:
      return "client_gone";
    case outcome::shutting_down:
      return "shutdown";
    case outcome::rejected:
      return "rejected";
    case outcome::error:
      return "error";
    case outcome::shed:
      return "shed";
    case outcome::deadline:
      return "deadline";
    case outcome::predicted_timeout:
      return "predicted_timeout";
    case outcome::exec_timeout:
      return "exec_timeout";
  }
  return "unknown";
}

}  // namespace qos

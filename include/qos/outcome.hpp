// What happened to one guarded request. Expected outcomes are values, never exceptions.
#pragma once

#include <string_view>

namespace qos {

enum class outcome {
  admitted,       // a permit was granted and the handler ran
  queue_full,     // the group's wait queue was at max_queue: shed at once
  timed_out,      // waited max_wait without a permit
  client_gone,    // the client disconnected before its handler could start
  shutting_down,  // the server is stopping: answered without running the handler
  rejected,       // the executor refused the job (overloaded or stopped)
  error,          // the handler threw: answered 500
};

inline constexpr int outcome_count = 7;

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
  }
  return "unknown";
}

}  // namespace qos

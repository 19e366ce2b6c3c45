// What happened to one guarded request, and the one table everything else reads about it: the
// word on the wire (X-QoS-Outcome, metrics labels, YAML fallback keys), whether it is a shed,
// and which response answers it. Expected outcomes are values, never exceptions. Plain values.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace qos {

// The enumerator names are the wire words.
enum class outcome : std::uint8_t {
  admitted,           // a permit was granted and the handler ran
  queue_full,         // the group's wait queue was at max_queue: shed at once
  timeout,            // waited max_wait without a permit
  client_gone,        // the client disconnected before its handler could start
  shutdown,           // the server is stopping: answered without running the handler
  rejected,           // the executor refused the job (overloaded or stopped)
  error,              // the handler threw or returned without answering: answered 500
  shed,               // dropped from the queue by its discipline (CoDel: waited past the target
                      // while a standing queue persisted)
  deadline,           // the client's own deadline cannot be met: answered at once
  predicted_timeout,  // the estimated wait exceeds the wait budget: answered at once
  exec_timeout,       // the handler ran past max_exec: answered; its late result is discarded
};

inline constexpr std::size_t outcome_count = 11;

// How a request that ended with an outcome is answered when its handler does not answer it.
enum class answer_kind : std::uint8_t {
  handler,   // the handler answered (admitted); no fallback
  fallback,  // the route's fallback for this reason (see `inherits`)
  internal,  // a fixed 500: the application failed, not the gate
};

struct outcome_traits {
  outcome value;
  std::string_view name;  // the wire word
  // Answered by a fallback because the group could not serve it in time (queue full, wait
  // over, shed, cannot meet a deadline, refused): what the shedding monitor counts.
  bool shed;
  answer_kind answer;
  // The fallback rule, in one place: a reason with no entry of its own in the route's
  // `fallback` uses the response of `inherits` (itself: the route-level response), with
  // `status` instead of the inherited status when non-zero.
  outcome inherits;
  int status;
};

inline constexpr std::array<outcome_traits, outcome_count> outcome_table{{
    {outcome::admitted, "admitted", false, answer_kind::handler, outcome::admitted, 0},
    {outcome::queue_full, "queue_full", true, answer_kind::fallback, outcome::queue_full, 0},
    {outcome::timeout, "timeout", true, answer_kind::fallback, outcome::timeout, 0},
    {outcome::client_gone, "client_gone", false, answer_kind::fallback, outcome::client_gone, 0},
    {outcome::shutdown, "shutdown", false, answer_kind::fallback, outcome::shutdown, 0},
    {outcome::rejected, "rejected", true, answer_kind::fallback, outcome::queue_full, 0},
    {outcome::error, "error", false, answer_kind::internal, outcome::error, 500},
    {outcome::shed, "shed", true, answer_kind::fallback, outcome::queue_full, 0},
    {outcome::deadline, "deadline", true, answer_kind::fallback, outcome::timeout, 0},
    {outcome::predicted_timeout, "predicted_timeout", true, answer_kind::fallback, outcome::timeout,
     0},
    {outcome::exec_timeout, "exec_timeout", false, answer_kind::fallback, outcome::exec_timeout,
     504},
}};

constexpr std::size_t index(outcome o) noexcept {
  return static_cast<std::size_t>(o);
}

constexpr const outcome_traits& traits(outcome o) noexcept {
  return outcome_table[index(o)];
}

constexpr std::string_view to_string(outcome o) noexcept {
  return traits(o).name;
}

constexpr std::optional<outcome> outcome_from_string(std::string_view name) noexcept {
  for (const auto& row : outcome_table) {
    if (row.name == name) return row.value;
  }
  return std::nullopt;
}

// The table is in enum order and every inheritance chain ends in one step (a reason inherits
// from a reason that uses the route-level response), so resolving needs no loop.
consteval bool outcome_table_is_sound() {
  for (std::size_t i = 0; i < outcome_count; ++i) {
    const auto& row = outcome_table[i];
    if (index(row.value) != i) return false;
    if (traits(row.inherits).inherits != row.inherits) return false;
  }
  return true;
}
static_assert(outcome_table_is_sound());

}  // namespace qos

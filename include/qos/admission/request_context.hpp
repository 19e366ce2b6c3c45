// What a running guarded handler may ask about its own request: the deadline its client gave
// (if any) and so the budget left. Set by the admission layer around the handler, on whichever
// fiber or thread runs it; empty elsewhere. Reads and writes are per fiber/thread: no locking.
#pragma once

#include <optional>

#include "qos/core/clock.hpp"

namespace qos {

struct request_context {
  std::optional<time_point> deadline;  // the client's deadline (absolute), if it sent one
};

// The context of the guarded request running on this fiber (or blocking-pool thread), or
// nullptr outside guarded handlers.
const request_context* current_request() noexcept;

// Remaining budget until the client's deadline (never negative); nullopt without a deadline.
std::optional<duration> remaining_budget() noexcept;

// Installs `ctx` as the current request for its scope; nests and restores.
class request_scope {
 public:
  explicit request_scope(const request_context* ctx) noexcept;
  ~request_scope();
  request_scope(const request_scope&) = delete;
  request_scope& operator=(const request_scope&) = delete;

 private:
  const request_context* previous_;
};

// The same for code that runs to completion on the calling thread and never suspends (an
// inline handler on a reactor thread): a plain thread-local slot, which it shadows.
class inline_request_scope {
 public:
  explicit inline_request_scope(const request_context* ctx) noexcept;
  ~inline_request_scope();
  inline_request_scope(const inline_request_scope&) = delete;
  inline_request_scope& operator=(const inline_request_scope&) = delete;

 private:
  const request_context* previous_;
};

}  // namespace qos

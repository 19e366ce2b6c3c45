#include "qos/admission/request_context.hpp"

#include <boost/fiber/fss.hpp>

namespace qos {
namespace {

// Fibers migrate between threads, so a thread_local would leak one request's context into
// another's; fiber-specific storage follows the fiber. A plain thread (the blocking pool) has
// a main fiber of its own, so the same storage serves it. The slot holds the pointer and owns
// nothing (the context lives in the request's frame); Boost.Fiber's slot cannot hold a pointer
// to const, and nothing writes through it.
boost::fibers::fiber_specific_ptr<request_context>& slot() {
  static boost::fibers::fiber_specific_ptr<request_context> s([](request_context*) {});
  return s;
}

// Set only while an inline handler runs: it cannot suspend, so nothing else runs on this
// thread meanwhile and the slot cannot leak into another request. Checked first, and cheaper
// than the fiber-specific slot (a map lookup in the running context).
thread_local const request_context* inline_slot = nullptr;

}  // namespace

const request_context* current_request() noexcept {
  if (inline_slot != nullptr) return inline_slot;
  return slot().get();
}

std::optional<duration> remaining_budget() noexcept {
  const auto* ctx = current_request();
  if (ctx == nullptr || !ctx->deadline) return std::nullopt;
  const auto left = *ctx->deadline - clock::now();
  return left < duration::zero() ? duration::zero() : left;
}

request_scope::request_scope(const request_context* ctx) noexcept : previous_(current_request()) {
  slot().reset(const_cast<request_context*>(ctx));
}

request_scope::~request_scope() {
  slot().reset(const_cast<request_context*>(previous_));
}

inline_request_scope::inline_request_scope(const request_context* ctx) noexcept
    : previous_(inline_slot) {
  inline_slot = ctx;
}

inline_request_scope::~inline_request_scope() {
  inline_slot = previous_;
}

}  // namespace qos

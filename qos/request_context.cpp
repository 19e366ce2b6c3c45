#include "qos/request_context.hpp"

#include <boost/fiber/fss.hpp>

namespace qos {
namespace {

// Fibers migrate between threads, so a thread_local would leak one request's context into
// another's; fiber-specific storage follows the fiber. A plain thread (the blocking pool) has
// a main fiber of its own, so the same storage serves it.
boost::fibers::fiber_specific_ptr<const request_context*>& slot() {
  static boost::fibers::fiber_specific_ptr<const request_context*> s(
      [](const request_context** p) { delete p; });
  return s;
}

}  // namespace

const request_context* current_request() noexcept {
  auto* p = slot().get();
  return p == nullptr ? nullptr : *p;
}

std::optional<duration> remaining_budget() noexcept {
  const auto* ctx = current_request();
  if (ctx == nullptr || !ctx->deadline) return std::nullopt;
  const auto left = *ctx->deadline - clock::now();
  return left < duration::zero() ? duration::zero() : left;
}

request_scope::request_scope(const request_context* ctx) noexcept : previous_(current_request()) {
  if (slot().get() == nullptr) {
    slot().reset(new const request_context*(ctx));
  } else {
    *slot().get() = ctx;
  }
}

request_scope::~request_scope() {
  *slot().get() = previous_;
}

}  // namespace qos

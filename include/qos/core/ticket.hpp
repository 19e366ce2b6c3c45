// A ticket is a place held in a group's wait queue for a request that will wait for a permit
// later, from another thread: the reactor sheds a full queue before any fiber exists, and the
// fiber that waits turns the ticket into a queue entry. Move-only RAII: destroying or resetting
// an unused ticket gives the place back exactly once; using it (see the source) does not. Not
// thread-safe itself; the source's cancel_ticket must be.
#pragma once

#include <type_traits>
#include <utility>

namespace qos {

class ticket_source {
 public:
  // Called once for each ticket destroyed unused, from any thread.
  virtual void cancel_ticket() noexcept = 0;

 protected:
  ~ticket_source() = default;
};

class ticket {
 public:
  ticket() noexcept = default;
  explicit ticket(ticket_source& source) noexcept : source_(&source) {}
  ticket(ticket&& other) noexcept : source_(std::exchange(other.source_, nullptr)) {}
  ticket& operator=(ticket&& other) noexcept {
    if (this != &other) {
      reset();
      source_ = std::exchange(other.source_, nullptr);
    }
    return *this;
  }
  ticket(const ticket&) = delete;
  ticket& operator=(const ticket&) = delete;
  ~ticket() { reset(); }

  // Gives the place back.
  void reset() noexcept {
    if (auto* s = std::exchange(source_, nullptr)) s->cancel_ticket();
  }
  // For the source only: the place became a queue entry, nothing to give back.
  void consume() noexcept { source_ = nullptr; }
  explicit operator bool() const noexcept { return source_ != nullptr; }

 private:
  ticket_source* source_ = nullptr;
};

static_assert(std::is_nothrow_move_constructible_v<ticket>);
static_assert(std::is_nothrow_move_assignable_v<ticket>);
static_assert(!std::is_copy_constructible_v<ticket>);

}  // namespace qos

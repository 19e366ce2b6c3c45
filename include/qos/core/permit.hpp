// A permit is the right to run one handler of a limit group. Move-only RAII: destroying or
// resetting it returns the permit to its source exactly once. Not thread-safe itself; the
// source's release_permit must be.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

namespace qos {

// Whatever hands out permits. release_permit is called once per permit, with the units it
// carried (a request's cost), from any thread.
class permit_source {
 public:
  virtual void release_permit(std::uint32_t units) noexcept = 0;

 protected:
  ~permit_source() = default;
};

class permit {
 public:
  permit() noexcept = default;
  explicit permit(permit_source& source, std::uint32_t units = 1) noexcept
      : source_(&source), units_(units) {}
  permit(permit&& other) noexcept
      : source_(std::exchange(other.source_, nullptr)), units_(other.units_) {}
  permit& operator=(permit&& other) noexcept {
    if (this != &other) {
      reset();
      source_ = std::exchange(other.source_, nullptr);
      units_ = other.units_;
    }
    return *this;
  }
  permit(const permit&) = delete;
  permit& operator=(const permit&) = delete;
  ~permit() { reset(); }

  void reset() noexcept {
    if (auto* s = std::exchange(source_, nullptr)) s->release_permit(units_);
  }
  explicit operator bool() const noexcept { return source_ != nullptr; }
  std::uint32_t units() const noexcept { return units_; }

 private:
  permit_source* source_ = nullptr;
  std::uint32_t units_ = 0;
};

static_assert(std::is_nothrow_move_constructible_v<permit>);
static_assert(std::is_nothrow_move_assignable_v<permit>);
static_assert(!std::is_copy_constructible_v<permit>);

}  // namespace qos

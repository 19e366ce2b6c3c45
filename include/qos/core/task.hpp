// unique_task: a move-only `void() noexcept` callable, for jobs that own move-only state (a
// Pistache ResponseWriter, a permit). std::function needs copyable targets; C++23's
// move_only_function is not in C++20. Not thread-safe; moved between threads by its queues.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace qos {

class unique_task {
 public:
  unique_task() noexcept = default;
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, unique_task>>>
  unique_task(F&& f) : impl_(std::make_unique<model<std::decay_t<F>>>(std::forward<F>(f))) {}
  unique_task(unique_task&&) noexcept = default;
  unique_task& operator=(unique_task&&) noexcept = default;

  explicit operator bool() const noexcept { return impl_ != nullptr; }
  // Runs the callable; it must not throw (jobs catch their own exceptions).
  void operator()() noexcept { impl_->call(); }

 private:
  struct concept_t {
    virtual ~concept_t() = default;
    virtual void call() noexcept = 0;
  };
  template <class F>
  struct model final : concept_t {
    explicit model(F&& f) : f_(std::move(f)) {}
    explicit model(const F& f) : f_(f) {}
    void call() noexcept override { f_(); }
    F f_;
  };
  std::unique_ptr<concept_t> impl_;
};

static_assert(std::is_nothrow_move_constructible_v<unique_task>);

}  // namespace qos

// Fiber stacks kept for reuse: a guarded request needs a fiber, and a fresh stack costs a
// malloc and page faults on first touch. Thread-safe (a mutex; held for a pointer swap only).
// Keeps at most `max_kept` free stacks; beyond that they go back to the allocator, so a burst
// of parked requests does not pin its high-water mark forever.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include <boost/context/stack_context.hpp>

namespace qos {

class stack_pool {
 public:
  stack_pool(std::size_t stack_size, std::size_t max_kept);
  stack_pool(const stack_pool&) = delete;
  stack_pool& operator=(const stack_pool&) = delete;
  ~stack_pool();

  boost::context::stack_context allocate();
  void deallocate(boost::context::stack_context& sc) noexcept;
  std::size_t kept() const;

  // The StackAllocator Boost.Fiber copies into each fiber: a handle to the pool.
  class allocator {
   public:
    explicit allocator(stack_pool& pool) noexcept : pool_(&pool) {}
    boost::context::stack_context allocate() { return pool_->allocate(); }
    void deallocate(boost::context::stack_context& sc) noexcept { pool_->deallocate(sc); }

   private:
    stack_pool* pool_;
  };

 private:
  std::size_t size_;
  std::size_t max_kept_;
  mutable std::mutex mutex_;
  std::vector<void*> free_;  // bottoms of free stacks; guarded by mutex_
};

}  // namespace qos

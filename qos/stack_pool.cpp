#include "qos/stack_pool.hpp"

#include <cstdlib>
#include <new>

namespace qos {

stack_pool::stack_pool(std::size_t stack_size, std::size_t max_kept)
    : size_(stack_size), max_kept_(max_kept) {
  free_.reserve(max_kept_);
}

stack_pool::~stack_pool() {
  for (void* p : free_) std::free(p);
}

boost::context::stack_context stack_pool::allocate() {
  void* bottom = nullptr;
  {
    std::lock_guard lk(mutex_);
    if (!free_.empty()) {
      bottom = free_.back();
      free_.pop_back();
    }
  }
  if (bottom == nullptr) {
    bottom = std::malloc(size_);
    if (bottom == nullptr) throw std::bad_alloc();
  }
  boost::context::stack_context sc;
  sc.size = size_;
  sc.sp = static_cast<char*>(bottom) + size_;  // stacks grow down: sp is the top
  return sc;
}

void stack_pool::deallocate(boost::context::stack_context& sc) noexcept {
  void* bottom = static_cast<char*>(sc.sp) - sc.size;
  {
    std::lock_guard lk(mutex_);
    if (free_.size() < max_kept_) {
      free_.push_back(bottom);
      return;
    }
  }
  std::free(bottom);
}

std::size_t stack_pool::kept() const {
  std::lock_guard lk(mutex_);
  return free_.size();
}

}  // namespace qos

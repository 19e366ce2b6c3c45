#include "qos/blocking_pool.hpp"

namespace qos {

blocking_pool::blocking_pool(std::size_t threads) {
  threads_.reserve(threads);
  for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { worker_main(); });
}

blocking_pool::~blocking_pool() {
  stop();
}

bool blocking_pool::submit(unique_task task) {
  {
    std::lock_guard lk(mutex_);
    if (stopping_) return false;
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return true;
}

void blocking_pool::worker_main() {
  for (;;) {
    unique_task task;
    {
      std::unique_lock lk(mutex_);
      cv_.wait(lk, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

void blocking_pool::stop() {
  {
    std::lock_guard lk(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

}  // namespace qos

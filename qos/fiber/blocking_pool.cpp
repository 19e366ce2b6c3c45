#include "qos/fiber/blocking_pool.hpp"

#include <system_error>

namespace qos {

blocking_pool::blocking_pool(std::size_t max_threads)
    : max_threads_(max_threads == 0 ? 1 : max_threads) {
  // Reserved up front so that starting a thread never reallocates (and never throws for that).
  threads_.reserve(max_threads_);
}

blocking_pool::~blocking_pool() {
  stop();
}

std::size_t blocking_pool::threads() const {
  std::lock_guard lk(mutex_);
  return threads_.size();
}

std::size_t blocking_pool::busy() const {
  std::lock_guard lk(mutex_);
  return queue_.size() + running_;
}

std::size_t blocking_pool::max_threads() const {
  std::lock_guard lk(mutex_);
  return max_threads_;
}

void blocking_pool::set_max_threads(std::size_t max_threads) {
  const std::size_t most = max_threads == 0 ? 1 : max_threads;
  {
    std::lock_guard lk(mutex_);
    threads_.reserve(most);  // as in the constructor: starting one never reallocates
    max_threads_ = most;
    // Work queued behind a full pool would otherwise wait for a running task to end.
    std::size_t waiting_work = queue_.size() > idle_ ? queue_.size() - idle_ : 0;
    for (; !stopping_ && waiting_work > 0 && threads_.size() < max_threads_; --waiting_work) {
      try {
        threads_.emplace_back([this] { worker_main(); });
      } catch (const std::system_error&) {
        break;  // out of threads: the running ones take the work in turn
      }
    }
  }
  cv_.notify_all();
}

bool blocking_pool::try_submit(unique_task& task) noexcept {
  try {
    return submit(task);
  } catch (...) {
    return false;  // no thread at all, or no memory for the queue: the task stays with its caller
  }
}

bool blocking_pool::submit(unique_task& task) {
  {
    std::lock_guard lk(mutex_);
    if (stopping_) return false;
    // A group with a large limit needs its threads only when that many requests run at once.
    if (queue_.size() + 1 > idle_ && threads_.size() < max_threads_) {
      try {
        threads_.emplace_back([this] { worker_main(); });
      } catch (const std::system_error&) {
        // Out of threads: the running ones will take the work in turn; with none, the caller
        // must know (the work was not queued, so it can never run behind an answer given).
        if (threads_.empty()) throw;
      }
    }
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return true;
}

void blocking_pool::worker_main() {
  std::unique_lock lk(mutex_);
  for (;;) {
    ++idle_;
    cv_.wait(lk, [this] { return stopping_ || !queue_.empty(); });
    --idle_;
    if (queue_.empty()) return;  // stopping, and nothing left to do
    unique_task task = std::move(queue_.front());
    queue_.pop_front();
    ++running_;
    lk.unlock();
    task();
    task = unique_task{};  // the work's captures go before the lock is taken again
    lk.lock();
    --running_;
  }
}

void blocking_pool::stop() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lk(mutex_);
    stopping_ = true;
    threads.swap(threads_);
  }
  cv_.notify_all();
  for (auto& t : threads)
    if (t.joinable()) t.join();
}

}  // namespace qos

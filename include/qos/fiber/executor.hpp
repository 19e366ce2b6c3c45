// The fiber executor: K OS threads sharing one Boost.Fiber scheduler pool (shared_work, idle
// threads sleep). Any thread may post jobs; each job runs on its own fiber. Thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <latch>
#include <thread>
#include <vector>

#include <boost/fiber/buffered_channel.hpp>
#include <boost/fiber/condition_variable.hpp>
#include <boost/fiber/mutex.hpp>

#include "qos/core/task.hpp"
#include "qos/fiber/detail/stack_pool.hpp"

namespace qos {

struct executor_options {
  std::size_t threads = 2;             // >= 1
  std::size_t inbox = 16384;           // jobs posted but not yet started; rounded up to 2^k
  std::size_t stack_size = 64 * 1024;  // per fiber; only touched pages cost memory
  std::size_t kept_stacks = 256;       // free stacks kept for reuse
};

class executor {
 public:
  explicit executor(executor_options options);
  executor(const executor&) = delete;
  executor& operator=(const executor&) = delete;
  ~executor();  // stop()

  // Never blocks, so reactor threads may call it. On success the job is moved from; on
  // failure (inbox full, or stopping) `job` is left untouched for the caller to answer.
  bool try_post(unique_task& job) noexcept;

  // Refuses new jobs, lets every posted and running job finish, joins the threads.
  // Idempotent. Must not be called from an executor thread.
  void stop();

  // Jobs posted or running and not yet finished.
  std::size_t live() const noexcept { return live_.load(std::memory_order_relaxed); }
  std::size_t threads() const noexcept { return threads_.size(); }

 private:
  void worker_main();
  void job_done() noexcept;

  executor_options options_;
  boost::fibers::buffered_channel<unique_task> inbox_;
  stack_pool stacks_;  // outlives every fiber: the threads are joined before it goes
  // live_ counts posted + running jobs; stop() waits for it to reach 0 (under done_mutex_).
  std::atomic<std::size_t> live_{0};
  boost::fibers::mutex done_mutex_;
  boost::fibers::condition_variable done_cv_;
  std::latch started_;  // a member, not a local: workers touch it after the constructor waits
  std::vector<std::thread> threads_;
  std::atomic<bool> stopped_{false};
};

}  // namespace qos

// A pool of plain OS threads for handlers that block (synchronous database drivers). A fiber
// calls run(): the work goes to a pool thread and the fiber parks on a fiber future, so its
// executor thread keeps serving other fibers. Threads start on demand, when work arrives and
// none is idle, up to max_threads, and then stay. Thread-safe.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#include <boost/fiber/future.hpp>

#include "qos/core/task.hpp"

namespace qos {

class blocking_pool {
 public:
  explicit blocking_pool(std::size_t max_threads);
  blocking_pool(const blocking_pool&) = delete;
  blocking_pool& operator=(const blocking_pool&) = delete;
  ~blocking_pool();  // stop()

  // Runs f on a pool thread and parks the calling fiber until it ends; returns its result or
  // rethrows its exception. Throws std::runtime_error when the pool is stopped, and
  // std::system_error when no thread could be started at all (f then never runs).
  template <class F>
  std::invoke_result_t<F&> run(F&& f);

  // Runs f on a pool thread; the returned fiber future yields its result or exception. Throws
  // std::runtime_error when the pool is stopped.
  template <class F>
  boost::fibers::future<std::invoke_result_t<F&>> post(F&& f);

  // Queues `task` to run on a pool thread, with nothing waiting for it (it must not throw).
  // False when the pool is stopped or no thread could be started at all: `task` is then left
  // as it was, with its caller.
  bool try_submit(unique_task& task) noexcept;

  // Finishes queued work, then joins the threads. Idempotent.
  void stop();
  // Threads started so far (never more than max_threads, unless it was lowered since).
  std::size_t threads() const;
  // Work queued or running now; 0 once every task submitted so far has returned.
  std::size_t busy() const;
  std::size_t max_threads() const;
  // Changes how many threads the pool may start (a config reload; 0 counts as 1). Raising it
  // lets queued work start at once; lowering it starts no more threads but stops none: the
  // ones started stay until stop(). Throws std::bad_alloc (changing nothing).
  void set_max_threads(std::size_t max_threads);

 private:
  // Moves `task` into the queue, or leaves it and returns false (stopped). Throws
  // std::system_error when no thread could be started at all, std::bad_alloc; `task` is then
  // left as it was.
  bool submit(unique_task& task);
  void worker_main();

  mutable std::mutex mutex_;
  std::size_t max_threads_;  // guarded by mutex_
  std::condition_variable cv_;
  std::deque<unique_task> queue_;     // guarded by mutex_
  std::size_t idle_ = 0;              // threads waiting for work; guarded by mutex_
  std::size_t running_ = 0;           // tasks running now; guarded by mutex_
  bool stopping_ = false;             // guarded by mutex_
  std::vector<std::thread> threads_;  // guarded by mutex_
};

template <class F>
boost::fibers::future<std::invoke_result_t<F&>> blocking_pool::post(F&& f) {
  using result = std::invoke_result_t<F&>;
  boost::fibers::packaged_task<result()> work(std::forward<F>(f));
  auto done = work.get_future();
  unique_task task([w = std::move(work)]() mutable { w(); });
  if (!submit(task)) {
    throw std::runtime_error("blocking pool stopped");
  }
  return done;
}

template <class F>
std::invoke_result_t<F&> blocking_pool::run(F&& f) {
  return post(std::forward<F>(f)).get();
}

}  // namespace qos

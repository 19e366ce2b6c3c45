// The blocking pool: blocking calls leave the executor's threads free; threads start on demand.
#include "qos/fiber/blocking_pool.hpp"

#include "qos/core/clock.hpp"
#include "support/eventually.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "qos/fiber/executor.hpp"

namespace qos {
namespace {

using test::eventually;

using namespace std::chrono_literals;

TEST(blocking_pool_test, blocking_work_runs_off_the_executor_threads) {
  executor ex({.threads = 1, .inbox = 64});
  blocking_pool pool(2);
  std::atomic<int> done{0};
  std::atomic<bool> other_fiber_ran{false};
  unique_task blocker([&] {
    // A blocking call on the pool must not freeze the single executor thread.
    const int v = pool.run([&] {
      std::this_thread::sleep_for(50ms);
      return 42;
    });
    EXPECT_EQ(v, 42);
    EXPECT_TRUE(other_fiber_ran.load());
    ++done;
  });
  unique_task other([&] {
    other_fiber_ran = true;
    ++done;
  });
  ASSERT_TRUE(ex.try_post(blocker));
  ASSERT_TRUE(ex.try_post(other));
  ASSERT_TRUE(eventually([&] { return done == 2; }));
  unique_task thrower([&] {
    EXPECT_THROW(pool.run([]() -> int { throw std::runtime_error("driver failed"); }),
                 std::runtime_error);
    ++done;
  });
  ASSERT_TRUE(ex.try_post(thrower));
  ASSERT_TRUE(eventually([&] { return done == 3; }));
  ex.stop();
}

TEST(blocking_pool_test, starts_threads_on_demand_up_to_its_max_and_runs_everything) {
  blocking_pool pool(3);
  EXPECT_EQ(pool.threads(), 0u);  // nothing started before the first work
  executor ex({.threads = 2, .inbox = 64});
  std::atomic<int> running{0}, peak{0}, done{0};
  std::atomic<bool> release{false};
  auto work = [&] {
    const int n = ++running;
    int seen = peak.load();
    while (n > seen && !peak.compare_exchange_weak(seen, n)) {
    }
    const auto until = clock::now() + 10s;
    while (!release && clock::now() < until) std::this_thread::sleep_for(1ms);
    --running;
    return 1;
  };
  std::vector<unique_task> tasks;
  for (int i = 0; i < 5; ++i) {
    tasks.emplace_back([&] { done += pool.run(work); });
    ASSERT_TRUE(ex.try_post(tasks.back()));
  }
  // Five blocked calls, three threads at most: three run, two wait in the pool's queue.
  ASSERT_TRUE(eventually([&] { return running == 3; }));
  EXPECT_EQ(pool.threads(), 3u);
  release = true;
  ASSERT_TRUE(eventually([&] { return done == 5; }));
  EXPECT_EQ(peak.load(), 3);
  EXPECT_EQ(pool.threads(), 3u);
  ex.stop();
  pool.stop();
  EXPECT_THROW(pool.run([] { return 0; }), std::runtime_error);
}

TEST(blocking_pool_test, try_submit_runs_a_task_apart_or_leaves_it_with_the_caller) {
  blocking_pool pool(1);
  std::atomic<bool> release{false};
  std::atomic<int> ran{0};
  unique_task first([&] {
    const auto until = clock::now() + 10s;
    while (!release && clock::now() < until) std::this_thread::sleep_for(1ms);
    ++ran;
  });
  unique_task second([&] { ++ran; });
  ASSERT_TRUE(pool.try_submit(first));
  ASSERT_TRUE(pool.try_submit(second));
  EXPECT_FALSE(first);                                        // taken by the pool
  ASSERT_TRUE(eventually([&] { return pool.busy() == 2; }));  // one runs, one waits behind it
  release = true;
  ASSERT_TRUE(eventually([&] { return pool.busy() == 0; }));
  EXPECT_EQ(ran.load(), 2);
  pool.stop();
  unique_task late([&] { ++ran; });
  EXPECT_FALSE(pool.try_submit(late));
  ASSERT_TRUE(late);  // still the caller's, to run or answer elsewhere
  late();
  EXPECT_EQ(ran.load(), 3);
}

}  // namespace
}  // namespace qos

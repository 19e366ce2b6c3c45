// The fiber layer with real fibers and real (short) time: parking, hand-off across threads,
// deadlines, shutdown. Deadline logic itself is covered by limiter_test with a manual clock.
#include "qos/fiber/fiber_limiter.hpp"
#include "support/eventually.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <boost/fiber/operations.hpp>

#include "qos/fiber/blocking_pool.hpp"
#include "qos/fiber/executor.hpp"

namespace qos {
namespace {

using test::eventually;

using namespace std::chrono_literals;

TEST(fiber_limiter_test, never_more_than_n_run_and_all_are_served) {
  executor ex({2, 1024, 64 * 1024});
  fiber_limiter lim({2, 100});
  std::atomic<int> running{0}, peak{0}, done{0};
  for (int i = 0; i < 12; ++i) {
    unique_task t([&] {
      auto r = lim.acquire(0, clock::now() + 10s, false);
      ASSERT_EQ(r.result, outcome::admitted);
      const int now = ++running;
      int seen = peak.load();
      while (now > seen && !peak.compare_exchange_weak(seen, now)) {
      }
      boost::this_fiber::sleep_for(5ms);
      --running;
      ++done;
    });
    ASSERT_TRUE(ex.try_post(t));
  }
  ASSERT_TRUE(eventually([&] { return done == 12; }));
  EXPECT_EQ(peak.load(), 2);
  ex.stop();
  EXPECT_EQ(lim.stats().in_use, 0u);
}

TEST(fiber_limiter_test, waiter_times_out_and_leaves_the_queue) {
  executor ex({2, 64, 64 * 1024});
  fiber_limiter lim({1, 10});
  auto held = lim.try_admit();
  ASSERT_EQ(held.kind, fiber_limiter::admit_kind::granted);
  std::atomic<int> result{-1};
  unique_task t([&] {
    auto r = lim.acquire(0, clock::now() + 30ms, false);
    result = static_cast<int>(r.result);
  });
  ASSERT_TRUE(ex.try_post(t));
  ASSERT_TRUE(eventually([&] { return result != -1; }));
  EXPECT_EQ(result, static_cast<int>(outcome::timed_out));
  EXPECT_EQ(lim.stats().waiting, 0u);
  held.permit.reset();
  EXPECT_EQ(lim.stats().in_use, 0u);
  ex.stop();
}

TEST(fiber_limiter_test, shutdown_wakes_every_waiter_and_refuses_newcomers) {
  executor ex({2, 64, 64 * 1024});
  fiber_limiter lim({1, 10});
  auto held = lim.try_admit();
  std::atomic<int> cancelled{0};
  for (int i = 0; i < 5; ++i) {
    unique_task t([&] {
      auto r = lim.acquire(0, clock::now() + 60s, false);
      if (r.result == outcome::shutting_down) ++cancelled;
    });
    ASSERT_TRUE(ex.try_post(t));
  }
  ASSERT_TRUE(eventually([&] { return lim.stats().waiting == 5; }));
  lim.shutdown();
  ASSERT_TRUE(eventually([&] { return cancelled == 5; }));
  EXPECT_EQ(lim.try_admit().kind, fiber_limiter::admit_kind::shutting_down);
  held.permit.reset();
  EXPECT_EQ(lim.stats().in_use, 0u);
  ex.stop();
}

TEST(fiber_limiter_test, codel_wakes_shed_waiters_with_their_outcome) {
  executor ex({2, 64, 64 * 1024});
  limiter_options o{1, 10};
  o.discipline = queue_discipline::codel;
  o.target = 1ms;
  o.interval = 20ms;
  fiber_limiter lim(o);
  auto held = lim.try_admit();
  std::atomic<int> shed{0}, admitted{0};
  for (int i = 0; i < 3; ++i) {
    unique_task t([&] {
      auto r = lim.acquire(0, clock::now() + 10s, false);
      if (r.result == outcome::shed) ++shed;
      if (r.result == outcome::admitted) ++admitted;
    });
    ASSERT_TRUE(ex.try_post(t));
  }
  ASSERT_TRUE(eventually([&] { return lim.stats().waiting == 3; }));
  std::this_thread::sleep_for(30ms);  // a standing queue, every waiter past the target
  held.permit.reset();
  ASSERT_TRUE(eventually([&] { return shed == 3; }));
  EXPECT_EQ(admitted.load(), 0);
  EXPECT_EQ(lim.stats().in_use, 0u);
  ex.stop();
}

TEST(fiber_limiter_test, blocking_work_runs_off_the_executor_threads) {
  executor ex({1, 64, 64 * 1024});
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
  executor ex({2, 64, 64 * 1024});
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

TEST(executor_test, full_inbox_refuses_without_consuming_the_job) {
  executor ex({1, 2, 64 * 1024});
  fiber_limiter gate_lim({1, 10});
  auto held = gate_lim.try_admit();
  std::atomic<int> started{0};
  // Occupy the worker's fibers so the inbox fills: each job parks on the limiter.
  int refused = 0;
  for (int i = 0; i < 64; ++i) {
    unique_task t([&] {
      ++started;
      (void)gate_lim.acquire(0, clock::now() + 50ms, false);
    });
    if (!ex.try_post(t)) {
      EXPECT_TRUE(static_cast<bool>(t));
      ++refused;
    }
  }
  held.permit.reset();
  ex.stop();
  EXPECT_EQ(started.load() + refused, 64);
  EXPECT_EQ(ex.live(), 0u);
}

}  // namespace
}  // namespace qos

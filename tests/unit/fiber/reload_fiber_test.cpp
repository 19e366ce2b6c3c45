// A reload with real parked fibers and real threads: a raised limit wakes exactly the fibers it
// admits, a lowered one stops no running fiber, and a blocking pool grows with the limit.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <latch>
#include <thread>
#include <vector>

#include <boost/fiber/operations.hpp>

#include "qos/fiber/blocking_pool.hpp"
#include "qos/fiber/executor.hpp"
#include "qos/fiber/fiber_limiter.hpp"
#include "support/eventually.hpp"

namespace qos {
namespace {

using test::eventually;

using namespace std::chrono_literals;

// `n` fibers that each take a unit of `lim`, count themselves running and hold it while *hold.
struct workers {
  std::atomic<int> running{0}, peak{0}, done{0};
  std::atomic<bool> hold{true};

  void start(executor& ex, fiber_limiter& lim, int n) {
    for (int i = 0; i < n; ++i) {
      unique_task t([this, &lim] {
        auto r = lim.acquire(0, clock::now() + 20s);
        ASSERT_EQ(r.result, outcome::admitted);
        const int now = ++running;
        int seen = peak.load();
        while (now > seen && !peak.compare_exchange_weak(seen, now)) {
        }
        while (hold.load()) boost::this_fiber::sleep_for(1ms);
        --running;
        ++done;
      });
      ASSERT_TRUE(ex.try_post(t));
    }
  }
};

TEST(reload_fiber_test, a_raised_limit_wakes_exactly_the_parked_fibers_it_admits) {
  executor ex({.threads = 2, .inbox = 64});
  fiber_limiter lim({.max_concurrent = 2, .max_queue = 100}, std::nullopt);
  workers w;
  w.start(ex, lim, 10);
  ASSERT_TRUE(eventually([&] { return w.running == 2 && lim.stats().waiting == 8; }));

  lim.reconfigure({.max_concurrent = 5, .max_queue = 100}, std::nullopt);
  ASSERT_TRUE(eventually([&] { return w.running == 5; }));
  std::this_thread::sleep_for(20ms);  // nothing more comes
  EXPECT_EQ(w.running.load(), 5);
  EXPECT_EQ(lim.stats().in_use, 5u);
  EXPECT_EQ(lim.stats().waiting, 5u);

  w.hold = false;
  ASSERT_TRUE(eventually([&] { return w.done == 10; }));
  EXPECT_EQ(w.peak.load(), 5);
  ex.stop();
  EXPECT_EQ(lim.stats().in_use, 0u);
}

TEST(reload_fiber_test, a_lowered_limit_lets_running_fibers_finish_and_then_holds) {
  executor ex({.threads = 2, .inbox = 64});
  fiber_limiter lim({.max_concurrent = 4, .max_queue = 100}, std::nullopt);
  workers first;
  first.start(ex, lim, 4);
  ASSERT_TRUE(eventually([&] { return first.running == 4; }));

  lim.reconfigure({.max_concurrent = 1, .max_queue = 100}, std::nullopt);
  EXPECT_EQ(lim.stats().in_use, 4u);  // nothing revoked
  workers second;
  second.hold = false;
  second.start(ex, lim, 6);
  ASSERT_TRUE(eventually([&] { return lim.stats().waiting == 6; }));
  EXPECT_EQ(first.running.load(), 4);

  first.hold = false;
  ASSERT_TRUE(eventually([&] { return second.done == 6; }));
  EXPECT_EQ(first.done.load(), 4);
  EXPECT_EQ(second.peak.load(), 1);  // once the old permits came back, one at a time
  ex.stop();
  EXPECT_EQ(lim.stats().in_use, 0u);
}

TEST(reload_fiber_test, an_adaptive_limit_can_replace_a_fixed_one_while_fibers_wait) {
  executor ex({.threads = 2, .inbox = 64});
  fiber_limiter lim({.max_concurrent = 1, .max_queue = 100}, std::nullopt);
  workers w;
  w.start(ex, lim, 4);
  ASSERT_TRUE(eventually([&] { return w.running == 1 && lim.stats().waiting == 3; }));
  const limit_options vegas{.kind = limit_kind::vegas, .min = 1, .max = 8, .initial = 3};
  lim.reconfigure({.max_concurrent = 1, .max_queue = 100}, vegas);
  ASSERT_TRUE(eventually([&] { return w.running == 3; }));
  EXPECT_TRUE(lim.stats().adaptive);
  EXPECT_EQ(lim.stats().limit, 3u);

  limit_options bad = vegas;
  bad.initial = 20;  // above max: refused before anything changes
  EXPECT_THROW(lim.reconfigure({.max_concurrent = 1, .max_queue = 100}, bad),
               std::invalid_argument);
  EXPECT_EQ(lim.stats().limit, 3u);

  w.hold = false;
  ASSERT_TRUE(eventually([&] { return w.done == 4; }));
  ex.stop();
}

TEST(reload_fiber_test, a_raised_pool_size_starts_threads_for_work_already_queued) {
  blocking_pool pool(1);
  std::latch all_in(3);
  std::atomic<int> finished{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < 3; ++i) {
    callers.emplace_back([&] {
      pool.run([&] {
        all_in.count_down();
        all_in.wait();  // returns only once three run at the same time
        ++finished;
      });
    });
  }
  ASSERT_TRUE(eventually([&] { return pool.threads() == 1; }));
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(finished.load(), 0);  // one thread: the three cannot meet
  pool.set_max_threads(3);
  EXPECT_EQ(pool.max_threads(), 3u);
  ASSERT_TRUE(eventually([&] { return finished == 3; }));
  EXPECT_EQ(pool.threads(), 3u);
  for (auto& c : callers) c.join();

  pool.set_max_threads(1);  // lowered: the threads started stay, work still runs
  EXPECT_EQ(pool.threads(), 3u);
  EXPECT_EQ(pool.run([] { return 7; }), 7);
}

}  // namespace
}  // namespace qos

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

#include "qos/fiber/executor.hpp"

namespace qos {
namespace {

using test::eventually;

using namespace std::chrono_literals;

TEST(fiber_limiter_test, never_more_than_n_run_and_all_are_served) {
  executor ex({.threads = 2, .inbox = 1024});
  fiber_limiter lim({.max_concurrent = 2, .max_queue = 100});
  std::atomic<int> running{0}, peak{0}, done{0};
  for (int i = 0; i < 12; ++i) {
    unique_task t([&] {
      auto r = lim.acquire(0, clock::now() + 10s);
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
  executor ex({.threads = 2, .inbox = 64});
  fiber_limiter lim({.max_concurrent = 1, .max_queue = 10});
  auto held = lim.try_admit();
  ASSERT_EQ(held.kind, fiber_limiter::admit_kind::granted);
  std::atomic<int> result{-1};
  unique_task t([&] {
    auto r = lim.acquire(0, clock::now() + 30ms);
    result = static_cast<int>(r.result);
  });
  ASSERT_TRUE(ex.try_post(t));
  ASSERT_TRUE(eventually([&] { return result != -1; }));
  EXPECT_EQ(result, static_cast<int>(outcome::timeout));
  EXPECT_EQ(lim.stats().waiting, 0u);
  held.permit.reset();
  EXPECT_EQ(lim.stats().in_use, 0u);
  ex.stop();
}

TEST(fiber_limiter_test, shutdown_wakes_every_waiter_and_refuses_newcomers) {
  executor ex({.threads = 2, .inbox = 64});
  fiber_limiter lim({.max_concurrent = 1, .max_queue = 10});
  auto held = lim.try_admit();
  std::atomic<int> cancelled{0};
  for (int i = 0; i < 5; ++i) {
    unique_task t([&] {
      auto r = lim.acquire(0, clock::now() + 60s);
      if (r.result == outcome::shutdown) ++cancelled;
    });
    ASSERT_TRUE(ex.try_post(t));
  }
  ASSERT_TRUE(eventually([&] { return lim.stats().waiting == 5; }));
  lim.shutdown();
  ASSERT_TRUE(eventually([&] { return cancelled == 5; }));
  EXPECT_EQ(lim.try_admit().kind, fiber_limiter::admit_kind::shutdown);
  held.permit.reset();
  EXPECT_EQ(lim.stats().in_use, 0u);
  ex.stop();
}

TEST(fiber_limiter_test, codel_wakes_shed_waiters_with_their_outcome) {
  executor ex({.threads = 2, .inbox = 64});
  limiter_options o{1, 10};
  o.discipline = queue_discipline::codel;
  o.target = 1ms;
  o.interval = 20ms;
  fiber_limiter lim(o);
  auto held = lim.try_admit();
  std::atomic<int> shed{0}, admitted{0};
  for (int i = 0; i < 3; ++i) {
    unique_task t([&] {
      auto r = lim.acquire(0, clock::now() + 10s);
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

// Takes every grant it is offered, on the granting thread, and keeps the permit.
struct taking_hook final : fiber_limiter::grant_hook {
  void on_grant(permit& granted) noexcept override {
    thread = std::this_thread::get_id();
    kept = std::move(granted);
    ++calls;
  }
  std::atomic<std::thread::id> thread{};
  std::atomic<int> calls{0};
  permit kept;
};

// Offered the grant, leaves it to the fiber.
struct declining_hook final : fiber_limiter::grant_hook {
  void on_grant(permit&) noexcept override { ++calls; }
  std::atomic<int> calls{0};
};

TEST(fiber_limiter_test, a_grant_hook_takes_the_permit_on_the_thread_that_releases_it) {
  executor ex({.threads = 2, .inbox = 64});
  fiber_limiter lim({.max_concurrent = 1, .max_queue = 10});
  auto held = lim.try_admit();
  ASSERT_EQ(held.kind, fiber_limiter::admit_kind::granted);
  taking_hook hook;
  std::atomic<int> result{-1};
  std::atomic<bool> taken{false}, had_permit{true};
  unique_task t([&] {
    auto r = lim.acquire(0, clock::now() + 10s, 1, &hook);
    taken = r.taken;
    had_permit = static_cast<bool>(r.permit);
    result = static_cast<int>(r.result);
  });
  ASSERT_TRUE(ex.try_post(t));
  ASSERT_TRUE(eventually([&] { return lim.stats().waiting == 1; }));
  EXPECT_EQ(hook.calls.load(), 0);
  held.permit.reset();
  // Called by the release itself, before it returns: the permit changed hands here.
  EXPECT_EQ(hook.calls.load(), 1);
  EXPECT_EQ(hook.thread.load(), std::this_thread::get_id());
  ASSERT_TRUE(eventually([&] { return result != -1; }));
  EXPECT_EQ(result, static_cast<int>(outcome::admitted));
  EXPECT_TRUE(taken.load());
  EXPECT_FALSE(had_permit.load());
  EXPECT_EQ(lim.stats().in_use, 1u);  // the hook holds it
  hook.kept.reset();
  EXPECT_EQ(lim.stats().in_use, 0u);
  ex.stop();
}

TEST(fiber_limiter_test, a_grant_left_by_the_hook_goes_to_the_fiber_and_others_never_call_it) {
  executor ex({.threads = 2, .inbox = 64});
  fiber_limiter lim({.max_concurrent = 1, .max_queue = 10});
  declining_hook hook;
  std::atomic<int> done{0}, admitted{0}, timed_out{0}, cancelled{0};
  auto wait_with_hook = [&](duration budget) {
    unique_task t([&, budget] {
      auto r = lim.acquire(0, clock::now() + budget, 1, &hook);
      EXPECT_FALSE(r.taken);
      if (r.result == outcome::admitted) {
        EXPECT_TRUE(r.permit);
        ++admitted;
      }
      if (r.result == outcome::timeout) ++timed_out;
      if (r.result == outcome::shutdown) ++cancelled;
      ++done;
    });
    ASSERT_TRUE(ex.try_post(t));
  };
  // Granted at once, without parking: the hook is not asked.
  wait_with_hook(10s);
  ASSERT_TRUE(eventually([&] { return done == 1; }));
  EXPECT_EQ(admitted.load(), 1);
  EXPECT_EQ(hook.calls.load(), 0);
  auto held = lim.try_admit();
  ASSERT_EQ(held.kind, fiber_limiter::admit_kind::granted);
  // A timeout and a shutdown are not grants.
  wait_with_hook(20ms);
  ASSERT_TRUE(eventually([&] { return done == 2; }));
  EXPECT_EQ(timed_out.load(), 1);
  // Granted after parking: offered to the hook, which leaves it.
  wait_with_hook(10s);
  ASSERT_TRUE(eventually([&] { return lim.stats().waiting == 1; }));
  held.permit.reset();
  ASSERT_TRUE(eventually([&] { return done == 3; }));
  EXPECT_EQ(admitted.load(), 2);
  EXPECT_EQ(hook.calls.load(), 1);
  EXPECT_EQ(lim.stats().in_use, 0u);  // the fiber had it, and gave it back
  held = lim.try_admit();
  wait_with_hook(60s);
  ASSERT_TRUE(eventually([&] { return lim.stats().waiting == 1; }));
  lim.shutdown();
  ASSERT_TRUE(eventually([&] { return done == 4; }));
  EXPECT_EQ(cancelled.load(), 1);
  EXPECT_EQ(hook.calls.load(), 1);
  held.permit.reset();
  ex.stop();
}

}  // namespace
}  // namespace qos

// The policy state of a group without threads or fibers: service-time average, predicted wait,
// adaptive limit moves that grant waiters, driven by a manual clock.
#include "qos/core/group_controller.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "qos/core/ticket.hpp"

namespace qos {
namespace {

using namespace std::chrono_literals;

std::vector<waiter*> drain(waiter_list& l) {
  std::vector<waiter*> out;
  l.for_each([&](waiter& w) { out.push_back(&w); });
  return out;
}

TEST(group_controller_test, learns_the_service_time_from_served_requests_only) {
  group_controller c({.max_concurrent = 2});
  EXPECT_EQ(c.service_time(), duration::zero());  // no sample yet
  waiter_list woken;
  c.on_served(50ms, false, time_point{}, woken);
  EXPECT_EQ(c.service_time(), 50ms);  // the first sample is the average
  for (int i = 0; i < 200; ++i) c.on_served(10ms, false, time_point{}, woken);
  const double ms = std::chrono::duration<double, std::milli>(c.service_time()).count();
  EXPECT_NEAR(ms, 10.0, 0.1);
  EXPECT_TRUE(woken.empty());
}

TEST(group_controller_test, predicts_the_wait_of_a_queued_request_by_littles_law) {
  group_controller c({.max_concurrent = 2, .max_queue = 10});
  waiter_list woken;
  c.on_served(40ms, false, time_point{}, woken);
  EXPECT_TRUE(c.limiter().try_acquire());
  EXPECT_TRUE(c.limiter().try_acquire());
  // Three places held: the three leave at 2 per 40 ms.
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(c.limiter().try_reserve());
  EXPECT_EQ(c.estimate_wait(0), 60ms);
  for (int i = 0; i < 3; ++i) c.limiter().cancel_reservation();
}

TEST(group_controller_test, a_raised_adaptive_limit_grants_waiters_into_the_list) {
  const limit_options aimd{
      .kind = limit_kind::aimd, .min = 1, .max = 10, .initial = 1, .timeout = 1s};
  group_controller c({.max_concurrent = 1, .max_queue = 10}, make_limit_algorithm(aimd));
  EXPECT_EQ(c.stats().limit, 1u);
  ASSERT_TRUE(c.limiter().try_acquire());
  waiter a, b;
  const time_point t0{};
  ASSERT_EQ(c.limiter().enqueue(a, {.deadline = t0 + 1h, .now = t0}, false),
            limiter::enqueue_result::queued);
  ASSERT_EQ(c.limiter().enqueue(b, {.deadline = t0 + 1h, .now = t0}, false),
            limiter::enqueue_result::queued);
  // One window of fast samples under full use raises the limit by one: `a` is granted.
  waiter_list woken;
  c.on_served(5ms, false, t0 + 5ms, woken);
  EXPECT_EQ(c.stats().limit, 2u);
  EXPECT_EQ(drain(woken), std::vector<waiter*>{&a});
  EXPECT_EQ(a.state(), waiter_state::granted);
  EXPECT_EQ(b.state(), waiter_state::waiting);
  EXPECT_TRUE(c.limiter().remove(b, waiter_state::cancelled));
}

TEST(waiter_list_test, keeps_push_order_and_lets_the_callback_end_a_waiter) {
  waiter a, b, c;
  waiter_list l;
  l.push(a);
  l.push(b);
  l.push(c);
  EXPECT_EQ(drain(l), (std::vector<waiter*>{&a, &b, &c}));
  EXPECT_TRUE(l.empty());
  l.push(b);  // reusable once drained
  EXPECT_EQ(drain(l), std::vector<waiter*>{&b});
}

struct counting_source final : ticket_source {
  int cancelled = 0;
  void cancel_ticket() noexcept override { ++cancelled; }
};

TEST(ticket_test, gives_its_place_back_once_unless_consumed) {
  counting_source s;
  {
    ticket t(s);
    ticket moved = std::move(t);
    EXPECT_FALSE(t);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
    EXPECT_TRUE(moved);
  }
  EXPECT_EQ(s.cancelled, 1);
  {
    ticket t(s);
    t.consume();
  }
  EXPECT_EQ(s.cancelled, 1);
  ticket t(s);
  t.reset();
  t.reset();
  EXPECT_EQ(s.cancelled, 2);
}

}  // namespace
}  // namespace qos

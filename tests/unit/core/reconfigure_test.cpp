// A config reload as the core sees it (limiter::reconfigure, group_controller::reconfigure),
// driven by a manual clock with no threads: nobody queued is dropped, no held unit revoked, a
// raised limit grants exactly the units it adds, in order, and the new settings rule every
// decision after.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <vector>

#include "qos/core/group_controller.hpp"
#include "qos/core/limiter.hpp"

namespace qos {
namespace {

using namespace std::chrono_literals;

class reconfigure_test : public ::testing::Test {
 protected:
  // Queues `w` at `level` now, with a deadline far away.
  void queue(limiter& l, waiter& w, priority level = 0) {
    ASSERT_EQ(
        l.enqueue(w, {.level = level, .deadline = clock_.now() + 1h, .now = clock_.now()}, false),
        limiter::enqueue_result::queued);
  }
  // Applies `o`; the waiters it took out of the queue, in order.
  std::vector<waiter*> reconfigure(limiter& l, const limiter_options& o) {
    std::vector<waiter*> changed;
    l.reconfigure(o, clock_.now(), [&](waiter& w) { changed.push_back(&w); });
    return changed;
  }
  std::vector<waiter*> release(limiter& l) {
    std::vector<waiter*> changed;
    l.release(1, clock_.now(), [&](waiter& w) { changed.push_back(&w); });
    return changed;
  }
  // Gives back every unit and lets the queue drain, so that no waiter is left queued.
  void finish(limiter& l) {
    while (l.in_use() > 0) release(l);
    EXPECT_EQ(l.waiting(), 0u);
  }
  manual_clock clock_;
};

TEST_F(reconfigure_test, a_raised_limit_grants_exactly_the_new_units_by_priority_then_fifo) {
  limiter l({.max_concurrent = 2, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire());
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 6> w;
  const priority levels[] = {1, 5, 1, 5, 3, 0};
  for (std::size_t i = 0; i < w.size(); ++i) queue(l, w[i], levels[i]);

  const auto granted = reconfigure(l, {.max_concurrent = 5, .max_queue = 10});
  const std::vector<waiter*> expected = {&w[1], &w[3], &w[4]};
  EXPECT_EQ(granted, expected);
  for (waiter* g : granted) EXPECT_EQ(g->state(), waiter_state::granted);
  EXPECT_EQ(l.in_use(), 5u);
  EXPECT_EQ(l.limit(), 5u);
  // The rest kept their places: the next releases serve them in the same order.
  EXPECT_EQ(release(l), std::vector<waiter*>{&w[0]});
  EXPECT_EQ(release(l), std::vector<waiter*>{&w[2]});
  EXPECT_EQ(release(l), std::vector<waiter*>{&w[5]});
  finish(l);
}

TEST_F(reconfigure_test, a_lowered_limit_revokes_nothing_and_holds_once_units_came_back) {
  limiter l({.max_concurrent = 4, .max_queue = 10});
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 3> w;
  for (auto& x : w) queue(l, x);

  EXPECT_TRUE(reconfigure(l, {.max_concurrent = 2, .max_queue = 10}).empty());
  EXPECT_EQ(l.in_use(), 4u);  // running handlers keep their permits
  EXPECT_EQ(l.waiting(), 3u);
  EXPECT_FALSE(l.try_acquire());
  // 4 -> 3 -> 2: over or at the new limit, nobody is granted.
  EXPECT_TRUE(release(l).empty());
  EXPECT_TRUE(release(l).empty());
  EXPECT_EQ(l.in_use(), 2u);
  // From here each unit back goes to the next waiter, and never more than 2 are out.
  EXPECT_EQ(release(l), std::vector<waiter*>{&w[0]});
  EXPECT_EQ(l.in_use(), 2u);
  EXPECT_EQ(release(l), std::vector<waiter*>{&w[1]});
  EXPECT_EQ(release(l), std::vector<waiter*>{&w[2]});
  EXPECT_EQ(l.in_use(), 2u);
  finish(l);
}

TEST_F(reconfigure_test, a_lowered_max_queue_keeps_every_waiter_and_refuses_newcomers) {
  limiter l({.max_concurrent = 1, .max_queue = 5});
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 4> w;
  for (auto& x : w) queue(l, x);
  ASSERT_TRUE(l.try_reserve());  // a ticket taken under the old cap stays valid

  EXPECT_TRUE(reconfigure(l, {.max_concurrent = 1, .max_queue = 2}).empty());
  EXPECT_EQ(l.waiting(), 4u);
  EXPECT_EQ(l.max_queue(), 2u);
  for (const auto& x : w) EXPECT_EQ(x.state(), waiter_state::waiting);
  EXPECT_FALSE(l.try_reserve());
  waiter late;
  EXPECT_EQ(l.enqueue(late, {.deadline = clock_.now() + 1h, .now = clock_.now()}, false),
            limiter::enqueue_result::queue_full);
  waiter reserved;
  EXPECT_EQ(l.enqueue(reserved, {.deadline = clock_.now() + 1h, .now = clock_.now()}, true),
            limiter::enqueue_result::queued);
  // They leave in their order; once fewer than 2 wait, newcomers queue again.
  EXPECT_EQ(release(l), std::vector<waiter*>{&w[0]});
  EXPECT_EQ(release(l), std::vector<waiter*>{&w[1]});
  EXPECT_EQ(release(l), std::vector<waiter*>{&w[2]});
  EXPECT_FALSE(l.try_reserve());  // w[3] and `reserved` still wait: 2 of 2
  EXPECT_EQ(release(l), std::vector<waiter*>{&w[3]});
  EXPECT_TRUE(l.try_reserve());
  l.cancel_reservation();
  finish(l);
}

TEST_F(reconfigure_test, a_new_reserve_keeps_the_headroom_from_lower_levels_at_once) {
  limiter l({.max_concurrent = 3, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire(1, 0));
  EXPECT_TRUE(
      reconfigure(l, {.max_concurrent = 3, .max_queue = 10, .reserve = 1, .reserve_level = 8})
          .empty());
  EXPECT_TRUE(l.try_acquire(1, 0));
  EXPECT_FALSE(l.try_acquire(1, 0));  // the last unit is the headroom
  EXPECT_TRUE(l.try_acquire(1, 8));
  finish(l);
}

TEST_F(reconfigure_test, a_removed_reserve_grants_the_low_waiter_it_held_back) {
  limiter l({.max_concurrent = 2, .max_queue = 10, .reserve = 1, .reserve_level = 8});
  ASSERT_TRUE(l.try_acquire(1, 0));
  waiter low;
  queue(l, low, 0);  // one unit is free, but it is the headroom
  EXPECT_EQ(reconfigure(l, {.max_concurrent = 2, .max_queue = 10}), std::vector<waiter*>{&low});
  EXPECT_EQ(l.in_use(), 2u);
  finish(l);
}

TEST_F(reconfigure_test, aging_turned_on_lets_a_long_waiting_low_level_go_first) {
  limiter l({.max_concurrent = 1, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire());
  waiter low, high;
  queue(l, low, 0);
  clock_.advance(50ms);
  queue(l, high, 3);
  EXPECT_TRUE(reconfigure(l, {.max_concurrent = 1, .max_queue = 10, .aging_step = 10ms}).empty());
  // 50 ms at one level per 10 ms: level 0 claims 5, above 3.
  EXPECT_EQ(release(l), std::vector<waiter*>{&low});
  EXPECT_EQ(release(l), std::vector<waiter*>{&high});
  finish(l);
}

TEST_F(reconfigure_test, a_switch_to_adaptive_lifo_judges_a_queue_that_already_stands) {
  limiter l({.max_concurrent = 1, .max_queue = 10, .interval = 100ms});
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 3> w;
  for (auto& x : w) queue(l, x);
  clock_.advance(150ms);  // queued for longer than the interval
  EXPECT_TRUE(reconfigure(l, {.max_concurrent = 1,
                              .max_queue = 10,
                              .discipline = queue_discipline::adaptive_lifo,
                              .interval = 100ms})
                  .empty());
  EXPECT_EQ(release(l), std::vector<waiter*>{&w[2]});  // newest first
  finish(l);
}

TEST_F(reconfigure_test, a_switch_to_codel_sheds_nobody_until_a_unit_is_handed_on) {
  limiter l({.max_concurrent = 1, .max_queue = 10, .target = 5ms, .interval = 100ms});
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 2> w;
  for (auto& x : w) queue(l, x);
  clock_.advance(150ms);
  const limiter_options codel{.max_concurrent = 1,
                              .max_queue = 10,
                              .discipline = queue_discipline::codel,
                              .target = 5ms,
                              .interval = 100ms};
  EXPECT_TRUE(reconfigure(l, codel).empty());  // the reload itself drops nobody
  EXPECT_EQ(l.waiting(), 2u);
  // At the next hand-off the new discipline does its work: both waited past the target.
  const auto changed = release(l);
  EXPECT_EQ(changed.size(), 2u);
  for (waiter* x : changed) EXPECT_EQ(x->state(), waiter_state::shed);
  EXPECT_EQ(l.in_use(), 0u);
}

TEST_F(reconfigure_test, a_raised_limit_with_a_waiter_too_costly_serves_nobody_past_it) {
  limiter l({.max_concurrent = 2, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire(2));
  waiter heavy, light;
  ASSERT_EQ(
      l.enqueue(heavy, {.deadline = clock_.now() + 1h, .now = clock_.now(), .cost = 2}, false),
      limiter::enqueue_result::queued);
  queue(l, light);
  // Strict order holds across a reload: 1 unit free, the head needs 2.
  EXPECT_TRUE(reconfigure(l, {.max_concurrent = 3, .max_queue = 10}).empty());
  EXPECT_EQ(l.in_use(), 2u);
  l.release(2, clock_.now(), [](waiter&) {});
  EXPECT_EQ(heavy.state(), waiter_state::granted);
  EXPECT_EQ(light.state(), waiter_state::granted);
  l.release(2, clock_.now(), [](waiter&) {});
  l.release(1, clock_.now(), [](waiter&) {});
}

// --- group_controller: the limit policy -----------------------------------------------------

const limit_options aimd{.kind = limit_kind::aimd, .min = 1, .max = 10, .initial = 2};

std::vector<waiter*> drain(waiter_list& l) {
  std::vector<waiter*> out;
  l.for_each([&](waiter& w) { out.push_back(&w); });
  return out;
}

TEST_F(reconfigure_test, fixed_to_adaptive_starts_at_initial_and_back_to_fixed) {
  group_controller c({.max_concurrent = 1, .max_queue = 10});
  ASSERT_TRUE(c.limiter().try_acquire());
  std::array<waiter, 3> w;
  for (auto& x : w) queue(c.limiter(), x);
  waiter_list woken;
  c.reconfigure({.max_concurrent = 1, .max_queue = 10}, aimd, make_limit_algorithm(aimd),
                clock_.now(), woken);
  EXPECT_TRUE(c.adaptive());
  EXPECT_EQ(c.stats().limit, 2u);
  EXPECT_EQ(drain(woken), std::vector<waiter*>{&w[0]});

  c.reconfigure({.max_concurrent = 3, .max_queue = 10}, std::nullopt, nullptr, clock_.now(), woken);
  EXPECT_FALSE(c.adaptive());
  EXPECT_EQ(c.stats().limit, 3u);
  EXPECT_EQ(drain(woken), std::vector<waiter*>{&w[1]});
  finish(c.limiter());
}

TEST_F(reconfigure_test, unchanged_adaptive_settings_keep_what_the_algorithm_learnt) {
  group_controller c({.max_concurrent = 2, .max_queue = 10}, aimd, make_limit_algorithm(aimd));
  ASSERT_EQ(c.stats().limit, 2u);
  // One window (2 samples) of fast samples at full use: AIMD adds one.
  waiter_list woken;
  ASSERT_TRUE(c.limiter().try_acquire());
  ASSERT_TRUE(c.limiter().try_acquire());
  c.on_served(5ms, false, clock_.now(), woken);
  c.on_served(5ms, false, clock_.now(), woken);
  ASSERT_EQ(c.stats().limit, 3u);

  // Another max_queue, the same limit settings: the learnt 3 stays.
  c.reconfigure({.max_concurrent = 2, .max_queue = 4}, aimd, make_limit_algorithm(aimd),
                clock_.now(), woken);
  EXPECT_EQ(c.stats().limit, 3u);
  EXPECT_EQ(c.stats().max_queue, 4u);

  // Other limit settings: a new algorithm, from its initial.
  limit_options wider = aimd;
  wider.max = 20;
  c.reconfigure({.max_concurrent = 2, .max_queue = 4}, wider, make_limit_algorithm(wider),
                clock_.now(), woken);
  EXPECT_EQ(c.stats().limit, 2u);
  EXPECT_TRUE(woken.empty());
  finish(c.limiter());
}

TEST_F(reconfigure_test, the_service_time_average_survives_a_reload) {
  group_controller c({.max_concurrent = 2, .max_queue = 10});
  waiter_list woken;
  c.on_served(40ms, false, clock_.now(), woken);
  c.reconfigure({.max_concurrent = 4, .max_queue = 10}, std::nullopt, nullptr, clock_.now(), woken);
  EXPECT_EQ(c.service_time(), 40ms);
}

}  // namespace
}  // namespace qos

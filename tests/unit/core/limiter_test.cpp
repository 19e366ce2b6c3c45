// The core state machine, driven by a manual clock with no threads and no sleeps.
#include "qos/core/limiter.hpp"

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <memory>
#include <vector>

#include "qos/core/permit.hpp"

namespace qos {
namespace {

using namespace std::chrono_literals;

class limiter_test : public ::testing::Test {
 protected:
  // Returns one unit; the waiter it went to (at most one with unit costs), or nullptr.
  waiter* release(limiter& l) {
    std::vector<waiter*> changed;
    l.release(1, clock_.now(), [&](waiter& w) { changed.push_back(&w); });
    EXPECT_LE(changed.size(), 1u);
    return changed.empty() ? nullptr : changed.front();
  }
  manual_clock clock_;
};

TEST_F(limiter_test, grants_at_most_max_concurrent) {
  limiter l({.max_concurrent = 3, .max_queue = 10});
  EXPECT_TRUE(l.try_acquire());
  EXPECT_TRUE(l.try_acquire());
  EXPECT_TRUE(l.try_acquire());
  EXPECT_FALSE(l.try_acquire());
  EXPECT_EQ(l.in_use(), 3u);
  EXPECT_EQ(release(l), nullptr);
  EXPECT_EQ(l.in_use(), 2u);
  EXPECT_TRUE(l.try_acquire());
  for (int i = 0; i < 3; ++i) release(l);
  EXPECT_EQ(l.in_use(), 0u);
}

TEST_F(limiter_test, enqueue_grants_when_free) {
  limiter l({.max_concurrent = 1, .max_queue = 10});
  waiter w;
  EXPECT_EQ(l.enqueue(w, {.deadline = clock_.now() + 1s, .now = clock_.now()}, false),
            limiter::enqueue_result::granted);
  EXPECT_EQ(w.state(), waiter_state::granted);
  EXPECT_EQ(l.in_use(), 1u);
  release(l);
}

TEST_F(limiter_test, release_serves_highest_priority_first_fifo_within_level) {
  limiter l({.max_concurrent = 1, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 5> w;
  const priority levels[] = {1, 5, 1, 5, 3};
  for (std::size_t i = 0; i < w.size(); ++i) {
    ASSERT_EQ(
        l.enqueue(w[i], {.level = levels[i], .deadline = clock_.now() + 10s, .now = clock_.now()},
                  false),
        limiter::enqueue_result::queued);
  }
  std::vector<waiter*> order;
  while (waiter* next = release(l)) {
    EXPECT_EQ(next->state(), waiter_state::granted);
    order.push_back(next);
  }
  const std::vector<waiter*> expected = {&w[1], &w[3], &w[4], &w[0], &w[2]};
  EXPECT_EQ(order, expected);
  EXPECT_EQ(l.in_use(), 0u);
}

TEST_F(limiter_test, release_hands_permit_directly_so_newcomers_cannot_barge) {
  limiter l({.max_concurrent = 1, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire());
  waiter w;
  ASSERT_EQ(l.enqueue(w, {.deadline = clock_.now() + 1s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  EXPECT_EQ(release(l), &w);
  // The permit moved to w: still in use, a newcomer of any priority gets nothing.
  EXPECT_EQ(l.in_use(), 1u);
  EXPECT_FALSE(l.try_acquire());
  waiter high;
  EXPECT_EQ(
      l.enqueue(high, {.level = max_priority, .deadline = clock_.now() + 1s, .now = clock_.now()},
                false),
      limiter::enqueue_result::queued);
  EXPECT_EQ(release(l), &high);
  EXPECT_EQ(release(l), nullptr);
}

TEST_F(limiter_test, newcomer_does_not_take_a_permit_while_reservations_are_pending) {
  limiter l({.max_concurrent = 1, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire());
  ASSERT_TRUE(l.try_reserve());
  EXPECT_EQ(release(l), nullptr);  // nobody queued yet: the permit is free
  EXPECT_FALSE(l.try_acquire());   // but the reserved request came first
  waiter w;
  EXPECT_EQ(l.enqueue(w, {.deadline = clock_.now() + 1s, .now = clock_.now()}, true),
            limiter::enqueue_result::granted);
  EXPECT_EQ(l.reserved(), 0u);
  release(l);
}

TEST_F(limiter_test, queue_cap_counts_waiters_and_reservations) {
  limiter l({.max_concurrent = 1, .max_queue = 2});
  ASSERT_TRUE(l.try_acquire());
  waiter a;
  ASSERT_EQ(l.enqueue(a, {.deadline = clock_.now() + 1s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  ASSERT_TRUE(l.try_reserve());
  EXPECT_FALSE(l.try_reserve());
  waiter b;
  EXPECT_EQ(l.enqueue(b, {.level = 9, .deadline = clock_.now() + 1s, .now = clock_.now()}, false),
            limiter::enqueue_result::queue_full);
  EXPECT_EQ(b.state(), waiter_state::idle);
  // A reserved request always finds its place.
  waiter c;
  EXPECT_EQ(l.enqueue(c, {.deadline = clock_.now() + 1s, .now = clock_.now()}, true),
            limiter::enqueue_result::queued);
  EXPECT_EQ(l.waiting(), 2u);
  l.cancel_all([](waiter&) {});
  release(l);
}

TEST_F(limiter_test, expire_removes_only_waiters_past_their_deadline) {
  limiter l({.max_concurrent = 1, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire());
  waiter early, late;
  ASSERT_EQ(l.enqueue(early, {.deadline = clock_.now() + 100ms, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  ASSERT_EQ(l.enqueue(late, {.deadline = clock_.now() + 300ms, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  EXPECT_EQ(l.next_deadline(), clock_.now() + 100ms);
  clock_.advance(99ms);
  EXPECT_EQ(l.expire(clock_.now(), [](waiter&) { FAIL(); }), 0u);
  clock_.advance(1ms);
  std::vector<waiter*> expired;
  EXPECT_EQ(l.expire(clock_.now(), [&](waiter& w) { expired.push_back(&w); }), 1u);
  EXPECT_EQ(expired, std::vector<waiter*>{&early});
  EXPECT_EQ(early.state(), waiter_state::expired);
  EXPECT_EQ(l.waiting(), 1u);
  // The expired waiter is never granted: the release goes to the next one.
  EXPECT_EQ(release(l), &late);
  release(l);
}

TEST_F(limiter_test, remove_of_a_waiting_waiter_frees_its_place) {
  limiter l({.max_concurrent = 1, .max_queue = 1});
  ASSERT_TRUE(l.try_acquire());
  waiter a;
  ASSERT_EQ(l.enqueue(a, {.deadline = clock_.now() + 1s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  EXPECT_TRUE(l.remove(a, waiter_state::expired));
  EXPECT_EQ(a.state(), waiter_state::expired);
  waiter b;
  EXPECT_EQ(l.enqueue(b, {.deadline = clock_.now() + 1s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  EXPECT_EQ(release(l), &b);
  release(l);
}

TEST_F(limiter_test, grant_versus_timeout_race_leaves_exactly_one_owner) {
  // The release wins the race: the waiter's timeout arrives after the grant, so remove() fails
  // and the waiter owns the permit; it must return it, and the count returns to zero.
  limiter l({.max_concurrent = 1, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire());
  waiter w;
  ASSERT_EQ(l.enqueue(w, {.deadline = clock_.now() + 1s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  clock_.advance(1s);
  EXPECT_EQ(release(l), &w);  // granted at the deadline instant
  EXPECT_FALSE(l.remove(w, waiter_state::expired));
  EXPECT_EQ(l.expire(clock_.now(), [](waiter&) { FAIL(); }), 0u);
  EXPECT_EQ(w.state(), waiter_state::granted);
  EXPECT_EQ(l.in_use(), 1u);
  EXPECT_EQ(release(l), nullptr);
  EXPECT_EQ(l.in_use(), 0u);

  // The timeout wins: after remove() the release finds nobody and the permit goes back.
  ASSERT_TRUE(l.try_acquire());
  waiter v;
  ASSERT_EQ(l.enqueue(v, {.deadline = clock_.now() + 1s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  clock_.advance(1s);
  EXPECT_TRUE(l.remove(v, waiter_state::expired));
  EXPECT_EQ(release(l), nullptr);
  EXPECT_EQ(l.in_use(), 0u);
}

TEST_F(limiter_test, cancel_all_empties_the_queue) {
  limiter l({.max_concurrent = 1, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 3> w;
  for (auto& x : w)
    ASSERT_EQ(l.enqueue(x, {.level = 2, .deadline = clock_.now() + 1s, .now = clock_.now()}, false),
              limiter::enqueue_result::queued);
  EXPECT_EQ(l.cancel_all([](waiter& x) { EXPECT_EQ(x.state(), waiter_state::cancelled); }), 3u);
  EXPECT_EQ(l.waiting(), 0u);
  EXPECT_EQ(release(l), nullptr);
}

TEST_F(limiter_test, costs_take_several_units_and_keep_strict_order) {
  limiter l({.max_concurrent = 4, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire(3));
  EXPECT_FALSE(l.try_acquire(2));
  waiter heavy, light;
  ASSERT_EQ(
      l.enqueue(heavy, {.deadline = clock_.now() + 1s, .now = clock_.now(), .cost = 3}, false),
      limiter::enqueue_result::queued);
  ASSERT_EQ(
      l.enqueue(light, {.deadline = clock_.now() + 1s, .now = clock_.now(), .cost = 1}, false),
      limiter::enqueue_result::queued);
  // One unit is free, but the heavy request is first: the light one does not overtake it.
  EXPECT_EQ(l.in_use(), 3u);
  std::vector<waiter*> granted;
  l.release(3, clock_.now(), [&](waiter& w) { granted.push_back(&w); });
  EXPECT_EQ(granted, (std::vector<waiter*>{&heavy, &light}));
  EXPECT_EQ(l.in_use(), 4u);
  l.release(3, clock_.now(), [](waiter&) {});
  l.release(1, clock_.now(), [](waiter&) {});
  EXPECT_EQ(l.in_use(), 0u);
}

TEST_F(limiter_test, raising_the_limit_grants_waiters_and_lowering_drains) {
  limiter l({.max_concurrent = 1, .max_queue = 10});
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 3> w;
  for (auto& x : w) {
    ASSERT_EQ(l.enqueue(x, {.deadline = clock_.now() + 1s, .now = clock_.now()}, false),
              limiter::enqueue_result::queued);
  }
  std::vector<waiter*> granted;
  l.set_limit(3, clock_.now(), [&](waiter& x) { granted.push_back(&x); });
  EXPECT_EQ(granted, (std::vector<waiter*>{&w[0], &w[1]}));
  EXPECT_EQ(l.in_use(), 3u);
  l.set_limit(1, clock_.now(), [](waiter&) { FAIL(); });
  // Over the new limit: releases return units without handing them on until under it.
  EXPECT_EQ(release(l), nullptr);
  EXPECT_EQ(release(l), nullptr);
  EXPECT_EQ(release(l), &w[2]);
  EXPECT_EQ(release(l), nullptr);
}

TEST_F(limiter_test, codel_sheds_waiters_past_target_once_the_queue_stands) {
  limiter_options o{1, 100};
  o.discipline = queue_discipline::codel;
  o.target = 5ms;
  o.interval = 100ms;
  limiter l(o);
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 4> w;
  ASSERT_EQ(l.enqueue(w[0], {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  clock_.advance(20ms);
  // The queue has stood for 20 ms only: no shedding yet, the oldest is served.
  EXPECT_EQ(release(l), &w[0]);
  ASSERT_EQ(l.enqueue(w[1], {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  clock_.advance(98ms);
  ASSERT_EQ(l.enqueue(w[2], {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  clock_.advance(2ms);
  ASSERT_EQ(l.enqueue(w[3], {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  clock_.advance(1ms);
  // Standing for 101 ms now: w1 (101 ms old) is shed; w2 (3 ms) is within target and served.
  std::vector<std::pair<waiter*, waiter_state>> changed;
  l.release(1, clock_.now(), [&](waiter& x) { changed.emplace_back(&x, x.state()); });
  ASSERT_EQ(changed.size(), 2u);
  EXPECT_EQ(changed[0], std::make_pair(&w[1], waiter_state::shed));
  EXPECT_EQ(changed[1], std::make_pair(&w[2], waiter_state::granted));
  EXPECT_EQ(l.waiting(), 1u);
  l.cancel_all([](waiter&) {});
  release(l);
}

TEST_F(limiter_test, codel_stays_in_dropping_state_when_shedding_empties_the_queue) {
  limiter_options o{1, 100};
  o.discipline = queue_discipline::codel;
  o.target = 5ms;
  o.interval = 100ms;
  limiter l(o);
  ASSERT_TRUE(l.try_acquire());
  waiter old_one;
  ASSERT_EQ(l.enqueue(old_one, {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  clock_.advance(150ms);
  std::vector<waiter_state> states;
  l.release(1, clock_.now(), [&](waiter& x) { states.push_back(x.state()); });
  EXPECT_EQ(states, std::vector<waiter_state>{waiter_state::shed});  // queue now empty
  ASSERT_TRUE(l.try_acquire());
  // A new arrival 10 ms later finds the queue still "standing": once past the target it is
  // shed, rather than enjoying a fresh interval of FIFO.
  clock_.advance(10ms);
  waiter next;
  ASSERT_EQ(l.enqueue(next, {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  clock_.advance(20ms);
  states.clear();
  l.release(1, clock_.now(), [&](waiter& x) { states.push_back(x.state()); });
  EXPECT_EQ(states, std::vector<waiter_state>{waiter_state::shed});
  // After an interval without shedding, a new queue starts with a fresh clock.
  ASSERT_TRUE(l.try_acquire());
  clock_.advance(200ms);
  waiter fresh;
  ASSERT_EQ(l.enqueue(fresh, {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  clock_.advance(20ms);
  EXPECT_EQ(release(l), &fresh);
  release(l);
}

TEST_F(limiter_test, codel_keeps_levels_apart) {
  limiter_options o{1, 100};
  o.discipline = queue_discipline::codel;
  limiter l(o);
  ASSERT_TRUE(l.try_acquire());
  waiter old_low, fresh_high;
  ASSERT_EQ(l.enqueue(old_low, {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  clock_.advance(200ms);
  ASSERT_EQ(l.enqueue(fresh_high, {.level = 5, .deadline = clock_.now() + 10s, .now = clock_.now()},
                      false),
            limiter::enqueue_result::queued);
  // Each level keeps its own standing-queue clock: the fresh high waiter is served, and the low
  // one, 200 ms into a standing queue of its own, is shed on the same hand-off.
  std::vector<std::pair<waiter*, waiter_state>> changed;
  l.release(1, clock_.now(), [&](waiter& x) { changed.emplace_back(&x, x.state()); });
  ASSERT_EQ(changed.size(), 2u);
  EXPECT_EQ(changed[0], std::make_pair(&fresh_high, waiter_state::granted));
  EXPECT_EQ(changed[1], std::make_pair(&old_low, waiter_state::shed));
  EXPECT_EQ(l.waiting(), 0u);
  release(l);
  EXPECT_EQ(l.in_use(), 0u);
}

TEST_F(limiter_test, adaptive_lifo_serves_newest_first_once_a_queue_stands) {
  limiter_options o{1, 100};
  o.discipline = queue_discipline::adaptive_lifo;
  o.interval = 100ms;
  limiter l(o);
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 4> w;
  for (auto& x : w) {
    ASSERT_EQ(l.enqueue(x, {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
              limiter::enqueue_result::queued);
    clock_.advance(10ms);
  }
  EXPECT_EQ(release(l), &w[0]);  // standing for 40 ms: still FIFO
  clock_.advance(70ms);
  EXPECT_EQ(release(l), &w[3]);  // standing for 110 ms: newest first
  EXPECT_EQ(release(l), &w[2]);
  EXPECT_EQ(release(l), &w[1]);
  EXPECT_EQ(release(l), nullptr);
}

TEST_F(limiter_test, aging_lets_a_long_waiting_low_level_take_its_turn) {
  limiter_options o{1, 100};
  o.aging_step = 100ms;
  limiter l(o);
  ASSERT_TRUE(l.try_acquire());
  waiter low;
  ASSERT_EQ(
      l.enqueue(low, {.level = 1, .deadline = clock_.now() + 60s, .now = clock_.now()}, false),
      limiter::enqueue_result::queued);
  // Sustained high-priority load: a fresh level-5 waiter keeps arriving.
  std::array<waiter, 5> high;
  std::vector<waiter*> served;
  for (auto& h : high) {
    ASSERT_EQ(
        l.enqueue(h, {.level = 5, .deadline = clock_.now() + 60s, .now = clock_.now()}, false),
        limiter::enqueue_result::queued);
    clock_.advance(100ms);
    served.push_back(release(l));
  }
  // Claims are level + age/100ms: each high head claims 6 when served; the low waiter's claim
  // reaches 6 after 500 ms and it wins the tie as the older one.
  EXPECT_EQ(served, (std::vector<waiter*>{&high[0], &high[1], &high[2], &high[3], &low}));
  l.cancel_all([](waiter&) {});
  release(l);
}

TEST_F(limiter_test, waiting_at_or_above_counts_the_queue_ahead) {
  limiter l({.max_concurrent = 1, .max_queue = 100});
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 4> w;
  const priority levels[] = {0, 3, 3, 7};
  for (std::size_t i = 0; i < w.size(); ++i) {
    ASSERT_EQ(
        l.enqueue(w[i], {.level = levels[i], .deadline = clock_.now() + 1s, .now = clock_.now()},
                  false),
        limiter::enqueue_result::queued);
  }
  EXPECT_EQ(l.waiting_at_or_above(0), 4u);
  EXPECT_EQ(l.waiting_at_or_above(3), 3u);
  EXPECT_EQ(l.waiting_at_or_above(4), 1u);
  EXPECT_EQ(l.waiting_at_or_above(max_priority), 0u);
  l.cancel_all([](waiter&) {});
  release(l);
}

limiter_options with_reserve(std::size_t n, std::size_t reserve, priority level) {
  limiter_options o{n, 100};
  o.reserve = reserve;
  o.reserve_level = level;
  return o;
}

TEST_F(limiter_test, reserve_keeps_headroom_that_lower_levels_cannot_take) {
  limiter l(with_reserve(3, 1, 10));
  // Lower levels fill limit - reserve, then queue; the last unit stays free.
  EXPECT_TRUE(l.try_acquire(1, 0));
  EXPECT_TRUE(l.try_acquire(1, 9));
  EXPECT_FALSE(l.try_acquire(1, 9));
  std::array<waiter, 2> low;
  for (auto& w : low) {
    ASSERT_EQ(l.enqueue(w, {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
              limiter::enqueue_result::queued);
  }
  EXPECT_EQ(l.in_use(), 2u);
  // An entitled newcomer is granted the headroom at once: the queued ones could not use it.
  waiter high;
  EXPECT_EQ(
      l.enqueue(high, {.level = 10, .deadline = clock_.now() + 10s, .now = clock_.now()}, false),
      limiter::enqueue_result::granted);
  EXPECT_EQ(l.in_use(), 3u);
  // Its unit back: the headroom is free again, and the low waiters still wait.
  EXPECT_EQ(release(l), nullptr);
  EXPECT_EQ(low[0].state(), waiter_state::waiting);
  // A lower-level unit back goes to the oldest low waiter, within the lower levels' share.
  EXPECT_EQ(release(l), &low[0]);
  EXPECT_EQ(l.in_use(), 2u);
  l.cancel_all([](waiter&) {});
  release(l);
  release(l);
}

TEST_F(limiter_test, reserve_is_taken_at_once_past_a_full_queue_of_lower_levels) {
  limiter_options o = with_reserve(2, 1, 10);
  o.max_queue = 2;
  limiter l(o);
  ASSERT_TRUE(l.try_acquire(1, 0));
  std::array<waiter, 2> low;
  for (auto& w : low) {
    ASSERT_EQ(l.enqueue(w, {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
              limiter::enqueue_result::queued);
  }
  // The queue is full: a lower level is shed, an entitled one takes the headroom on the spot.
  EXPECT_FALSE(l.try_reserve());
  EXPECT_FALSE(l.try_acquire(1, 9));
  EXPECT_TRUE(l.try_acquire(1, 10));
  EXPECT_EQ(l.in_use(), 2u);
  // Only one unit of headroom: the next entitled newcomer must wait like everyone.
  EXPECT_FALSE(l.try_acquire(1, 12));
  l.cancel_all([](waiter&) {});
  release(l);
  release(l);
}

TEST_F(limiter_test, reserve_hands_a_released_unit_to_an_entitled_waiter_first) {
  limiter l(with_reserve(2, 1, 10));
  ASSERT_TRUE(l.try_acquire(1, 0));
  waiter high_holder;
  ASSERT_EQ(l.enqueue(high_holder,
                      {.level = 12, .deadline = clock_.now() + 10s, .now = clock_.now()}, false),
            limiter::enqueue_result::granted);
  waiter low, high;
  ASSERT_EQ(l.enqueue(low, {.deadline = clock_.now() + 10s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  ASSERT_EQ(
      l.enqueue(high, {.level = 10, .deadline = clock_.now() + 10s, .now = clock_.now()}, false),
      limiter::enqueue_result::queued);
  // Priority order as always. A low waiter is granted only while the headroom stays free:
  // not while `high` holds one of the two units, then at once.
  EXPECT_EQ(release(l), &high);
  EXPECT_EQ(release(l), nullptr);
  EXPECT_EQ(low.state(), waiter_state::waiting);
  EXPECT_EQ(release(l), &low);
  release(l);
}

TEST_F(limiter_test, reserve_with_aging_still_lets_an_entitled_waiter_use_the_headroom) {
  limiter_options o = with_reserve(2, 1, 10);
  o.aging_step = 10ms;
  limiter l(o);
  ASSERT_TRUE(l.try_acquire(1, 0));  // the lower levels' share is taken
  waiter low;
  ASSERT_EQ(l.enqueue(low, {.deadline = clock_.now() + 60s, .now = clock_.now()}, false),
            limiter::enqueue_result::queued);
  waiter holder;
  ASSERT_EQ(
      l.enqueue(holder, {.level = 10, .deadline = clock_.now() + 60s, .now = clock_.now()}, false),
      limiter::enqueue_result::granted);
  waiter high;
  ASSERT_EQ(
      l.enqueue(high, {.level = 10, .deadline = clock_.now() + 60s, .now = clock_.now()}, false),
      limiter::enqueue_result::queued);
  // The low waiter has aged past level 10, so it is picked first, but the freed unit is the
  // headroom, which it may not use: the entitled waiter gets it.
  clock_.advance(1s);
  EXPECT_EQ(release(l), &high);
  EXPECT_EQ(low.state(), waiter_state::waiting);
  l.cancel_all([](waiter&) {});
  release(l);
  release(l);
}

TEST_F(limiter_test, reserve_never_leaves_lower_levels_without_a_unit) {
  limiter l(with_reserve(4, 2, 5));
  std::vector<waiter*> changed;
  l.set_limit(2, clock_.now(), [&](waiter& w) { changed.push_back(&w); });
  EXPECT_TRUE(l.try_acquire(1, 0));
  EXPECT_FALSE(l.try_acquire(1, 0));
  EXPECT_TRUE(l.try_acquire(1, 5));
  release(l);
  release(l);
}

// A permit_source counting its releases, to check the RAII contract.
struct counting_source final : permit_source {
  int released = 0;
  void release_permit(std::uint32_t) noexcept override { ++released; }
};

TEST(permit_test, releases_exactly_once_on_every_path) {
  counting_source s;
  { permit p(s); }
  EXPECT_EQ(s.released, 1);
  {
    permit a(s);
    permit b(std::move(a));
    EXPECT_FALSE(a);
    EXPECT_TRUE(b);
  }
  EXPECT_EQ(s.released, 2);
  {
    permit a(s);
    permit b(s);
    a = std::move(b);  // a's old permit is returned, b's moves in
    EXPECT_EQ(s.released, 3);
  }
  EXPECT_EQ(s.released, 4);
  try {
    permit p(s);
    throw std::runtime_error("handler failed");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(s.released, 5);
  permit p(s);
  p.reset();
  p.reset();
  EXPECT_EQ(s.released, 6);
}

}  // namespace
}  // namespace qos

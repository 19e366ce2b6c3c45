// The core state machine, driven by a manual clock with no threads and no sleeps.
#include "qos/limiter.hpp"

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <memory>
#include <vector>

#include "qos/permit.hpp"

namespace qos {
namespace {

using namespace std::chrono_literals;

class limiter_test : public ::testing::Test {
 protected:
  manual_clock clock_;
};

TEST_F(limiter_test, grants_at_most_max_concurrent) {
  limiter l({3, 10});
  EXPECT_TRUE(l.try_acquire());
  EXPECT_TRUE(l.try_acquire());
  EXPECT_TRUE(l.try_acquire());
  EXPECT_FALSE(l.try_acquire());
  EXPECT_EQ(l.in_use(), 3u);
  EXPECT_EQ(l.release(), nullptr);
  EXPECT_EQ(l.in_use(), 2u);
  EXPECT_TRUE(l.try_acquire());
  for (int i = 0; i < 3; ++i) l.release();
  EXPECT_EQ(l.in_use(), 0u);
}

TEST_F(limiter_test, enqueue_grants_when_free) {
  limiter l({1, 10});
  waiter w;
  EXPECT_EQ(l.enqueue(w, 0, clock_.now() + 1s, false), limiter::enqueue_result::granted);
  EXPECT_EQ(w.state(), waiter_state::granted);
  EXPECT_EQ(l.in_use(), 1u);
  l.release();
}

TEST_F(limiter_test, release_serves_highest_priority_first_fifo_within_level) {
  limiter l({1, 10});
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 5> w;
  const priority levels[] = {1, 5, 1, 5, 3};
  for (std::size_t i = 0; i < w.size(); ++i) {
    ASSERT_EQ(l.enqueue(w[i], levels[i], clock_.now() + 10s, false),
              limiter::enqueue_result::queued);
  }
  std::vector<waiter*> order;
  while (waiter* next = l.release()) {
    EXPECT_EQ(next->state(), waiter_state::granted);
    order.push_back(next);
  }
  const std::vector<waiter*> expected = {&w[1], &w[3], &w[4], &w[0], &w[2]};
  EXPECT_EQ(order, expected);
  EXPECT_EQ(l.in_use(), 0u);
}

TEST_F(limiter_test, release_hands_permit_directly_so_newcomers_cannot_barge) {
  limiter l({1, 10});
  ASSERT_TRUE(l.try_acquire());
  waiter w;
  ASSERT_EQ(l.enqueue(w, 0, clock_.now() + 1s, false), limiter::enqueue_result::queued);
  EXPECT_EQ(l.release(), &w);
  // The permit moved to w: still in use, a newcomer of any priority gets nothing.
  EXPECT_EQ(l.in_use(), 1u);
  EXPECT_FALSE(l.try_acquire());
  waiter high;
  EXPECT_EQ(l.enqueue(high, max_priority, clock_.now() + 1s, false),
            limiter::enqueue_result::queued);
  EXPECT_EQ(l.release(), &high);
  EXPECT_EQ(l.release(), nullptr);
}

TEST_F(limiter_test, newcomer_does_not_take_a_permit_while_reservations_are_pending) {
  limiter l({1, 10});
  ASSERT_TRUE(l.try_acquire());
  ASSERT_TRUE(l.try_reserve());
  EXPECT_EQ(l.release(), nullptr);  // nobody queued yet: the permit is free
  EXPECT_FALSE(l.try_acquire());    // but the reserved request came first
  waiter w;
  EXPECT_EQ(l.enqueue(w, 0, clock_.now() + 1s, true), limiter::enqueue_result::granted);
  EXPECT_EQ(l.reserved(), 0u);
  l.release();
}

TEST_F(limiter_test, queue_cap_counts_waiters_and_reservations) {
  limiter l({1, 2});
  ASSERT_TRUE(l.try_acquire());
  waiter a;
  ASSERT_EQ(l.enqueue(a, 0, clock_.now() + 1s, false), limiter::enqueue_result::queued);
  ASSERT_TRUE(l.try_reserve());
  EXPECT_FALSE(l.try_reserve());
  waiter b;
  EXPECT_EQ(l.enqueue(b, 9, clock_.now() + 1s, false), limiter::enqueue_result::queue_full);
  EXPECT_EQ(b.state(), waiter_state::idle);
  // A reserved request always finds its place.
  waiter c;
  EXPECT_EQ(l.enqueue(c, 0, clock_.now() + 1s, true), limiter::enqueue_result::queued);
  EXPECT_EQ(l.waiting(), 2u);
  l.cancel_all([](waiter&) {});
  l.release();
}

TEST_F(limiter_test, expire_removes_only_waiters_past_their_deadline) {
  limiter l({1, 10});
  ASSERT_TRUE(l.try_acquire());
  waiter early, late;
  ASSERT_EQ(l.enqueue(early, 0, clock_.now() + 100ms, false), limiter::enqueue_result::queued);
  ASSERT_EQ(l.enqueue(late, 0, clock_.now() + 300ms, false), limiter::enqueue_result::queued);
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
  EXPECT_EQ(l.release(), &late);
  l.release();
}

TEST_F(limiter_test, remove_of_a_waiting_waiter_frees_its_place) {
  limiter l({1, 1});
  ASSERT_TRUE(l.try_acquire());
  waiter a;
  ASSERT_EQ(l.enqueue(a, 0, clock_.now() + 1s, false), limiter::enqueue_result::queued);
  EXPECT_TRUE(l.remove(a, waiter_state::expired));
  EXPECT_EQ(a.state(), waiter_state::expired);
  waiter b;
  EXPECT_EQ(l.enqueue(b, 0, clock_.now() + 1s, false), limiter::enqueue_result::queued);
  EXPECT_EQ(l.release(), &b);
  l.release();
}

TEST_F(limiter_test, grant_versus_timeout_race_leaves_exactly_one_owner) {
  // The release wins the race: the waiter's timeout arrives after the grant, so remove() fails
  // and the waiter owns the permit; it must return it, and the count returns to zero.
  limiter l({1, 10});
  ASSERT_TRUE(l.try_acquire());
  waiter w;
  ASSERT_EQ(l.enqueue(w, 0, clock_.now() + 1s, false), limiter::enqueue_result::queued);
  clock_.advance(1s);
  EXPECT_EQ(l.release(), &w);  // granted at the deadline instant
  EXPECT_FALSE(l.remove(w, waiter_state::expired));
  EXPECT_EQ(l.expire(clock_.now(), [](waiter&) { FAIL(); }), 0u);
  EXPECT_EQ(w.state(), waiter_state::granted);
  EXPECT_EQ(l.in_use(), 1u);
  EXPECT_EQ(l.release(), nullptr);
  EXPECT_EQ(l.in_use(), 0u);

  // The timeout wins: after remove() the release finds nobody and the permit goes back.
  ASSERT_TRUE(l.try_acquire());
  waiter v;
  ASSERT_EQ(l.enqueue(v, 0, clock_.now() + 1s, false), limiter::enqueue_result::queued);
  clock_.advance(1s);
  EXPECT_TRUE(l.remove(v, waiter_state::expired));
  EXPECT_EQ(l.release(), nullptr);
  EXPECT_EQ(l.in_use(), 0u);
}

TEST_F(limiter_test, cancel_all_empties_the_queue) {
  limiter l({1, 10});
  ASSERT_TRUE(l.try_acquire());
  std::array<waiter, 3> w;
  for (auto& x : w)
    ASSERT_EQ(l.enqueue(x, 2, clock_.now() + 1s, false), limiter::enqueue_result::queued);
  EXPECT_EQ(l.cancel_all([](waiter& x) { EXPECT_EQ(x.state(), waiter_state::cancelled); }), 3u);
  EXPECT_EQ(l.waiting(), 0u);
  EXPECT_EQ(l.release(), nullptr);
}

// A permit_source counting its releases, to check the RAII contract.
struct counting_source final : permit_source {
  int released = 0;
  void release_permit() noexcept override { ++released; }
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

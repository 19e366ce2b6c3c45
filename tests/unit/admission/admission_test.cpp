// The path of one request without HTTP: every job gets exactly one of run/reject, and every
// permit and queue place comes back, on every path.
#include "qos/admission/admission.hpp"
#include "support/eventually.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <new>
#include <thread>

#include <boost/fiber/operations.hpp>

namespace qos {
namespace {

using test::eventually;

using namespace std::chrono_literals;

struct tally {
  std::atomic<int> runs{0}, rejects{0}, answers{0};
  std::atomic<int> by_outcome[outcome_count]{};
};

class fake_job final : public request_job {
 public:
  fake_job(tally& t, const std::atomic<bool>* hold = nullptr, bool connected = true)
      : t_(t), hold_(hold), connected_(connected) {}
  ~fake_job() override { EXPECT_EQ(calls_, 1) << "a job must be answered exactly once"; }
  bool client_connected() noexcept override { return connected_; }
  outcome run(limit_group&, const route_policy&) noexcept override {
    ++calls_;
    ++t_.runs;
    ++t_.answers;
    const auto until = clock::now() + 10s;
    while (hold_ != nullptr && hold_->load() && clock::now() < until) {
      boost::this_fiber::sleep_for(1ms);
    }
    return outcome::admitted;
  }
  void reject(outcome why) noexcept override {
    ++calls_;
    ++t_.rejects;
    ++t_.answers;
    ++t_.by_outcome[static_cast<int>(why)];
  }

 private:
  tally& t_;
  const std::atomic<bool>* hold_;
  bool connected_;
  int calls_ = 0;
};

group_options group_of(std::size_t n, std::size_t queue) {
  group_options g;
  g.name = "g";
  g.limiter.max_concurrent = n;
  g.limiter.max_queue = queue;
  return g;
}

route_policy route_of(duration wait) {
  route_policy r;
  r.name = "r";
  r.group = "g";
  r.max_wait = wait;
  return r;
}

struct fixture {
  explicit fixture(std::size_t n, std::size_t queue, duration wait)
      : fixture(group_of(n, queue), route_of(wait)) {}
  fixture(const group_options& g, const route_policy& r)
      : exec({2, 1024, 64 * 1024}),
        adm({g}, {r}, exec),
        route(*adm.find_route("r")),
        group(*adm.find_group("g")) {}
  ~fixture() { exec.stop(); }
  executor exec;
  admission adm;
  const admission::route_entry& route;
  limit_group& group;
};

TEST(admission_test, sheds_timeouts_and_queue_full_and_returns_everything) {
  fixture f(1, 2, 50ms);
  tally t;
  std::atomic<bool> hold{true};
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t, &hold));
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t));
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t));
  // Both places are taken (waiting or reserved): the next one is shed inline, on this thread.
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t));
  EXPECT_EQ(t.by_outcome[static_cast<int>(outcome::queue_full)].load(), 1);
  ASSERT_TRUE(eventually([&] { return t.by_outcome[static_cast<int>(outcome::timed_out)] == 2; }));
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.answers == 4; }));
  EXPECT_EQ(t.runs.load(), 1);
  ASSERT_TRUE(eventually([&] {
    auto s = f.group.stats();
    return s.in_use == 0 && s.waiting == 0 && s.reserved == 0;
  }));
}

TEST(admission_test, gone_client_never_runs_and_hands_its_permit_on) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> hold{true};
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t, &hold));
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t, nullptr, false));
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t));
  ASSERT_TRUE(eventually([&] { return f.group.stats().waiting == 2; }));
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.answers == 3; }));
  EXPECT_EQ(t.runs.load(), 2);
  EXPECT_EQ(t.by_outcome[static_cast<int>(outcome::client_gone)].load(), 1);
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 0; }));
}

TEST(admission_test, refused_post_answers_inline_and_returns_permit_and_reservation) {
  fixture f(1, 10, 5s);
  f.exec.stop();  // every post is refused from now on
  tally t;
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t));  // would take the free permit
  EXPECT_EQ(t.by_outcome[static_cast<int>(outcome::rejected)].load(), 1);
  auto s = f.group.stats();
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.reserved, 0u);
}

// A job whose handler may run on the submitting thread; records where it ran and whether it
// was detached first.
class inline_job final : public request_job {
 public:
  struct seen {
    std::atomic<int> runs{0}, rejects{0}, detaches{0}, on_caller{0};
    std::atomic<bool> held_a_permit{false};
  };
  inline_job(seen& s, std::thread::id caller, bool throw_on_detach = false)
      : s_(s), caller_(caller), throw_on_detach_(throw_on_detach) {}
  bool client_connected() noexcept override { return true; }
  bool runs_inline() const noexcept override { return true; }
  void detach() override {
    ++s_.detaches;
    if (throw_on_detach_) throw std::bad_alloc();
  }
  outcome run(limit_group& g, const route_policy&) noexcept override {
    ++s_.runs;
    if (std::this_thread::get_id() == caller_) ++s_.on_caller;
    s_.held_a_permit = g.stats().in_use == 1;
    return outcome::admitted;
  }
  void reject(outcome) noexcept override { ++s_.rejects; }

 private:
  seen& s_;
  std::thread::id caller_;
  bool throw_on_detach_;
};

TEST(admission_test, inline_job_with_a_free_permit_runs_on_the_caller_without_detaching) {
  fixture f(1, 10, 5s);
  inline_job::seen s;
  f.adm.submit(f.route, 0, std::make_unique<inline_job>(s, std::this_thread::get_id()));
  // Done before submit returned: ran here, under the permit, which is back already.
  EXPECT_EQ(s.runs.load(), 1);
  EXPECT_EQ(s.on_caller.load(), 1);
  EXPECT_EQ(s.detaches.load(), 0);
  EXPECT_TRUE(s.held_a_permit.load());
  EXPECT_EQ(f.group.stats().in_use, 0u);
}

TEST(admission_test, inline_job_that_must_wait_is_detached_and_runs_on_a_fiber) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> hold{true};
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t, &hold));
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  inline_job::seen s;
  f.adm.submit(f.route, 0, std::make_unique<inline_job>(s, std::this_thread::get_id()));
  EXPECT_EQ(s.detaches.load(), 1);
  EXPECT_EQ(s.runs.load(), 0);
  hold = false;
  ASSERT_TRUE(eventually([&] { return s.runs == 1; }));
  EXPECT_EQ(s.on_caller.load(), 0);
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 0; }));
}

TEST(admission_test, failed_detach_answers_rejected_and_returns_the_queue_place) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> hold{true};
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t, &hold));
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  inline_job::seen s;
  f.adm.submit(f.route, 0, std::make_unique<inline_job>(s, std::this_thread::get_id(), true));
  EXPECT_EQ(s.rejects.load(), 1);
  EXPECT_EQ(s.runs.load(), 0);
  EXPECT_EQ(f.group.stats().reserved, 0u);
  EXPECT_EQ(f.group.stats().waiting, 0u);
  hold = false;
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 0; }));
}

TEST(admission_test, shutdown_answers_waiters_and_newcomers) {
  fixture f(1, 10, 60s);
  tally t;
  std::atomic<bool> hold{true};
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t, &hold));
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  for (int i = 0; i < 3; ++i) f.adm.submit(f.route, 0, std::make_unique<fake_job>(t));
  ASSERT_TRUE(eventually([&] { return f.group.stats().waiting == 3; }));
  f.adm.shutdown();
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t));
  ASSERT_TRUE(
      eventually([&] { return t.by_outcome[static_cast<int>(outcome::shutting_down)] == 4; }));
  hold = false;  // the running one finishes normally
  ASSERT_TRUE(eventually([&] { return t.answers == 5; }));
  EXPECT_EQ(t.runs.load(), 1);
}

TEST(admission_test, many_jobs_each_answered_exactly_once) {
  fixture f(3, 20, 20ms);
  tally t;
  std::atomic<bool> hold{true};
  std::vector<std::thread> reactors;
  for (int r = 0; r < 2; ++r) {
    reactors.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        f.adm.submit(f.route, static_cast<priority>(i % 4),
                     std::make_unique<fake_job>(t, i % 7 == 0 ? &hold : nullptr, i % 11 != 0));
      }
    });
  }
  for (auto& th : reactors) th.join();
  std::this_thread::sleep_for(30ms);
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.answers == 400; }));
  ASSERT_TRUE(eventually([&] {
    auto s = f.group.stats();
    return s.in_use == 0 && s.waiting == 0 && s.reserved == 0;
  }));
}

TEST(admission_test, client_deadline_answers_at_once_or_cuts_the_wait) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> hold{true};
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t, &hold));
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  const auto now = clock::now();
  // Already past its deadline: answered inline, no fiber, no queue place.
  f.adm.submit(f.route, request_info{0, now, now - 1ms}, std::make_unique<fake_job>(t));
  EXPECT_EQ(t.by_outcome[static_cast<int>(outcome::deadline)].load(), 1);
  EXPECT_EQ(f.group.stats().reserved + f.group.stats().waiting, 0u);
  // A deadline 30 ms out shortens the 5 s max_wait: it ends as `deadline`, not `timeout`.
  f.adm.submit(f.route, request_info{0, clock::now(), clock::now() + 30ms},
               std::make_unique<fake_job>(t));
  ASSERT_TRUE(eventually([&] { return t.by_outcome[static_cast<int>(outcome::deadline)] == 2; }));
  EXPECT_EQ(t.by_outcome[static_cast<int>(outcome::timed_out)].load(), 0);
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.answers == 3; }));
}

TEST(admission_test, predictive_reject_answers_when_the_queue_cannot_drain_in_time) {
  auto r = route_of(200ms);
  r.predictive_reject = true;
  fixture f(group_of(1, 100), r);
  // Teach the group a service time of about 50 ms.
  for (int i = 0; i < 40; ++i) f.group.limiter().on_served(50ms, false);
  tally t;
  std::atomic<bool> hold{true};
  f.adm.submit(f.route, 0, std::make_unique<fake_job>(t, &hold));
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  // Each waiter adds ~50 ms of expected wait: four fit in the 200 ms budget, later ones not.
  for (int i = 0; i < 6; ++i) f.adm.submit(f.route, 0, std::make_unique<fake_job>(t));
  EXPECT_EQ(t.by_outcome[static_cast<int>(outcome::predicted_timeout)].load(), 2);
  ASSERT_TRUE(eventually([&] { return f.group.stats().waiting == 4; }));
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.answers == 7; }));
}

TEST(admission_test, shadow_group_counts_decisions_and_lets_everything_through) {
  struct counting_metrics final : metrics_sink, route_metrics {
    std::atomic<int> queued{0}, shed{0};
    route_metrics& route(std::string_view, std::string_view) override { return *this; }
    void on_outcome(outcome, duration) noexcept override {}
    void on_served(duration) noexcept override {}
    void on_shadow(outcome o) noexcept override { ++(o == outcome::queue_full ? shed : queued); }
  } m;
  auto g = group_of(1, 2);
  g.shadow = true;
  executor exec({2, 1024, 64 * 1024});
  admission adm({g}, {route_of(1s)}, exec, m);
  const auto& route = *adm.find_route("r");
  tally t;
  std::atomic<bool> hold{true};
  for (int i = 0; i < 6; ++i) adm.submit(route, 0, std::make_unique<fake_job>(t, &hold));
  // All six run at once although the limit is 1 and the queue holds 2.
  ASSERT_TRUE(eventually([&] { return t.runs == 6; }));
  EXPECT_EQ(m.queued.load() + m.shed.load(), 5);
  EXPECT_EQ(adm.find_group("g")->stats().in_use, 1u);
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.answers == 6; }));
  ASSERT_TRUE(eventually([&] { return adm.find_group("g")->stats().in_use == 0; }));
  exec.stop();
}

TEST(admission_test, adaptive_limit_moves_the_group_limit_from_served_samples) {
  auto g = group_of(10, 100);
  limit_options lo;
  lo.kind = limit_kind::aimd;
  lo.min = 2;
  lo.max = 40;
  lo.initial = 10;
  lo.timeout = 100ms;
  g.limit = lo;
  fixture f(g, route_of(1s));
  EXPECT_EQ(f.group.stats().max_concurrent, 10u);
  // Served requests slower than the AIMD timeout cut the limit; it never goes below min.
  for (int i = 0; i < 100; ++i) f.group.limiter().on_served(300ms, false);
  EXPECT_EQ(f.group.stats().max_concurrent, 2u);
}

}  // namespace
}  // namespace qos

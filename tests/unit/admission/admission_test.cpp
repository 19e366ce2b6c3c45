// The path of one request without HTTP: every request gets exactly one answer (its handler's,
// a fallback or a failure), and every permit and queue place comes back, on every path.
#include "qos/admission/admission.hpp"
#include "support/eventually.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <new>
#include <stdexcept>
#include <thread>

#include <boost/fiber/operations.hpp>

namespace qos {
namespace {

using test::eventually;

using namespace std::chrono_literals;

struct tally {
  std::atomic<int> runs{0}, rejects{0}, answers{0}, failures{0}, responses{0}, dones{0};
  std::atomic<std::thread::id> handler_thread{}, done_thread{};
  std::atomic<int> by_outcome[outcome_count]{};
  int of(outcome o) const { return by_outcome[index(o)].load(); }
};

struct fake_options {
  const std::atomic<bool>* hold = nullptr;  // the handler runs while *hold
  bool connected = true;
  bool throw_on_detach = false;
  std::optional<response> result{};  // what the handler returns; none: it answered itself
  bool handler_throws = false;
  bool awaited = true;  // answer_awaited(): false for a job, read only at done()
};

// A client of the gate as admission sees it; checks that it is answered exactly once.
class fake_transport final : public transport {
 public:
  using options = fake_options;
  explicit fake_transport(tally& t, options o = {}) : t_(t), o_(o) {}
  ~fake_transport() override { EXPECT_EQ(answers_, 1) << "a request is answered exactly once"; }

  bool connected() noexcept override { return o_.connected; }
  void detach() override {
    ++detaches;
    if (o_.throw_on_detach) throw std::bad_alloc();
  }
  std::optional<response> handle() override {
    ++t_.runs;
    t_.handler_thread = std::this_thread::get_id();
    const auto until = clock::now() + 10s;
    while (o_.hold != nullptr && o_.hold->load() && clock::now() < until) {
      boost::this_fiber::sleep_for(1ms);
    }
    if (o_.handler_throws) throw std::runtime_error("backend failed");
    if (!o_.result) answered();  // the handler answered through the edge itself
    return o_.result;
  }
  void answer(response) noexcept override {
    ++t_.responses;
    answered();
  }
  void fallback(outcome why) noexcept override {
    ++t_.rejects;
    ++t_.by_outcome[index(why)];
    answered();
  }
  void fail(std::exception_ptr) noexcept override {
    ++t_.failures;
    answered();
  }
  void done(const request_report&) noexcept override {
    t_.done_thread = std::this_thread::get_id();
    ++t_.dones;
  }
  bool answer_awaited() const noexcept override { return o_.awaited; }

  int detaches = 0;

 private:
  void answered() {
    ++answers_;
    ++t_.answers;
  }
  tally& t_;
  options o_;
  int answers_ = 0;
};

group_options group_of(std::size_t n, std::size_t queue) {
  return {.name = "g", .limiter = {.max_concurrent = n, .max_queue = queue}};
}

route_policy route_of(duration wait) {
  return {.name = "r", .group = "g", .max_wait = wait};
}

struct fixture {
  explicit fixture(std::size_t n, std::size_t queue, duration wait)
      : fixture(group_of(n, queue), route_of(wait)) {}
  fixture(const group_options& g, const route_policy& r, metrics_sink& m = null_metrics())
      : exec({.threads = 2, .inbox = 1024}),
        adm({g}, {r}, exec, m),
        route(*adm.find_route("r")),
        group(*adm.find_group("g")) {}
  ~fixture() { exec.stop(); }

  // A request at `level`, arriving now, without a client deadline.
  void submit(tally& t, fake_options o = {}, priority level = 0,
              handler_kind kind = handler_kind::fiber) {
    submit(request_info{.level = level, .arrival = clock::now()}, t, o, kind);
  }
  void submit(const request_info& info, tally& t, fake_options o = {},
              handler_kind kind = handler_kind::fiber) {
    adm.submit(route, info, kind, std::make_unique<fake_transport>(t, o));
  }
  bool idle() const {
    auto s = group.stats();
    return s.in_use == 0 && s.waiting == 0 && s.reserved == 0;
  }

  executor exec;
  admission adm;
  const admission::route& route;
  limit_group& group;
};

TEST(admission_test, sheds_timeouts_and_queue_full_and_returns_everything) {
  fixture f(1, 2, 50ms);
  tally t;
  std::atomic<bool> hold{true};
  f.submit(t, {.hold = &hold});
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  f.submit(t);
  f.submit(t);
  // Both places are taken (waiting or reserved): the next one is shed inline, on this thread.
  f.submit(t);
  EXPECT_EQ(t.of(outcome::queue_full), 1);
  ASSERT_TRUE(eventually([&] { return t.of(outcome::timeout) == 2; }));
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.answers == 4; }));
  EXPECT_EQ(t.runs.load(), 1);
  ASSERT_TRUE(eventually([&] { return f.idle(); }));
}

TEST(admission_test, gone_client_never_runs_and_hands_its_permit_on) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> hold{true};
  f.submit(t, {.hold = &hold});
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  f.submit(t, {.connected = false});
  f.submit(t);
  ASSERT_TRUE(eventually([&] { return f.group.stats().waiting == 2; }));
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.answers == 3; }));
  EXPECT_EQ(t.runs.load(), 2);
  EXPECT_EQ(t.of(outcome::client_gone), 1);
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 0; }));
}

TEST(admission_test, refused_post_answers_inline_and_returns_permit_and_reservation) {
  fixture f(1, 10, 5s);
  f.exec.stop();  // every post is refused from now on
  tally t;
  f.submit(t);  // would take the free permit
  EXPECT_EQ(t.of(outcome::rejected), 1);
  auto s = f.group.stats();
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.reserved, 0u);
}

TEST(admission_test, reactor_handler_with_a_free_permit_runs_on_the_caller_without_detaching) {
  fixture f(1, 10, 5s);
  tally t;
  f.submit(t, {}, 0, handler_kind::reactor);
  // Done before submit returned: it ran here, and the permit is back already.
  EXPECT_EQ(t.runs.load(), 1);
  EXPECT_EQ(t.answers.load(), 1);
  EXPECT_EQ(f.group.stats().in_use, 0u);
}

TEST(admission_test, reactor_handler_that_must_wait_is_detached_and_runs_on_a_fiber) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> hold{true};
  f.submit(t, {.hold = &hold});
  ASSERT_TRUE(eventually([&] { return t.runs == 1; }));
  f.submit(t, {}, 0, handler_kind::reactor);
  EXPECT_EQ(f.group.stats().reserved + f.group.stats().waiting, 1u);  // waits on a fiber
  EXPECT_EQ(t.runs.load(), 1);
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.runs == 2 && t.answers == 2; }));
  ASSERT_TRUE(eventually([&] { return f.idle(); }));
}

TEST(admission_test, failed_detach_answers_rejected_and_returns_the_queue_place) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> hold{true};
  f.submit(t, {.hold = &hold});
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  f.submit(t, {.throw_on_detach = true});
  EXPECT_EQ(t.of(outcome::rejected), 1);
  EXPECT_EQ(f.group.stats().reserved, 0u);
  EXPECT_EQ(f.group.stats().waiting, 0u);
  hold = false;
  ASSERT_TRUE(eventually([&] { return f.idle() && t.answers == 2; }));
  EXPECT_EQ(t.runs.load(), 1);
}

TEST(admission_test, a_returned_response_is_answered_through_the_transport) {
  fixture f(1, 10, 5s);
  tally t;
  f.submit(t, {.result = response{.status = 201, .body = "made"}});
  ASSERT_TRUE(eventually([&] { return t.responses == 1; }));
  EXPECT_EQ(t.rejects.load(), 0);
  ASSERT_TRUE(eventually([&] { return f.idle(); }));
}

TEST(admission_test, a_failing_handler_is_answered_once_by_fail_and_frees_its_permit) {
  fixture f(1, 10, 5s);
  tally t;
  f.submit(t, {.handler_throws = true});
  f.submit(t, {.handler_throws = true}, 0, handler_kind::reactor);
  ASSERT_TRUE(eventually([&] { return t.failures == 2; }));
  EXPECT_EQ(t.answers.load(), 2);
  ASSERT_TRUE(eventually([&] { return f.idle(); }));
}

TEST(admission_test, max_exec_answers_the_fallback_and_keeps_the_permit_until_the_handler_ends) {
  auto r = route_of(5s);
  r.max_exec = 30ms;
  fixture f(group_of(1, 10), r);
  tally t;
  std::atomic<bool> hold{true};
  f.submit(t, {.hold = &hold, .result = response{.body = "late"}});
  ASSERT_TRUE(eventually([&] { return t.of(outcome::exec_timeout) == 1; }));
  // Answered, but the handler still runs: its permit is not free before it ends.
  EXPECT_EQ(f.group.stats().in_use, 1u);
  hold = false;
  ASSERT_TRUE(eventually([&] { return f.idle(); }));
  EXPECT_EQ(t.responses.load(), 0);  // the late result is discarded
  // Within max_exec the result is sent, from the blocking pool too.
  f.submit(t, {.result = response{.body = "on time"}}, 0, handler_kind::blocking);
  ASSERT_TRUE(eventually([&] { return t.responses == 1; }));
}

TEST(admission_test, an_unawaited_blocking_handler_runs_to_its_report_on_one_pool_thread) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> hold{true};
  f.submit(t, {.hold = &hold, .result = response{.body = "kept"}, .awaited = false}, 0,
           handler_kind::blocking);
  ASSERT_TRUE(eventually([&] { return t.runs == 1; }));
  // It runs holding its permit, and no fiber waits for it.
  EXPECT_EQ(f.group.stats().in_use, 1u);
  EXPECT_EQ(f.exec.live(), 0u);
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.dones == 1; }));
  EXPECT_EQ(t.responses.load(), 1);
  EXPECT_NE(t.handler_thread.load(), std::this_thread::get_id());
  EXPECT_EQ(t.done_thread.load(), t.handler_thread.load());  // reported where it ran
  EXPECT_TRUE(f.idle());                                     // the permit was back before done()
}

TEST(admission_test, an_unawaited_blocking_handler_that_waited_leaves_its_fiber_once_granted) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> first{true}, second{true};
  f.submit(t, {.hold = &first}, 0, handler_kind::blocking);
  ASSERT_TRUE(eventually([&] { return t.runs == 1; }));
  f.submit(t, {.hold = &second, .result = response{}, .awaited = false}, 0, handler_kind::blocking);
  ASSERT_TRUE(eventually([&] { return f.group.stats().waiting == 1; }));
  EXPECT_EQ(f.exec.live(), 2u);  // the first waits for its handler, the second for a permit
  first = false;
  ASSERT_TRUE(eventually([&] { return t.runs == 2 && f.exec.live() == 0; }));
  EXPECT_EQ(f.group.stats().in_use, 1u);  // the second runs on its pool thread alone
  second = false;
  ASSERT_TRUE(eventually([&] { return t.dones == 2 && f.idle(); }));
  EXPECT_EQ(t.responses.load(), 1);
  EXPECT_EQ(t.answers.load(), 2);
}

TEST(admission_test, a_waiting_unawaited_job_is_handed_to_the_pool_by_the_thread_that_grants_it) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> first{true}, fibers_blocked{true};
  f.submit(t, {.hold = &first, .result = response{}, .awaited = false}, 0, handler_kind::blocking);
  ASSERT_TRUE(eventually([&] { return t.runs == 1; }));
  f.submit(t, {.result = response{}, .awaited = false}, 0, handler_kind::blocking);
  ASSERT_TRUE(eventually([&] { return f.group.stats().waiting == 1; }));
  // Both fiber threads blocked: the waiting job's fiber cannot run until they are free.
  std::atomic<int> blockers{0};
  for (int i = 0; i < 2; ++i) {
    unique_task block([&] {
      ++blockers;
      while (fibers_blocked) std::this_thread::sleep_for(1ms);
    });
    ASSERT_TRUE(f.exec.try_post(block));
  }
  ASSERT_TRUE(eventually([&] { return blockers == 2; }));
  // The first job gives its permit back on its pool thread, which starts the second there.
  first = false;
  EXPECT_TRUE(eventually([&] { return t.dones == 2; }));
  EXPECT_EQ(t.runs.load(), 2);
  EXPECT_EQ(t.responses.load(), 2);
  fibers_blocked = false;
  ASSERT_TRUE(eventually([&] { return f.exec.live() == 0 && f.idle(); }));
  EXPECT_EQ(t.answers.load(), 2);
}

TEST(admission_test, an_unawaited_handler_is_judged_against_max_exec_when_it_returns) {
  auto r = route_of(5s);
  r.max_exec = 30ms;
  fixture f(group_of(1, 10), r);
  tally t;
  std::atomic<bool> hold{true};
  f.submit(t, {.hold = &hold, .result = response{.body = "late"}, .awaited = false}, 0,
           handler_kind::blocking);
  ASSERT_TRUE(eventually([&] { return t.runs == 1; }));
  // Nobody awaits the answer, so no timer answers it at max_exec: the handler decides.
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(t.answers.load(), 0);
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.dones == 1 && f.idle(); }));
  EXPECT_EQ(t.of(outcome::exec_timeout), 1);
  EXPECT_EQ(t.responses.load(), 0);  // the late result is dropped, as at the deadline
  // A failure past max_exec is an overrun too; within it, a failure and a result.
  hold = true;
  f.submit(t, {.hold = &hold, .handler_throws = true, .awaited = false}, 0, handler_kind::blocking);
  ASSERT_TRUE(eventually([&] { return t.runs == 2; }));
  std::this_thread::sleep_for(50ms);
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.dones == 2 && f.idle(); }));
  EXPECT_EQ(t.of(outcome::exec_timeout), 2);
  EXPECT_EQ(t.failures.load(), 0);
  f.submit(t, {.handler_throws = true, .awaited = false}, 0, handler_kind::blocking);
  f.submit(t, {.result = response{}, .awaited = false}, 0, handler_kind::blocking);
  ASSERT_TRUE(eventually([&] { return t.dones == 4 && f.idle(); }));
  EXPECT_EQ(t.failures.load(), 1);
  EXPECT_EQ(t.responses.load(), 1);
}

TEST(admission_test, an_unawaited_handler_refused_by_a_stopped_pool_fails_once_from_a_fiber) {
  fixture f(1, 10, 5s);
  f.group.pool().stop();
  tally t;
  f.submit(t, {.result = response{}, .awaited = false}, 0, handler_kind::blocking);
  ASSERT_TRUE(eventually([&] { return t.dones == 1 && f.idle(); }));
  EXPECT_EQ(t.failures.load(), 1);  // the blocking pool is stopped: a failure, not a hang
  EXPECT_EQ(t.runs.load(), 0);
}

TEST(admission_test, a_waiting_job_granted_while_its_pool_is_stopped_fails_once_from_its_fiber) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> first{true};
  f.submit(t, {.hold = &first, .result = response{}});  // a fiber handler holds the permit
  ASSERT_TRUE(eventually([&] { return t.runs == 1; }));
  f.submit(t, {.result = response{}, .awaited = false}, 0, handler_kind::blocking);
  ASSERT_TRUE(eventually([&] { return f.group.stats().waiting == 1; }));
  f.group.pool().stop();
  // The grant is offered to the pool, which refuses it: the job's fiber keeps its permit.
  first = false;
  ASSERT_TRUE(eventually([&] { return t.dones == 2 && f.exec.live() == 0 && f.idle(); }));
  EXPECT_EQ(t.responses.load(), 1);
  EXPECT_EQ(t.failures.load(), 1);
  EXPECT_EQ(t.runs.load(), 1);  // the job's handler never ran
  EXPECT_EQ(t.answers.load(), 2);
}

TEST(admission_test, shutdown_answers_waiters_and_newcomers) {
  fixture f(1, 10, 60s);
  tally t;
  std::atomic<bool> hold{true};
  f.submit(t, {.hold = &hold});
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  for (int i = 0; i < 3; ++i) f.submit(t);
  ASSERT_TRUE(eventually([&] { return f.group.stats().waiting == 3; }));
  f.adm.shutdown();
  f.submit(t);
  ASSERT_TRUE(eventually([&] { return t.of(outcome::shutdown) == 4; }));
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
        f.submit(t, {.hold = i % 7 == 0 ? &hold : nullptr, .connected = i % 11 != 0},
                 static_cast<priority>(i % 4));
      }
    });
  }
  for (auto& th : reactors) th.join();
  std::this_thread::sleep_for(30ms);
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.answers == 400; }));
  ASSERT_TRUE(eventually([&] { return f.idle(); }));
}

TEST(admission_test, client_deadline_answers_at_once_or_cuts_the_wait) {
  fixture f(1, 10, 5s);
  tally t;
  std::atomic<bool> hold{true};
  f.submit(t, {.hold = &hold});
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  const auto now = clock::now();
  // Already past its deadline: answered inline, no fiber, no queue place.
  f.submit({.arrival = now, .deadline = now - 1ms}, t);
  EXPECT_EQ(t.of(outcome::deadline), 1);
  EXPECT_EQ(f.group.stats().reserved + f.group.stats().waiting, 0u);
  // A deadline 30 ms out shortens the 5 s max_wait: it ends as `deadline`, not `timeout`.
  f.submit({.arrival = clock::now(), .deadline = clock::now() + 30ms}, t);
  ASSERT_TRUE(eventually([&] { return t.of(outcome::deadline) == 2; }));
  EXPECT_EQ(t.of(outcome::timeout), 0);
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
  f.submit(t, {.hold = &hold});
  ASSERT_TRUE(eventually([&] { return f.group.stats().in_use == 1; }));
  // Each waiter adds ~50 ms of expected wait: four fit in the 200 ms budget, later ones not.
  for (int i = 0; i < 6; ++i) f.submit(t);
  EXPECT_EQ(t.of(outcome::predicted_timeout), 2);
  ASSERT_TRUE(eventually([&] { return f.group.stats().waiting == 4; }));
  EXPECT_EQ(f.group.stats().reserved, 0u);  // the refused ones gave their places back
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.answers == 7; }));
}

TEST(admission_test, shadow_group_counts_what_it_would_queue_and_shed_and_lets_all_through) {
  struct counting_metrics final : metrics_sink, route_metrics {
    std::atomic<int> queued{0}, shed{0};
    route_metrics& route(std::string_view, std::string_view) override { return *this; }
    void on_arrival(priority) noexcept override {}
    void on_done(const request_report&) noexcept override {}
    void on_shadow(outcome o) noexcept override { ++(o == outcome::queue_full ? shed : queued); }
  } m;
  auto g = group_of(1, 2);
  g.shadow = true;
  fixture f(g, route_of(1s), m);
  tally t;
  std::atomic<bool> hold{true};
  for (int i = 0; i < 6; ++i) f.submit(t, {.hold = &hold});
  // All six run at once although the limit is 1 and the queue holds 2: one holds the permit,
  // two hold the queue places they would have waited in, and three would have been shed.
  ASSERT_TRUE(eventually([&] { return t.runs == 6; }));
  EXPECT_EQ(m.queued.load(), 2);
  EXPECT_EQ(m.shed.load(), 3);
  EXPECT_EQ(f.group.stats().in_use, 1u);
  EXPECT_EQ(f.group.stats().reserved, 2u);
  hold = false;
  ASSERT_TRUE(eventually([&] { return t.answers == 6; }));
  ASSERT_TRUE(eventually([&] { return f.idle(); }));
}

TEST(admission_test, adaptive_limit_moves_the_group_limit_from_served_samples) {
  auto g = group_of(10, 100);
  g.limit =
      limit_options{.kind = limit_kind::aimd, .min = 2, .max = 40, .initial = 10, .timeout = 100ms};
  fixture f(g, route_of(1s));
  EXPECT_EQ(f.group.stats().limit, 10u);
  // Served requests slower than the AIMD timeout cut the limit; it never goes below min.
  for (int i = 0; i < 100; ++i) f.group.limiter().on_served(300ms, false);
  EXPECT_EQ(f.group.stats().limit, 2u);
}

}  // namespace
}  // namespace qos

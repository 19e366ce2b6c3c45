// Job consumers on the PostgreSQL store (a private cluster: tests/support/pg_cluster), as two
// processes would run them: each with its own store object (its own connections) and its own
// admission. The N bound across both, counted in the table while they work; and a consumer
// dropped mid-job whose job runs again after its lease expired, with attempts + 1.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "qos/jobs/consumer.hpp"
#include "qos/jobs/pg_store.hpp"
#include "support/eventually.hpp"
#include "support/pg_env.hpp"

namespace qos::jobs {
namespace {

using namespace std::chrono_literals;
using test::eventually;
using test::sql;

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new test::pg_cluster_env);

job_request order(std::string body) {
  return {.route = "orders",
          .group = "db",
          .method = "POST",
          .target = "/orders",
          .body = std::move(body),
          .payload_hash = "h"};
}

// What one process holds: a store on its own connections, an executor and an admission.
struct process {
  process(const std::string& conninfo, std::size_t n)
      : store(pg_store_options{.conninfo = conninfo, .pool_size = 2}),
        exec({.threads = 2, .inbox = 1024}),
        adm({{.name = "db", .limiter = {.max_concurrent = n, .max_queue = 100}}},
            {{.name = "orders", .group = "db", .max_wait = 5s}}, exec) {}
  ~process() { exec.stop(); }

  consumer_options options(job_handler h, std::chrono::milliseconds lease = 5000ms) {
    return {.group = "db",
            .routes = {{.name = "orders", .handler = std::move(h)}},
            .lease = lease,
            .poll_interval = 50ms,
            .requeue_interval = 100ms,
            .retry = {.max_attempts = 5, .base = 0ms, .cap = 0ms, .jitter = 0},
            .wait_for_work = [this](const std::string& g, std::chrono::milliseconds t) {
              return store.wait_for_work(g, t);
            }};
  }

  pg_store store;
  executor exec;
  admission adm;
};

// The job handlers running at once, and the most of them; handler(d) works d per job.
struct running_gauge {
  std::atomic<int> now{0}, most{0};
  auto handler(std::chrono::milliseconds d) {
    return [this, d](const claimed_job&) {
      const int k = ++now;
      int m = most.load();
      while (k > m && !most.compare_exchange_weak(m, k)) {
      }
      std::this_thread::sleep_for(d);
      --now;
      return response{.body = "ok"};
    };
  }
};

class ConsumerPg : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::pg_cluster::available()) GTEST_SKIP() << test::pg_missing_reason();
    ASSERT_TRUE(test::pg_cluster_env::cluster) << "the test cluster did not start";
    conninfo_ = test::fresh_database("c");
  }
  int count(const std::string& state) {
    return std::stoi(sql(conninfo_, "SELECT count(*) FROM qos_jobs WHERE state = '" + state + "'"));
  }
  std::string conninfo_;
};

// Both lease ahead on run slots (the default), or with prefetch 0 lease nothing ahead: never
// more than N handlers at once across both. The table shows at most 3 N rows running, the
// claim's cap with run slots: besides the N running, rows leased ahead (at most two per slot
// held), and rows whose handler ended while their settlement has not committed yet (their slot
// already runs the next job; on a loaded machine that lasts, with prefetch 0 too).
class ConsumerPgBound : public ConsumerPg, public ::testing::WithParamInterface<bool> {};

TEST_P(ConsumerPgBound, two_consumers_on_two_stores_never_run_more_than_n) {
  const bool ahead = GetParam();
  constexpr int jobs = 40;
  process a(conninfo_, 3), b(conninfo_, 3);
  std::vector<job_id> ids;
  for (int i = 0; i < jobs; ++i) {
    const auto e = a.store.enqueue(order(std::to_string(i)), {});
    ASSERT_EQ(e.result, enqueue_result::kind::created);
    ids.push_back(e.id);
  }
  running_gauge g;
  const auto handler = g.handler(20ms);
  // The table's own count, sampled on a connection of its own while both consumers work.
  std::atomic<bool> sampling{true};
  int most_rows = 0, samples = 0;
  std::thread sampler([&] {
    while (sampling) {
      most_rows = std::max(most_rows, count("running"));
      ++samples;
      std::this_thread::sleep_for(2ms);
    }
  });
  auto oa = a.options(handler), ob = b.options(handler);
  if (!ahead) oa.prefetch = ob.prefetch = 0;
  consumer ca(a.store, a.adm, oa);
  consumer cb(b.store, b.adm, ob);
  const bool all = eventually([&] { return count("succeeded") == jobs; }, 60s);
  sampling = false;
  sampler.join();
  ASSERT_TRUE(all) << count("succeeded") << " of " << jobs << " succeeded";
  EXPECT_TRUE(ca.stop(5s));
  EXPECT_TRUE(cb.stop(5s));
  EXPECT_LE(g.most.load(), 3);
  EXPECT_LE(most_rows, 9);
  EXPECT_GT(samples, 10);
  EXPECT_GE(g.most.load(), 2);  // they did run side by side
  EXPECT_EQ(ca.succeeded() + cb.succeeded(), static_cast<std::uint64_t>(jobs));
  EXPECT_EQ(ca.fenced_out() + cb.fenced_out(), 0u);
  for (const auto& id : ids) {
    const auto s = a.store.status(id);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->state, job_state::succeeded);
    EXPECT_EQ(s->attempts, 1);
  }
}

INSTANTIATE_TEST_SUITE_P(leases, ConsumerPgBound, ::testing::Values(true, false),
                         [](const auto& info) {
                           return info.param ? std::string("ahead_on_run_slots")
                                             : std::string("nothing_ahead");
                         });

// A consumer that starts while another holds every run slot gets its part within a few of its
// checks: the first gives back the slots above half as their jobs end.
TEST_F(ConsumerPg, a_second_consumer_gets_its_part_of_the_run_slots) {
  constexpr int n = 4;
  constexpr int jobs = 400;
  process a(conninfo_, n), b(conninfo_, n);
  for (int i = 0; i < jobs; ++i) {
    ASSERT_EQ(a.store.enqueue(order(std::to_string(i)), {}).result, enqueue_result::kind::created);
  }
  running_gauge g;
  const auto handler = g.handler(20ms);
  auto oa = a.options(handler), ob = b.options(handler);
  oa.lease = ob.lease = 600ms;  // parts checked every 200 ms
  consumer ca(a.store, a.adm, oa);
  ASSERT_TRUE(eventually([&] { return ca.run_slots_held() == n; }, 30s));
  consumer cb(b.store, b.adm, ob);
  EXPECT_TRUE(
      eventually([&] { return ca.run_slots_held() == n / 2 && cb.run_slots_held() == n / 2; }, 20s))
      << ca.run_slots_held() << " and " << cb.run_slots_held() << " held";
  ASSERT_TRUE(eventually([&] { return count("succeeded") == jobs; }, 60s))
      << count("succeeded") << " of " << jobs;
  EXPECT_TRUE(ca.stop(5s));
  EXPECT_TRUE(cb.stop(5s));
  EXPECT_LE(g.most.load(), n);
  EXPECT_GE(cb.succeeded(), 20u);
  EXPECT_EQ(ca.succeeded() + cb.succeeded(), static_cast<std::uint64_t>(jobs));
  EXPECT_EQ(ca.fenced_out() + cb.fenced_out(), 0u);
}

// The server ends the session that holds a consumer's run slots (a restart, an operator's
// pg_terminate_backend): the consumer takes slots again on a new one and every job still ends,
// once.
TEST_F(ConsumerPg, a_consumer_whose_run_slots_session_was_killed_ends_every_job) {
  constexpr int jobs = 30;
  process a(conninfo_, 2);
  for (int i = 0; i < jobs; ++i) {
    ASSERT_EQ(a.store.enqueue(order(std::to_string(i)), {}).result, enqueue_result::kind::created);
  }
  auto o = a.options([](const claimed_job&) {
    std::this_thread::sleep_for(20ms);
    return response{.body = "ok"};
  });
  o.lease = 600ms;  // its slots' session is checked every 200 ms
  consumer c(a.store, a.adm, o);
  ASSERT_TRUE(eventually([&] { return c.succeeded() >= 5; }, 30s));
  EXPECT_EQ(sql(conninfo_,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'qos-jobs-slots' AND datname = current_database()"),
            "1");
  ASSERT_TRUE(eventually([&] { return count("succeeded") == jobs; }, 60s))
      << count("succeeded") << " of " << jobs;
  EXPECT_TRUE(c.stop(5s));
  EXPECT_EQ(c.succeeded(), static_cast<std::uint64_t>(jobs));
  EXPECT_EQ(c.fenced_out(), 0u);
}

TEST_F(ConsumerPg, a_dropped_consumers_job_runs_again_after_its_lease_with_one_more_attempt) {
  process a(conninfo_, 1), b(conninfo_, 1);
  const auto e = a.store.enqueue(order("x"), {});
  ASSERT_EQ(e.result, enqueue_result::kind::created);
  std::atomic<bool> hold{true};
  std::atomic<int> a_runs{0};
  auto ca = std::make_unique<consumer>(a.store, a.adm,
                                       a.options(
                                           [&](const claimed_job&) {
                                             ++a_runs;
                                             const auto until = clock::now() + 20s;
                                             while (hold && clock::now() < until)
                                               std::this_thread::sleep_for(1ms);
                                             return response{.body = "late"};
                                           },
                                           600ms));
  ASSERT_TRUE(eventually([&] { return a_runs.load() == 1; }));
  // The process stops heartbeating and is gone, its handler stuck mid-job.
  EXPECT_FALSE(ca->stop(0ms));
  EXPECT_EQ(ca->abandoned(), 1u);
  std::atomic<int> b_attempt{0};
  consumer cb(b.store, b.adm,
              b.options(
                  [&](const claimed_job& j) {
                    b_attempt = j.attempt;
                    return response{.body = "rerun"};
                  },
                  600ms));
  ASSERT_TRUE(eventually([&] { return b.store.status(e.id)->state == job_state::succeeded; }, 20s));
  EXPECT_EQ(b_attempt.load(), 2);
  EXPECT_EQ(cb.requeued(), 1u);  // b found the expired lease: a is gone
  const auto s = b.store.status(e.id);
  EXPECT_EQ(s->attempts, 2);
  ASSERT_TRUE(s->result.has_value());
  EXPECT_EQ(s->result->body, "rerun");
  hold = false;
  ca.reset();
  EXPECT_TRUE(cb.stop(5s));
  EXPECT_EQ(b.store.status(e.id)->result->body, "rerun");  // the stuck run changed nothing
  EXPECT_EQ(a_runs.load(), 1);
}

}  // namespace
}  // namespace qos::jobs

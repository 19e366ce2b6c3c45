// The SQLite job store's contract with a manual wall clock: the state machine and its answers,
// idempotency under concurrency, claim order and the group limit, leases and fencing, retries,
// retention, group commit, the schema version and the process lock, settle_and_claim(). Real files
// in a temporary folder; no sleeping (only the group-commit window is real time).
#include "qos/jobs/sqlite_store.hpp"

#include <gtest/gtest.h>

#include <sqlite3.h>
#include <future>

#include <barrier>
#include <memory>
#include <set>
#include <thread>

#include "job_test_support.hpp"
#include "qos/jobs/job_id.hpp"

namespace qos::jobs {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using kind = enqueue_result::kind;
using test::order;
using test::status_only;

constexpr milliseconds lease{10000};
constexpr retry_policy retry{
    .max_attempts = 3, .base = milliseconds(1000), .cap = milliseconds(60000), .jitter = 0.2};

class sqlite_store_test : public ::testing::Test {
 protected:
  sqlite_options options() {
    return {.path = dir_.file("jobs.db"),
            .group_commit = std::chrono::microseconds(200),
            .now = clock_.fn(),
            .random = [this] { return unit_; }};
  }
  sqlite_store& open(sqlite_options o) {
    store_.reset();
    store_ = std::make_unique<sqlite_store>(std::move(o));
    return *store_;
  }
  sqlite_store& open() { return open(options()); }

  job_id created(const job_request& job, const enqueue_options& o = {}) {
    const enqueue_result r = store_->enqueue(job, o);
    EXPECT_EQ(r.result, kind::created) << r.error;
    return r.id;
  }
  claimed_job claim_one(const std::string& group = "db") {
    auto jobs = store_->claim(group, 1, 100, lease);
    EXPECT_EQ(jobs.size(), 1U);
    return jobs.empty() ? claimed_job{} : jobs.front();
  }
  job_state state_of(const job_id& id) {
    const auto s = store_->status(id);
    EXPECT_TRUE(s.has_value()) << id;
    return s ? s->state : job_state::queued;
  }

  test::temp_dir dir_;
  test::manual_clock clock_;
  double unit_ = 0.5;  // the jitter draw: 0.5 = the schedule itself
  std::unique_ptr<sqlite_store> store_;
};

TEST_F(sqlite_store_test, enqueue_stores_a_queued_job_with_an_unguessable_id) {
  open();
  const enqueue_result r = store_->enqueue(order("a"), {});
  ASSERT_EQ(r.result, kind::created) << r.error;
  EXPECT_TRUE(is_job_id(r.id));
  const auto s = store_->status(r.id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->id, r.id);
  EXPECT_EQ(s->state, job_state::queued);
  EXPECT_EQ(s->attempts, 0);
  EXPECT_EQ(s->run_at, clock_.now());
  EXPECT_EQ(s->created, clock_.now());
  EXPECT_FALSE(s->result);
  EXPECT_EQ(store_->depth("orders"), 1U);
  EXPECT_EQ(store_->depth("elsewhere"), 0U);
}

TEST_F(sqlite_store_test, status_of_an_unknown_id_is_empty) {
  open();
  EXPECT_FALSE(store_->status(new_job_id()));
  EXPECT_FALSE(store_->status("not-an-id"));
}

TEST_F(sqlite_store_test, a_key_with_the_same_payload_is_a_duplicate_with_another_a_conflict) {
  open();
  const job_id first = created(order("a", "k1"));
  const enqueue_result again = store_->enqueue(order("a", "k1"), {});
  EXPECT_EQ(again.result, kind::duplicate);
  EXPECT_EQ(again.id, first);
  const enqueue_result other = store_->enqueue(order("b", "k1"), {});
  EXPECT_EQ(other.result, kind::conflict);
  EXPECT_TRUE(other.id.empty());
  EXPECT_EQ(store_->depth("orders"), 1U);
}

TEST_F(sqlite_store_test, keys_are_scoped_per_route_and_tenant) {
  open();
  const job_id first = created(order("a", "k1"));
  job_request tenant_b = order("a", "k1");
  tenant_b.tenant = "b";
  job_request other_route = order("a", "k1");
  other_route.route = "refunds";
  const job_id second = created(tenant_b);
  const job_id third = created(other_route);
  EXPECT_NE(first, second);
  EXPECT_NE(first, third);
  EXPECT_NE(second, third);
}

TEST_F(sqlite_store_test, a_key_is_forgotten_after_its_retention) {
  open();
  const enqueue_options o{.key_retention = seconds(60)};
  const job_id first = created(order("a", "k1"), o);
  clock_.advance(seconds(59));
  EXPECT_EQ(store_->enqueue(order("b", "k1"), o).result, kind::conflict);
  clock_.advance(seconds(1));
  const job_id second = created(order("b", "k1"), o);
  EXPECT_NE(first, second);
  EXPECT_EQ(store_->enqueue(order("b", "k1"), o).id, second);
}

TEST_F(sqlite_store_test, a_full_route_stores_nothing_until_a_job_finishes) {
  open();
  const enqueue_options o{.max_depth = 2};
  created(order("a", "ka"), o);
  created(order("b"), o);
  EXPECT_EQ(store_->enqueue(order("c"), o).result, kind::full);
  EXPECT_EQ(store_->enqueue(order("a", "ka"), o).result, kind::duplicate);  // not a new job
  job_request other = order("c");
  other.route = "refunds";
  created(other, o);  // the cap is per route
  EXPECT_EQ(store_->depth("orders"), 2U);

  const claimed_job running = claim_one();
  EXPECT_EQ(store_->enqueue(order("c"), o).result, kind::full);  // running counts
  ASSERT_TRUE(store_->complete(running.id, running.fence, {}));
  created(order("c"), o);
  EXPECT_EQ(store_->depth("orders"), 2U);
}

TEST_F(sqlite_store_test, a_hundred_concurrent_duplicates_create_exactly_one_job) {
  open();
  constexpr int callers = 100;
  std::vector<enqueue_result> results(callers);
  std::barrier start(callers);
  std::vector<std::thread> threads;
  for (int i = 0; i < callers; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      results[i] = store_->enqueue(order("same", "key-1"), {});
    });
  }
  for (auto& t : threads) t.join();
  int made = 0;
  std::set<job_id> ids;
  for (const auto& r : results) {
    ASSERT_TRUE(r.result == kind::created || r.result == kind::duplicate) << r.error;
    made += r.result == kind::created ? 1 : 0;
    ids.insert(r.id);
  }
  EXPECT_EQ(made, 1);
  EXPECT_EQ(ids.size(), 1U);
  EXPECT_EQ(store_->depth("orders"), 1U);
}

TEST_F(sqlite_store_test, concurrent_enqueues_share_transactions_and_all_commit) {
  sqlite_options o = options();
  // A wide window, so callers released together certainly meet in a batch even on a busy
  // machine; the assertion is on the count, not on time.
  o.group_commit = milliseconds(50);
  open(o);
  constexpr int callers = 64;
  std::vector<enqueue_result> results(callers);
  std::barrier start(callers);
  std::vector<std::thread> threads;
  for (int i = 0; i < callers; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      results[i] = store_->enqueue(order("job " + std::to_string(i)), {});
    });
  }
  for (auto& t : threads) t.join();
  std::set<job_id> ids;
  for (const auto& r : results) {
    ASSERT_EQ(r.result, kind::created) << r.error;
    ids.insert(r.id);
  }
  EXPECT_EQ(ids.size(), std::size_t{callers});
  EXPECT_EQ(store_->depth("orders"), std::size_t{callers});
  EXPECT_GE(store_->enqueue_commits(), 1U);
  EXPECT_LT(store_->enqueue_commits(), std::uint64_t{callers});
  for (const auto& id : ids) EXPECT_EQ(state_of(id), job_state::queued);
}

TEST_F(sqlite_store_test, other_writes_release_the_enqueues_waiting_for_their_window) {
  sqlite_options o = options();
  // A window far longer than the test: only another write's commit (shared, or the one right
  // after a lease write's own) can release the enqueue in time. (Writes used to run in their
  // own transactions while the window was open, and under a stream of enqueues they waited
  // for a gap between batches: consumers starved.)
  o.group_commit = std::chrono::seconds(60);
  open(o);
  auto pending = std::async(std::launch::async, [&] { return store_->enqueue(order("a"), {}); });
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (pending.wait_for(milliseconds(1)) != std::future_status::ready &&
         std::chrono::steady_clock::now() < until) {
    store_->requeue_expired({});  // a write of the consumers' kind
  }
  ASSERT_EQ(pending.wait_for(milliseconds(0)), std::future_status::ready)
      << "the enqueue still waits for its 60 s window";
  const enqueue_result r = pending.get();
  ASSERT_EQ(r.result, kind::created) << r.error;
  EXPECT_EQ(claim_one().id, r.id);
  EXPECT_EQ(store_->enqueue_commits(), 1U);
}

TEST_F(sqlite_store_test, with_synchronous_full_only_lease_writes_skip_the_fsync) {
  open();  // synchronous full: the default
  const enqueue_result e = store_->enqueue(order("a"), {});
  ASSERT_EQ(e.result, kind::created) << e.error;
  EXPECT_EQ(store_->lease_commits_without_fsync(), 0U) << "an enqueue's commit waits for its fsync";
  const claimed_job c = claim_one();
  EXPECT_EQ(store_->lease_commits_without_fsync(), 1U);
  ASSERT_TRUE(store_->heartbeat(c.id, c.fence, std::chrono::seconds(30)));
  ASSERT_TRUE(store_->fail(c.id, c.fence, "boom", {.max_attempts = 1}));
  EXPECT_EQ(store_->lease_commits_without_fsync(), 3U);
  // Operator writes stay durable before they answer.
  ASSERT_TRUE(store_->requeue_dead(c.id));
  EXPECT_EQ(store_->lease_commits_without_fsync(), 3U);
  // What the relaxed commits wrote is there for the next transaction and for readers.
  const auto st = store_->status(c.id);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->state, job_state::queued);
  EXPECT_EQ(st->last_error, "boom");

  sqlite_options o = options();
  o.synchronous = sqlite_options::sync_mode::normal;  // nothing to relax: every commit is so
  open(o);
  claim_one();
  EXPECT_EQ(store_->lease_commits_without_fsync(), 0U);
}

TEST_F(sqlite_store_test, a_batch_holds_at_most_max_batch_enqueues) {
  sqlite_options o = options();
  o.group_commit = milliseconds(20);
  o.max_batch = 4;
  open(o);
  constexpr int callers = 32;
  std::vector<enqueue_result> results(callers);
  std::barrier start(callers);
  std::vector<std::thread> threads;
  for (int i = 0; i < callers; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      results[i] = store_->enqueue(order("job " + std::to_string(i)), {});
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) ASSERT_EQ(r.result, kind::created) << r.error;
  EXPECT_EQ(store_->depth("orders"), std::size_t{callers});
  EXPECT_GE(store_->enqueue_commits(), std::uint64_t{callers / 4});
}

TEST_F(sqlite_store_test, a_claim_carries_the_stored_request_and_a_lease) {
  open();
  job_request job = order("{\"sku\":1}", "k", 7);
  job.tenant = "acme";
  job.target = "/orders?rush=1";
  job.headers = {{"content-type", "application/json"}, {"x-trace", ""}, {"x-b", "v\0w"}};
  job.headers.emplace_back("x-bin", std::string("a\0b", 3));
  const job_id id = created(job);
  const auto claimed = store_->claim("db", 5, 5, lease);
  ASSERT_EQ(claimed.size(), 1U);
  const claimed_job& c = claimed.front();
  EXPECT_EQ(c.id, id);
  EXPECT_EQ(c.attempt, 1);
  EXPECT_GT(c.fence, 0U);
  EXPECT_EQ(c.lease_until, clock_.now() + lease);
  EXPECT_EQ(c.request.route, "orders");
  EXPECT_EQ(c.request.group, "db");
  EXPECT_EQ(c.request.tenant, "acme");
  EXPECT_EQ(c.request.method, "POST");
  EXPECT_EQ(c.request.target, "/orders?rush=1");
  EXPECT_EQ(c.request.headers, job.headers);
  EXPECT_EQ(c.request.body, "{\"sku\":1}");
  EXPECT_EQ(c.request.priority, 7);
  const auto s = store_->status(id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::running);
  EXPECT_EQ(s->attempts, 1);
  EXPECT_FALSE(s->run_at);
}

TEST_F(sqlite_store_test, claim_takes_higher_priority_first_then_older_and_honours_the_limit) {
  open();
  const job_id low = created(order("low", std::nullopt, 0));
  clock_.advance(milliseconds(1));
  const job_id mid_old = created(order("mid old", std::nullopt, 5));
  clock_.advance(milliseconds(1));
  const job_id mid_new = created(order("mid new", std::nullopt, 5));
  clock_.advance(milliseconds(1));
  const job_id high = created(order("high", std::nullopt, 9));
  job_request other = order("other group", std::nullopt, 15);
  other.group = "mail";
  const job_id mail = created(other);

  // group_limit 3: three of "db" at most, whatever `limit` asks.
  const auto first = store_->claim("db", 10, 3, lease);
  ASSERT_EQ(first.size(), 3U);
  EXPECT_EQ(first[0].id, high);
  EXPECT_EQ(first[1].id, mid_old);
  EXPECT_EQ(first[2].id, mid_new);
  EXPECT_TRUE(store_->claim("db", 10, 3, lease).empty());  // three leases held
  EXPECT_EQ(state_of(low), job_state::queued);
  EXPECT_EQ(state_of(mail), job_state::queued);  // other groups untouched

  ASSERT_TRUE(store_->complete(first[0].id, first[0].fence, {}));
  const auto second = store_->claim("db", 10, 3, lease);
  ASSERT_EQ(second.size(), 1U);
  EXPECT_EQ(second[0].id, low);

  const auto mails = store_->claim("mail", 1, 1, lease);
  ASSERT_EQ(mails.size(), 1U);
  EXPECT_EQ(mails[0].id, mail);
}

TEST_F(sqlite_store_test, claim_takes_no_more_than_limit) {
  open();
  for (int i = 0; i < 5; ++i) created(order(std::to_string(i)));
  EXPECT_EQ(store_->claim("db", 2, 100, lease).size(), 2U);
  EXPECT_EQ(store_->claim("db", 0, 100, lease).size(), 0U);
  EXPECT_EQ(store_->claim("db", 10, 100, lease).size(), 3U);
}

TEST_F(sqlite_store_test, heartbeat_extends_the_lease) {
  open();
  const job_id id = created(order("a"));
  const claimed_job c = claim_one();
  clock_.advance(milliseconds(8000));
  ASSERT_TRUE(store_->heartbeat(id, c.fence, lease));  // now until t + 18 s
  clock_.advance(milliseconds(9000));                  // t + 17 s: past the first lease
  EXPECT_EQ(store_->requeue_expired(retry), 0U);
  EXPECT_EQ(state_of(id), job_state::running);
  clock_.advance(milliseconds(1000));  // t + 18 s
  EXPECT_EQ(store_->requeue_expired(retry), 1U);
  EXPECT_EQ(state_of(id), job_state::queued);
}

TEST_F(sqlite_store_test, complete_with_the_fence_stores_the_result) {
  open();
  const job_id id = created(order("a"));
  const claimed_job c = claim_one();
  clock_.advance(milliseconds(250));
  const job_result result{
      .status = 201, .headers = {{"location", "/orders/7"}}, .body = "{\"id\":7}"};
  EXPECT_FALSE(store_->complete(id, c.fence + 1, result));  // not the lease's token
  ASSERT_TRUE(store_->complete(id, c.fence, result));
  const auto s = store_->status(id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::succeeded);
  EXPECT_EQ(s->attempts, 1);
  EXPECT_EQ(s->finished, clock_.now());
  EXPECT_FALSE(s->run_at);
  ASSERT_TRUE(s->result);
  EXPECT_EQ(s->result->status, 201);
  EXPECT_EQ(s->result->headers, result.headers);
  EXPECT_EQ(s->result->body, "{\"id\":7}");
  // Finished: the token is spent.
  EXPECT_FALSE(store_->complete(id, c.fence, status_only(500)));
  EXPECT_FALSE(store_->heartbeat(id, c.fence, lease));
  EXPECT_FALSE(store_->fail(id, c.fence, "late", retry));
  EXPECT_EQ(store_->status(id)->result->status, 201);
  EXPECT_EQ(store_->depth("orders"), 0U);
}

TEST_F(sqlite_store_test, a_stale_fence_is_refused_after_the_job_was_reclaimed) {
  open();
  const job_id id = created(order("a"));
  const claimed_job paused = claim_one();
  clock_.advance(lease);
  EXPECT_EQ(store_->requeue_expired(retry), 1U);
  // Requeued but not yet re-claimed: the old token is already void.
  EXPECT_FALSE(store_->heartbeat(id, paused.fence, lease));
  const claimed_job rerun = claim_one();
  EXPECT_EQ(rerun.id, id);
  EXPECT_EQ(rerun.attempt, 2);
  EXPECT_GT(rerun.fence, paused.fence);

  EXPECT_FALSE(store_->complete(id, paused.fence, job_result{200, {}, "stale"}));
  EXPECT_FALSE(store_->fail(id, paused.fence, "stale", retry));
  EXPECT_FALSE(store_->heartbeat(id, paused.fence, lease));
  EXPECT_EQ(state_of(id), job_state::running);
  ASSERT_TRUE(store_->complete(id, rerun.fence, job_result{200, {}, "fresh"}));
  EXPECT_EQ(store_->status(id)->result->body, "fresh");
}

// The contract's two failures apart: false only for a lease that is no longer the token's;
// store_error when the database could not answer (here another connection holds the write
// lock past busy_timeout), with nothing changed, and the lease still the token's afterwards.
TEST_F(sqlite_store_test, a_locked_database_throws_store_error_and_only_a_lost_lease_is_false) {
  sqlite_options o = options();
  o.busy_timeout = milliseconds(50);
  open(o);
  const job_id id = created(order("a"));
  const claimed_job job = claim_one();
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(o.path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  EXPECT_THROW(store_->heartbeat(id, job.fence, lease), store_error);
  EXPECT_THROW(store_->complete(id, job.fence, status_only(201)), store_error);
  EXPECT_THROW(store_->fail(id, job.fence, "boom", retry), store_error);
  EXPECT_THROW(store_->heartbeat(id, job.fence + 1, lease), store_error);  // no answer either
  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
  EXPECT_FALSE(store_->heartbeat(id, job.fence + 1, lease));  // not the token: refused
  EXPECT_EQ(state_of(id), job_state::running);
  EXPECT_TRUE(store_->heartbeat(id, job.fence, lease));  // still the token's
  EXPECT_TRUE(store_->complete(id, job.fence, status_only(201)));
  EXPECT_FALSE(store_->complete(id, job.fence, status_only(500)));  // finished: refused
  EXPECT_FALSE(store_->fail(id, job.fence, "late", retry));
  EXPECT_EQ(store_->status(id)->result->status, 201);
}

// The settlements first, each against its own token, then the claim, which counts the group's
// leases as the settlements left them.
TEST_F(sqlite_store_test, settle_and_claim_settles_by_token_then_claims_within_the_group_limit) {
  open();
  std::vector<job_id> ids;
  for (int p = 9; p > 3; --p) ids.push_back(created(order(std::to_string(p), std::nullopt, p)));
  const auto held = store_->claim("db", 3, 3, lease);
  ASSERT_EQ(held.size(), 3U);
  clock_.advance(milliseconds(250));
  const std::vector<settlement> ended{
      {.what = settlement::kind::complete,
       .id = ids[0],
       .fence = held[0].fence,
       .result = {.status = 201, .headers = {}, .body = "ok"}},
      {.what = settlement::kind::fail,
       .id = ids[1],
       .fence = held[1].fence,
       .error = "boom",
       .retry = retry},
      {.what = settlement::kind::complete,
       .id = ids[2],
       .fence = held[2].fence + 1,  // not the lease's token
       .result = status_only(500)},
  };
  const settle_result r = store_->settle_and_claim(
      ended, {.group = "db", .limit = 5, .group_limit = 3, .lease = lease});
  EXPECT_EQ(r.accepted, (std::vector<bool>{true, true, false}));
  // The refused one still holds its lease: room for two once the others released theirs.
  ASSERT_EQ(r.claimed.size(), 2U);
  EXPECT_EQ(r.claimed[0].id, ids[3]);
  EXPECT_EQ(r.claimed[1].id, ids[4]);
  EXPECT_EQ(r.claimed[0].attempt, 1);
  EXPECT_EQ(r.claimed[0].lease_until, clock_.now() + lease);
  EXPECT_EQ(r.claimed[0].request.body, "6");
  const auto done = store_->status(ids[0]);
  ASSERT_TRUE(done && done->result);
  EXPECT_EQ(done->state, job_state::succeeded);
  EXPECT_EQ(done->result->status, 201);
  EXPECT_EQ(done->result->body, "ok");
  const auto retried = store_->status(ids[1]);
  ASSERT_TRUE(retried);
  EXPECT_EQ(retried->state, job_state::queued);
  EXPECT_EQ(retried->run_at, clock_.now() + milliseconds(1000));
  EXPECT_EQ(retried->last_error, "boom");
  EXPECT_EQ(state_of(ids[2]), job_state::running);
  EXPECT_EQ(state_of(ids[5]), job_state::queued);

  // The last attempt dies; limit 0 settles only.
  const settle_result last =
      store_->settle_and_claim(std::vector<settlement>{{.what = settlement::kind::fail,
                                                        .id = ids[2],
                                                        .fence = held[2].fence,
                                                        .error = "fatal",
                                                        .retry = {.max_attempts = 1}}},
                               {.group = "db", .limit = 0, .group_limit = 3, .lease = lease});
  EXPECT_EQ(last.accepted, (std::vector<bool>{true}));
  EXPECT_TRUE(last.claimed.empty());
  EXPECT_EQ(state_of(ids[2]), job_state::dead);
  EXPECT_EQ(state_of(ids[5]), job_state::queued);
}

// A failure anywhere in the call (here the claim's update, refused by a trigger) undoes the
// settlements too: no answer for any of them, and every lease is still its token's.
TEST_F(sqlite_store_test, a_failure_in_settle_and_claim_applies_none_of_it) {
  const sqlite_options o = options();
  open(o);
  const job_id a = created(order("a"));
  const job_id b = created(order("b"));
  const job_id c = created(order("c"));
  const auto held = store_->claim("db", 2, 10, lease);
  ASSERT_EQ(held.size(), 2U);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(o.path.c_str(), &other), SQLITE_OK);
  auto run = [&](const char* sql) {
    EXPECT_EQ(sqlite3_exec(other, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sql;
  };
  run("CREATE TRIGGER refuse_claims BEFORE UPDATE OF fence ON jobs "
      "BEGIN SELECT RAISE(ABORT, 'claims refused'); END");
  const std::vector<settlement> ended{
      {.what = settlement::kind::complete, .id = a, .fence = held[0].fence, .result = {}},
      {.what = settlement::kind::fail,
       .id = b,
       .fence = held[1].fence,
       .error = "x",
       .retry = retry},
  };
  const claim_request next{.group = "db", .limit = 5, .group_limit = 10, .lease = lease};
  EXPECT_THROW(store_->settle_and_claim(ended, next), store_error);
  EXPECT_EQ(state_of(a), job_state::running);
  EXPECT_EQ(state_of(b), job_state::running);
  EXPECT_EQ(state_of(c), job_state::queued);
  EXPECT_FALSE(store_->status(a)->result);
  EXPECT_TRUE(store_->heartbeat(a, held[0].fence, lease));
  EXPECT_TRUE(store_->heartbeat(b, held[1].fence, lease));

  run("DROP TRIGGER refuse_claims");
  sqlite3_close(other);
  const settle_result r = store_->settle_and_claim(ended, next);
  EXPECT_EQ(r.accepted, (std::vector<bool>{true, true}));
  ASSERT_EQ(r.claimed.size(), 1U);  // b waits for its backoff
  EXPECT_EQ(r.claimed[0].id, c);
  EXPECT_EQ(state_of(a), job_state::succeeded);
  EXPECT_EQ(state_of(b), job_state::queued);
}

TEST_F(sqlite_store_test, requeue_expired_reruns_with_one_more_attempt_and_says_why) {
  open();
  const job_id id = created(order("a"));
  claim_one();
  clock_.advance(lease - milliseconds(1));
  EXPECT_EQ(store_->requeue_expired(retry), 0U);
  clock_.advance(milliseconds(1));
  EXPECT_EQ(store_->requeue_expired(retry), 1U);
  const auto s = store_->status(id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::queued);
  EXPECT_EQ(s->attempts, 1);
  EXPECT_EQ(s->run_at, clock_.now());
  EXPECT_NE(s->last_error.find("lease expired"), std::string::npos);
  EXPECT_EQ(claim_one().attempt, 2);
}

TEST_F(sqlite_store_test, an_expired_last_attempt_makes_the_job_dead) {
  open();
  const job_id id = created(order("a"));
  for (int attempt = 1; attempt <= retry.max_attempts; ++attempt) {
    ASSERT_EQ(claim_one().attempt, attempt);
    clock_.advance(lease);
    ASSERT_EQ(store_->requeue_expired(retry), 1U);
  }
  const auto s = store_->status(id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::dead);
  EXPECT_EQ(s->attempts, retry.max_attempts);
  EXPECT_EQ(s->finished, clock_.now());
}

TEST_F(sqlite_store_test, fail_schedules_the_retry_at_the_backoff_time) {
  open();
  const job_id id = created(order("a"));
  claimed_job c = claim_one();
  unit_ = 0.0;  // the low edge of the jitter: 0.8 of the schedule
  ASSERT_TRUE(store_->fail(id, c.fence, "backend said 503", retry));
  auto s = store_->status(id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::queued);
  EXPECT_EQ(s->attempts, 1);
  EXPECT_EQ(s->run_at, clock_.now() + milliseconds(800));
  EXPECT_EQ(s->last_error, "backend said 503");
  EXPECT_FALSE(store_->heartbeat(id, c.fence, lease));

  clock_.advance(milliseconds(799));
  EXPECT_TRUE(store_->claim("db", 1, 10, lease).empty());  // not before its time
  clock_.advance(milliseconds(1));
  c = claim_one();
  EXPECT_EQ(c.attempt, 2);

  unit_ = 1.0;  // the high edge: 1.2 of base * 2
  ASSERT_TRUE(store_->fail(id, c.fence, "again", retry));
  EXPECT_EQ(store_->status(id)->run_at, clock_.now() + milliseconds(2400));
}

TEST_F(sqlite_store_test, the_last_failed_attempt_makes_the_job_dead_with_its_error) {
  open();
  const job_id id = created(order("a"));
  for (int attempt = 1; attempt < retry.max_attempts; ++attempt) {
    const claimed_job c = claim_one();
    ASSERT_TRUE(store_->fail(id, c.fence, "error " + std::to_string(attempt), retry));
    clock_.advance(retry.cap);
  }
  const claimed_job last = claim_one();
  EXPECT_EQ(last.attempt, retry.max_attempts);
  ASSERT_TRUE(store_->fail(id, last.fence, "final error", retry));
  const auto s = store_->status(id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::dead);
  EXPECT_EQ(s->attempts, retry.max_attempts);
  EXPECT_EQ(s->last_error, "final error");
  EXPECT_EQ(s->finished, clock_.now());
  EXPECT_FALSE(s->run_at);
  clock_.advance(retry.cap);
  EXPECT_TRUE(store_->claim("db", 1, 10, lease).empty());
  EXPECT_EQ(store_->depth("orders"), 0U);
}

TEST_F(sqlite_store_test, a_dead_job_can_be_requeued_or_purged_and_nothing_else_can) {
  open();
  const job_id dead = created(order("dead", std::nullopt, 5));  // claimed first
  const job_id queued = created(order("queued"));
  const claimed_job c = claim_one();
  ASSERT_EQ(c.id, dead);
  ASSERT_TRUE(store_->fail(dead, c.fence, "boom", {.max_attempts = 1}));
  ASSERT_EQ(state_of(dead), job_state::dead);

  EXPECT_FALSE(store_->requeue_dead(queued));
  EXPECT_FALSE(store_->purge(queued));
  EXPECT_FALSE(store_->purge(new_job_id()));

  clock_.advance(seconds(5));
  ASSERT_TRUE(store_->requeue_dead(dead));
  auto s = store_->status(dead);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::queued);
  EXPECT_EQ(s->attempts, 0);  // a fresh set of attempts
  EXPECT_EQ(s->run_at, clock_.now());
  EXPECT_EQ(s->last_error, "boom");          // kept for the operator
  EXPECT_FALSE(store_->requeue_dead(dead));  // no longer dead

  const claimed_job again = claim_one();
  EXPECT_EQ(again.id, dead);
  EXPECT_EQ(again.attempt, 1);
  EXPECT_GT(again.fence, c.fence);
  ASSERT_TRUE(store_->fail(dead, again.fence, "boom again", {.max_attempts = 1}));
  ASSERT_TRUE(store_->purge(dead));
  EXPECT_FALSE(store_->status(dead));
  EXPECT_EQ(state_of(queued), job_state::queued);
}

TEST_F(sqlite_store_test, prune_deletes_old_terminal_jobs_and_expired_keys_only) {
  open();
  const enqueue_options o{.key_retention = seconds(600)};
  const job_id old_done = created(order("old done", "k-done"), o);
  const job_id old_dead = created(order("old dead"), o);
  const job_id old_queued = created(order("old queued"), o);
  const job_id old_running = created(order("old running"), o);
  const job_id recent_done = created(order("recent done"), o);
  // Equal priorities and run_at: claims go in creation order.
  const auto first = store_->claim("db", 2, 10, lease);
  ASSERT_EQ(first.size(), 2U);
  ASSERT_TRUE(store_->complete(old_done, first[0].fence, {}));
  ASSERT_TRUE(store_->fail(old_dead, first[1].fence, "x", {.max_attempts = 1}));
  const auto rest = store_->claim("db", 3, 10, seconds(7200));
  ASSERT_EQ(rest.size(), 3U);
  ASSERT_EQ(rest[0].id, old_queued);
  ASSERT_EQ(rest[1].id, old_running);
  ASSERT_EQ(rest[2].id, recent_done);
  ASSERT_TRUE(store_->fail(old_queued, rest[0].fence, "retry later", retry));
  clock_.advance(seconds(7200));
  ASSERT_TRUE(store_->complete(recent_done, rest[2].fence, {}));

  // Now (t0 + 2 h): old_done and old_dead finished at t0, recent_done now; old_queued is
  // queued and old_running running since t0; the key expired at t0 + 10 min.
  const std::size_t pruned = store_->prune(seconds(3600));
  EXPECT_EQ(pruned, 3U);  // two jobs and one key
  EXPECT_FALSE(store_->status(old_done));
  EXPECT_FALSE(store_->status(old_dead));
  EXPECT_EQ(state_of(old_queued), job_state::queued);
  EXPECT_EQ(state_of(old_running), job_state::running);
  EXPECT_EQ(state_of(recent_done), job_state::succeeded);
  EXPECT_EQ(store_->prune(seconds(3600)), 0U);
  // The key was pruned: the same key makes a new job.
  EXPECT_EQ(store_->enqueue(order("other payload", "k-done"), {}).result, kind::created);

  clock_.advance(seconds(3601));
  EXPECT_EQ(store_->prune(seconds(3600)), 1U);  // recent_done, an hour later
  EXPECT_EQ(state_of(old_queued), job_state::queued);
  EXPECT_EQ(state_of(old_running), job_state::running);
}

TEST_F(sqlite_store_test, prune_works_through_more_rows_than_one_chunk) {
  sqlite_options o = options();
  o.synchronous = sqlite_options::sync_mode::normal;  // thousands of commits, no fsync each
  open(o);
  constexpr int jobs = 2500;
  for (int i = 0; i < jobs; ++i) created(order(std::to_string(i)));
  std::size_t done = 0;
  for (;;) {
    const auto batch = store_->claim("db", 500, jobs, lease);
    if (batch.empty()) break;
    for (const auto& c : batch) ASSERT_TRUE(store_->complete(c.id, c.fence, {}));
    done += batch.size();
  }
  ASSERT_EQ(done, std::size_t{jobs});
  clock_.advance(seconds(61));
  EXPECT_EQ(store_->prune(seconds(60)), std::size_t{jobs});
}

TEST_F(sqlite_store_test, jobs_survive_a_reopen) {
  open();
  const job_id id = created(order("a", "k"));
  open();  // the first store is closed first
  EXPECT_EQ(state_of(id), job_state::queued);
  EXPECT_EQ(store_->enqueue(order("a", "k"), {}).id, id);
}

TEST_F(sqlite_store_test, a_second_store_on_the_same_file_is_refused) {
  open();
  const job_id id = created(order("a"));
  sqlite_options o = options();
  try {
    sqlite_store second(o);
    FAIL() << "a second store opened the same file";
  } catch (const store_error& e) {
    EXPECT_NE(std::string(e.what()).find("held by another process"), std::string::npos) << e.what();
  }
  EXPECT_EQ(state_of(id), job_state::queued);  // the first one is unharmed
  store_.reset();
  sqlite_store third(o);  // free again once closed
  EXPECT_TRUE(third.status(id));
}

TEST_F(sqlite_store_test, the_schema_is_versioned_and_a_newer_one_is_refused) {
  const std::string path = dir_.file("jobs.db");
  open();
  store_.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  auto user_version = [db] {
    sqlite3_stmt* stmt = nullptr;
    sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &stmt, nullptr);
    sqlite3_step(stmt);
    const int v = sqlite3_column_int(stmt, 0);
    sqlite3_finalize(stmt);
    return v;
  };
  EXPECT_EQ(user_version(), sqlite_store::schema_version);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 99", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  try {
    open();
    FAIL() << "opened a newer schema";
  } catch (const store_error& e) {
    EXPECT_NE(std::string(e.what()).find("newer"), std::string::npos) << e.what();
  }
}

TEST_F(sqlite_store_test, a_version_1_file_migrates_and_depth_follows_every_transition) {
  const std::string path = dir_.file("jobs.db");
  open();
  const job_id done = created(order("done"));
  const job_id queued = created(order("queued"));
  job_request refund = order("other");
  refund.route = "refunds";
  created(refund);
  const claimed_job c = claim_one();
  ASSERT_EQ(c.id, done);
  ASSERT_TRUE(store_->complete(done, c.fence, {}));
  store_.reset();
  // Back to version 1 as an older build left it: no depth table, no triggers.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "DROP TRIGGER jobs_depth_insert; DROP TRIGGER jobs_depth_delete; "
                         "DROP TRIGGER jobs_depth_update; DROP TABLE route_depth; "
                         "PRAGMA user_version = 1",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  open();
  EXPECT_EQ(store_->depth("orders"), 1U);  // `queued`; `done` is terminal
  EXPECT_EQ(store_->depth("refunds"), 1U);
  // Running counts; a retry stays; dead leaves; a requeued dead job comes back; purge and
  // prune touch terminal jobs only.
  const claimed_job r = claim_one();
  ASSERT_EQ(r.id, queued);
  EXPECT_EQ(store_->depth("orders"), 1U);
  ASSERT_TRUE(store_->fail(queued, r.fence, "boom", {.max_attempts = 1}));
  EXPECT_EQ(store_->depth("orders"), 0U);
  ASSERT_TRUE(store_->requeue_dead(queued));
  EXPECT_EQ(store_->depth("orders"), 1U);
  created(order("more"));
  EXPECT_EQ(store_->depth("orders"), 2U);
  EXPECT_FALSE(store_->purge(done));  // only dead jobs are purged
  EXPECT_EQ(store_->depth("orders"), 2U);
  EXPECT_EQ(store_->depth("refunds"), 1U);
}

TEST_F(sqlite_store_test, a_file_that_is_not_a_database_is_refused) {
  const std::string path = dir_.file("jobs.db");
  {
    std::FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("this is not a SQLite database, just text long enough to have a header.....", f);
    std::fclose(f);
  }
  EXPECT_THROW(open(), store_error);
}

TEST_F(sqlite_store_test, synchronous_normal_and_checkpoint_work) {
  sqlite_options o = options();
  o.synchronous = sqlite_options::sync_mode::normal;
  open(o);
  std::vector<job_id> ids;
  for (int i = 0; i < 50; ++i) ids.push_back(created(order(std::to_string(i))));
  store_->checkpoint();
  std::error_code ec;
  EXPECT_EQ(std::filesystem::file_size(o.path + "-wal", ec), 0U) << ec.message();
  for (const auto& id : ids) EXPECT_EQ(state_of(id), job_state::queued);
  open(o);
  EXPECT_EQ(store_->depth("orders"), ids.size());
}

}  // namespace
}  // namespace qos::jobs

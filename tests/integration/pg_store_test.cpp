// The PostgreSQL job store against a private PostgreSQL 15 cluster (tests/support/pg_cluster):
// the job_store contract, the N bound across connections claiming at once, LISTEN/NOTIFY with
// its fallback poll, settle_and_claim() (its single transaction and the bound), and a stopped
// server. Each test gets a database of its own. Times come from the server's clock, so tests
// move a job's time there (run_at) instead of sleeping.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "qos/jobs/pg_store.hpp"
#include "support/eventually.hpp"
#include "support/pg_cluster.hpp"
#include "support/pg_env.hpp"

namespace {

using namespace std::chrono_literals;
using qos::jobs::enqueue_result;
using qos::jobs::job_request;
using qos::jobs::job_state;
using qos::jobs::pg_store;
using qos::test::eventually;
using kind = enqueue_result::kind;

// One cluster per test process, stopped at exit whatever the tests did.
using cluster_env = qos::test::pg_cluster_env;
[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new cluster_env);
using qos::test::sql;

// Holds a lock on the queue table that blocks every insert (SHARE: reads go on) until
// released or destroyed: enqueues then pile up behind the transactions it holds, which makes
// how they are grouped deterministic.
class insert_blocker {
 public:
  explicit insert_blocker(const std::string& conninfo) : conn_(PQconnectdb(conninfo.c_str())) {
    run("BEGIN");
    run("LOCK TABLE qos_jobs IN SHARE MODE");
  }
  insert_blocker(const insert_blocker&) = delete;
  insert_blocker& operator=(const insert_blocker&) = delete;
  ~insert_blocker() {
    release();
    PQfinish(conn_);
  }
  void release() {
    if (held_) run("COMMIT");
    held_ = false;
  }

 private:
  void run(const char* sql) {
    PGresult* r = PQexec(conn_, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
      ADD_FAILURE() << sql << ": " << PQerrorMessage(conn_);
    PQclear(r);
  }
  PGconn* conn_;
  bool held_ = true;
};

// Relays connections to the cluster's unix socket. Once armed, the first connection on which
// the server acknowledges a COMMIT is closed instead of passing that acknowledgement on: the
// transaction committed, and the client sees its connection break (a lost acknowledgement).
class ack_dropping_proxy {
 public:
  explicit ack_dropping_proxy(const std::string& cluster_conninfo) {
    const auto host = cluster_conninfo.find("host=") + 5;
    server_ =
        cluster_conninfo.substr(host, cluster_conninfo.find(' ', host) - host) + "/.s.PGSQL.5432";
    char tmpl[] = "/tmp/qos-pg-proxy-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    listen_ = unix_socket(dir_ + "/.s.PGSQL.5432", true);
    accepting_ = std::thread([this] { accept_loop(); });
  }
  ack_dropping_proxy(const ack_dropping_proxy&) = delete;
  ack_dropping_proxy& operator=(const ack_dropping_proxy&) = delete;
  ~ack_dropping_proxy() {
    stop_ = true;
    accepting_.join();
    for (auto& t : relays_) t.join();
    ::close(listen_);
    std::filesystem::remove_all(dir_);
  }
  std::string conninfo(const std::string& db) const {
    return "host=" + dir_ + " port=5432 user=postgres dbname=" + db +
           " sslmode=disable gssencmode=disable connect_timeout=5";
  }
  void arm() { armed_ = true; }
  int dropped() const { return dropped_; }

 private:
  static int unix_socket(const std::string& path, bool listen) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    const auto* sa = reinterpret_cast<const sockaddr*>(&a);
    const bool ok = listen ? ::bind(fd, sa, sizeof a) == 0 && ::listen(fd, 16) == 0
                           : ::connect(fd, sa, sizeof a) == 0;
    if (!ok) ADD_FAILURE() << path << ": " << std::strerror(errno);
    return fd;
  }
  void accept_loop() {
    while (!stop_) {
      pollfd p{listen_, POLLIN, 0};
      if (::poll(&p, 1, 50) != 1) continue;
      const int client = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      const int server = unix_socket(server_, false);
      relays_.emplace_back([this, client, server] { relay(client, server); });
    }
  }
  // Client to server: bytes as they come. Server to client: whole messages (a type byte and a
  // length that counts itself), so an acknowledgement is either passed on whole or not at all.
  void relay(int client, int server) {
    std::string pending;
    char buf[65536];
    bool open = true;
    while (open && !stop_) {
      pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      if (::poll(p, 2, 50) <= 0) continue;
      if (p[0].revents != 0) {
        const auto n = ::read(client, buf, sizeof buf);
        open = n > 0 && ::write(server, buf, static_cast<std::size_t>(n)) == n;
      }
      if (open && p[1].revents != 0) {
        const auto n = ::read(server, buf, sizeof buf);
        open = n > 0;
        if (open) pending.append(buf, static_cast<std::size_t>(n));
        std::size_t whole = 0;
        while (open && pending.size() - whole >= 5) {
          std::uint32_t len = 0;
          std::memcpy(&len, pending.data() + whole + 1, 4);
          len = ntohl(len);
          if (pending.size() - whole < 1 + std::size_t{len}) break;
          if (pending[whole] == 'C' && pending.compare(whole + 5, 6, "COMMIT") == 0 &&
              armed_.exchange(false)) {
            ++dropped_;
            open = false;
            break;
          }
          whole += 1 + len;
        }
        if (whole > 0 && ::write(client, pending.data(), whole) != static_cast<ssize_t>(whole))
          open = false;
        pending.erase(0, whole);
      }
    }
    ::close(client);
    ::close(server);
  }

  std::string server_;
  std::string dir_;
  int listen_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<bool> armed_{false};
  std::atomic<int> dropped_{0};
  std::thread accepting_;
  std::vector<std::thread> relays_;  // touched by accepting_ only until it is joined
};

job_request order(std::string body = "{}", int priority = 0) {
  return {.route = "orders",
          .group = "db",
          .method = "POST",
          .target = "/orders",
          .headers = {{"content-type", "application/json"}},
          .body = std::move(body),
          .priority = priority,
          .payload_hash = "h"};
}

job_request keyed(std::string key, std::string hash, std::string tenant = "") {
  auto r = order();
  r.idempotency_key = std::move(key);
  r.payload_hash = std::move(hash);
  r.tenant = std::move(tenant);
  return r;
}

class PgStore : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!qos::test::pg_cluster::available()) GTEST_SKIP() << qos::test::pg_missing_reason();
    ASSERT_TRUE(cluster_env::cluster) << "the test cluster did not start";
    conninfo_ = qos::test::fresh_database("t");
    store_ = make_store();
  }

  std::unique_ptr<pg_store> make_store(std::size_t pool = 4) {
    return std::make_unique<pg_store>(
        qos::jobs::pg_store_options{.conninfo = conninfo_, .pool_size = pool});
  }
  std::string q(const std::string& query, const std::vector<std::string>& args = {}) {
    return sql(conninfo_, query, args);
  }
  int running(const std::string& group) {
    return std::stoi(
        q("SELECT count(*) FROM qos_jobs WHERE grp = $1 AND state = 'running'", {group}));
  }
  std::string created(const job_request& r = order()) {
    auto e = store_->enqueue(r, {});
    EXPECT_EQ(e.result, kind::created) << e.error;
    return e.id;
  }
  // Moves a queued job's retry time to now, as if its backoff had passed.
  void due_now(const std::string& id) {
    q("UPDATE qos_jobs SET run_at = now() WHERE id = $1", {id});
  }

  std::string conninfo_;
  std::unique_ptr<pg_store> store_;
};

TEST_F(PgStore, EnqueueCommitsAQueuedJobWithAnUnguessableId) {
  auto e = store_->enqueue(order(), {});
  ASSERT_EQ(e.result, kind::created) << e.error;
  EXPECT_EQ(e.id.size(), 32u);
  EXPECT_EQ(e.id.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(created(), e.id);
  auto s = store_->status(e.id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::queued);
  EXPECT_EQ(s->attempts, 0);
  EXPECT_TRUE(s->run_at);
  EXPECT_EQ(store_->depth("orders"), 2u);
  EXPECT_EQ(store_->depth("other"), 0u);
  EXPECT_FALSE(store_->status("00000000000000000000000000000000"));
}

TEST_F(PgStore, MigrateIsIdempotentAndTheQueueTableIsTunedForChurn) {
  store_->migrate();
  auto second = make_store();
  second->migrate();
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs_schema"), "1");
  EXPECT_EQ(q("SELECT max(version) FROM qos_jobs_schema"), "1");
  const auto options =
      q("SELECT array_to_string(reloptions, ',') FROM pg_class"
        " WHERE relname = 'qos_jobs'");
  EXPECT_NE(options.find("fillfactor=70"), std::string::npos) << options;
  EXPECT_NE(options.find("autovacuum_vacuum_scale_factor"), std::string::npos) << options;
}

TEST_F(PgStore, RequestBytesRoundTripThroughAClaim) {
  auto r = order(std::string("a\0b\xff", 4), 7);
  r.headers = {{"x-a", std::string("\x01\x00", 2)}, {"x-b", ""}};
  r.tenant = "t\xe9";  // not UTF-8
  r.target = "/orders?q=%ff";
  created(r);
  auto jobs = store_->claim("db", 1, 1, 10s);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].request.body, r.body);
  EXPECT_EQ(jobs[0].request.headers, r.headers);
  EXPECT_EQ(jobs[0].request.tenant, r.tenant);
  EXPECT_EQ(jobs[0].request.target, r.target);
  EXPECT_EQ(jobs[0].request.method, "POST");
  EXPECT_EQ(jobs[0].request.route, "orders");
  EXPECT_EQ(jobs[0].request.priority, 7);
  EXPECT_FALSE(jobs[0].request.idempotency_key);
  EXPECT_EQ(jobs[0].attempt, 1);
  EXPECT_GT(jobs[0].lease_until, qos::jobs::wall_clock::now() - 1h);
}

TEST_F(PgStore, IdempotencyKeysAreScopedPerRouteAndTenant) {
  auto first = store_->enqueue(keyed("k1", "h1"), {});
  ASSERT_EQ(first.result, kind::created) << first.error;
  auto again = store_->enqueue(keyed("k1", "h1"), {});
  EXPECT_EQ(again.result, kind::duplicate);
  EXPECT_EQ(again.id, first.id);
  EXPECT_EQ(store_->enqueue(keyed("k1", "h2"), {}).result, kind::conflict);
  EXPECT_EQ(store_->enqueue(keyed("k1", "h1", "tenant-b"), {}).result, kind::created);
  auto other_route = keyed("k1", "h1");
  other_route.route = "refunds";
  EXPECT_EQ(store_->enqueue(other_route, {}).result, kind::created);
  EXPECT_EQ(store_->depth("orders"), 2u);
}

TEST_F(PgStore, AKeyPastItsRetentionStartsANewJob) {
  auto first = store_->enqueue(keyed("k", "h"), {.key_retention = 0s});
  ASSERT_EQ(first.result, kind::created);
  auto second = store_->enqueue(keyed("k", "h"), {});
  ASSERT_EQ(second.result, kind::created);
  EXPECT_NE(second.id, first.id);
  EXPECT_EQ(store_->enqueue(keyed("k", "h"), {}).id, second.id);
}

TEST_F(PgStore, HundredConcurrentDuplicatesCreateOneJob) {
  auto wide = make_store(16);
  std::vector<std::thread> threads;
  std::mutex m;
  std::vector<enqueue_result> results;
  std::atomic<bool> go{false};
  for (int i = 0; i < 100; ++i) {
    threads.emplace_back([&] {
      while (!go) std::this_thread::yield();
      auto r = wide->enqueue(keyed("same", "h"), {});
      std::lock_guard lock(m);
      results.push_back(r);
    });
  }
  go = true;
  for (auto& t : threads) t.join();
  ASSERT_EQ(results.size(), 100u);
  const auto created_n = std::count_if(results.begin(), results.end(),
                                       [](const auto& r) { return r.result == kind::created; });
  EXPECT_EQ(created_n, 1);
  std::set<std::string> ids;
  for (const auto& r : results) {
    EXPECT_TRUE(r.result == kind::created || r.result == kind::duplicate) << r.error;
    ids.insert(r.id);
  }
  EXPECT_EQ(ids.size(), 1u);
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs"), "1");
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs_keys"), "1");
}

TEST_F(PgStore, TheDepthCapRefusesAndStoresNothing) {
  const qos::jobs::enqueue_options cap{.max_depth = 2};
  ASSERT_EQ(store_->enqueue(order(), cap).result, kind::created);
  ASSERT_EQ(store_->enqueue(order(), cap).result, kind::created);
  EXPECT_EQ(store_->enqueue(order(), cap).result, kind::full);
  EXPECT_EQ(store_->enqueue(keyed("k", "h"), cap).result, kind::full);
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs"), "2");
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs_keys"), "0");  // the refused key is not kept
  auto jobs = store_->claim("db", 1, 8, 10s);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(store_->enqueue(order(), cap).result, kind::full);  // running counts too
  ASSERT_TRUE(store_->complete(jobs[0].id, jobs[0].fence, {}));
  EXPECT_EQ(store_->enqueue(keyed("k", "h"), cap).result, kind::created);
}

// A count is reused while this process's enqueues keep it below half the cap: near the cap
// every enqueue counts again, so one process meets the cap exactly; and a count that went
// stale (jobs finished elsewhere) is not taken for a full queue.
TEST_F(PgStore, TheCapHoldsExactlyForOneProcessThoughCountsAreReused) {
  const qos::jobs::enqueue_options cap{.max_depth = 10};
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(store_->enqueue(order(std::to_string(i)), cap).result, kind::created) << i;
  }
  EXPECT_EQ(store_->enqueue(order("11"), cap).result, kind::full);
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs"), "10");
  q("UPDATE qos_jobs SET state = 'succeeded', finished = now()");  // done elsewhere
  EXPECT_EQ(store_->enqueue(order("12"), cap).result, kind::created);
  const qos::jobs::enqueue_options big{.max_depth = 1000};
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(store_->enqueue(order("b" + std::to_string(i)), big).result, kind::created);
  }
  EXPECT_EQ(store_->depth("orders"), 21u);
}

// Keyless enqueues share transactions: while the inserts are blocked, every caller joins the
// queue or a transaction in flight (at most enqueue_batches of them); once unblocked, the
// waiting ones go in one transaction. Each caller gets the id of its own row.
TEST_F(PgStore, ConcurrentKeylessEnqueuesAreCommittedTogetherEachWithItsOwnId) {
  auto grouped = std::make_unique<pg_store>(
      qos::jobs::pg_store_options{.conninfo = conninfo_, .pool_size = 4, .enqueue_batches = 2});
  constexpr int n = 64;
  std::vector<enqueue_result> results(n);
  bool all_in = false;
  qos::jobs::pg_store_stats held;
  {
    std::vector<std::jthread> callers;
    insert_blocker blocker(conninfo_);  // released before the callers are joined
    for (int i = 0; i < n; ++i) {
      callers.emplace_back(
          [&, i] { results[i] = grouped->enqueue(order("j" + std::to_string(i)), {}); });
    }
    all_in = eventually([&] {
      const auto s = grouped->stats();
      return s.enqueue_waiting + s.enqueue_rows == n;
    });
    held = grouped->stats();
  }
  ASSERT_TRUE(all_in);
  EXPECT_GE(held.enqueue_batches, 1u);
  EXPECT_LE(held.enqueue_batches, 2u);  // no transaction ended while blocked
  std::set<std::string> ids;
  std::vector<std::string> pairs;
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(results[i].result, kind::created) << i << ": " << results[i].error;
    ids.insert(results[i].id);
    pairs.push_back(results[i].id + "=j" + std::to_string(i));
  }
  EXPECT_EQ(ids.size(), static_cast<std::size_t>(n));
  std::sort(pairs.begin(), pairs.end());
  std::string expected;
  for (const auto& p : pairs) expected += (expected.empty() ? "" : ",") + p;
  EXPECT_EQ(q("SELECT string_agg(id || '=' || convert_from(body, 'UTF8'), ',' ORDER BY id)"
              " FROM qos_jobs WHERE state = 'queued'"),
            expected);
  const auto s = grouped->stats();
  EXPECT_EQ(s.enqueue_rows, static_cast<std::uint64_t>(n));
  EXPECT_GT(s.enqueue_rows, s.enqueue_batches);
  EXPECT_LE(s.enqueue_batches, 4u);  // the blocked ones, then the rest together
  EXPECT_EQ(s.enqueue_waiting, 0u);
  EXPECT_EQ(grouped->depth("orders"), static_cast<std::size_t>(n));
}

// More callers wait than a batch takes: batches of at most enqueue_batch_rows follow one
// another (two at a time), led by callers whose own entries may be further back, until every
// caller has its answer.
TEST_F(PgStore, CallersBeyondOneBatchAreServedByTheBatchesThatFollow) {
  auto small = std::make_unique<pg_store>(qos::jobs::pg_store_options{
      .conninfo = conninfo_, .pool_size = 4, .enqueue_batches = 2, .enqueue_batch_rows = 4});
  constexpr int n = 30;
  std::vector<enqueue_result> results(n);
  bool all_in = false;
  {
    std::vector<std::jthread> callers;
    insert_blocker blocker(conninfo_);
    for (int i = 0; i < n; ++i) {
      callers.emplace_back([&, i] { results[i] = small->enqueue(order(std::to_string(i)), {}); });
    }
    all_in = eventually([&] {
      const auto s = small->stats();
      return s.enqueue_waiting + s.enqueue_rows == n;
    });
  }
  ASSERT_TRUE(all_in);
  std::set<std::string> ids;
  for (const auto& r : results) {
    EXPECT_EQ(r.result, kind::created) << r.error;
    ids.insert(r.id);
  }
  EXPECT_EQ(ids.size(), static_cast<std::size_t>(n));
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs"), std::to_string(n));
  const auto s = small->stats();
  EXPECT_EQ(s.enqueue_rows, static_cast<std::uint64_t>(n));
  EXPECT_GE(s.enqueue_batches, static_cast<std::uint64_t>((n + 3) / 4));
  EXPECT_EQ(s.enqueue_waiting, 0u);
}

// Each enqueue's statement counts the rows before it in its transaction: 40 callers against a
// cap of 10, grouped into at most two transactions (one at a time), get exactly 10 jobs.
TEST_F(PgStore, TheCapIsExactRowByRowWithinATransaction) {
  auto grouped = std::make_unique<pg_store>(
      qos::jobs::pg_store_options{.conninfo = conninfo_, .pool_size = 4, .enqueue_batches = 1});
  constexpr int n = 40;
  const qos::jobs::enqueue_options cap{.max_depth = 10};
  std::vector<enqueue_result> results(n);
  bool all_in = false;
  {
    std::vector<std::jthread> callers;
    insert_blocker blocker(conninfo_);
    for (int i = 0; i < n; ++i) {
      callers.emplace_back(
          [&, i] { results[i] = grouped->enqueue(order(std::to_string(i)), cap); });
    }
    all_in = eventually([&] {
      const auto s = grouped->stats();
      return s.enqueue_waiting + s.enqueue_rows == n;
    });
    EXPECT_EQ(grouped->stats().enqueue_batches, 1u);
  }
  ASSERT_TRUE(all_in);
  int created_n = 0;
  int full_n = 0;
  for (const auto& r : results) {
    created_n += r.result == kind::created;
    full_n += r.result == kind::full;
    EXPECT_TRUE(r.result == kind::created || r.result == kind::full) << r.error;
  }
  EXPECT_EQ(created_n, 10);
  EXPECT_EQ(full_n, 30);
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs"), "10");
  const auto s = grouped->stats();
  EXPECT_EQ(s.enqueue_rows, static_cast<std::uint64_t>(n));
  EXPECT_LE(s.enqueue_batches, 2u);  // so one transaction carried at least 20 of them
}

// A transaction that fails answers every enqueue it carried `unavailable` and stores none of
// them: one row the table refuses sinks the seven others of its batch, not the batch before.
TEST_F(PgStore, AFailedBatchAnswersUnavailableToEveryCallerAndStoresNothing) {
  q("ALTER TABLE qos_jobs ADD CONSTRAINT no_poison CHECK (body <> 'poison'::bytea)");
  auto grouped = std::make_unique<pg_store>(
      qos::jobs::pg_store_options{.conninfo = conninfo_, .pool_size = 4, .enqueue_batches = 1});
  enqueue_result first;
  std::vector<enqueue_result> results(8);
  bool first_in = false;
  bool rest_in = false;
  {
    std::vector<std::jthread> callers;
    insert_blocker blocker(conninfo_);
    callers.emplace_back([&] { first = grouped->enqueue(order("first"), {}); });
    first_in = eventually([&] { return grouped->stats().enqueue_rows == 1; });
    for (int i = 0; i < 8; ++i) {
      callers.emplace_back([&, i] {
        results[i] = grouped->enqueue(order(i == 3 ? "poison" : "b" + std::to_string(i)), {});
      });
    }
    rest_in = eventually([&] { return grouped->stats().enqueue_waiting == 8; });
  }
  ASSERT_TRUE(first_in);
  ASSERT_TRUE(rest_in);
  EXPECT_EQ(first.result, kind::created) << first.error;
  for (const auto& r : results) {
    EXPECT_EQ(r.result, kind::unavailable);
    EXPECT_NE(r.error.find("no_poison"), std::string::npos) << r.error;
    EXPECT_TRUE(r.id.empty());
  }
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs"), "1");
  EXPECT_EQ(q("SELECT convert_from(body, 'UTF8') FROM qos_jobs"), "first");
  const auto s = grouped->stats();
  EXPECT_EQ(s.enqueue_batches, 2u);
  EXPECT_EQ(s.enqueue_rows, 9u);
  EXPECT_NE(grouped->last_error().find("no_poison"), std::string::npos);
  // The failed transaction was rolled back on its connection, which serves the next ones.
  EXPECT_EQ(grouped->enqueue(order("after"), {}).result, kind::created);
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs"), "2");
}

// The destructor waits for the enqueues in flight and the ones queued behind them: every
// caller gets its answer, and the jobs are stored. (Destroying a store that callers still use
// is their bug; this is the safety net. The pause only makes it likely that the destructor is
// already waiting when the inserts go on; the assertions hold either way.)
TEST_F(PgStore, ABatchWhoseCommitAcknowledgementIsLostAnswersFromWhatWasStored) {
  const std::string db = conninfo_.substr(
      conninfo_.find("dbname=") + 7,
      conninfo_.find(' ', conninfo_.find("dbname=")) - conninfo_.find("dbname=") - 7);
  ack_dropping_proxy proxy(cluster_env::cluster->conninfo());
  pg_store through(qos::jobs::pg_store_options{.conninfo = proxy.conninfo(db), .pool_size = 2});
  ASSERT_EQ(through.enqueue(order("warm"), {}).result, kind::created);
  proxy.arm();
  // A cap of 2 with one row already there: the first row of this batch is stored, none after.
  qos::jobs::enqueue_options capped{.max_depth = 2};
  const auto e = through.enqueue(order("lost-ack"), capped);
  EXPECT_EQ(proxy.dropped(), 1) << "the proxy never saw the COMMIT";
  // Committed: a 202 with the stored id, not a 503 for a job that will run all the same.
  ASSERT_EQ(e.result, kind::created) << e.error;
  EXPECT_EQ(q("SELECT convert_from(body, 'UTF8') FROM qos_jobs WHERE id = $1", {e.id}), "lost-ack");
  EXPECT_FALSE(through.last_error().empty());
  // The store goes on through a fresh connection; the cap now refuses.
  EXPECT_EQ(through.enqueue(order("full"), capped).result, kind::full);
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs"), "2");
}

TEST_F(PgStore, DestroyingTheStoreAnswersTheEnqueuesStillWaiting) {
  auto grouped = std::make_unique<pg_store>(
      qos::jobs::pg_store_options{.conninfo = conninfo_, .pool_size = 2, .enqueue_batches = 1});
  pg_store* raw = grouped.get();
  constexpr int n = 6;
  std::vector<enqueue_result> results(n);
  bool all_in = false;
  {
    std::vector<std::jthread> callers;
    insert_blocker blocker(conninfo_);
    for (int i = 0; i < n; ++i) {
      callers.emplace_back([&, i] { results[i] = raw->enqueue(order(std::to_string(i)), {}); });
    }
    all_in = eventually([&] {
      const auto s = raw->stats();
      return s.enqueue_waiting + s.enqueue_rows == n;
    });
    callers.emplace_back([&] { grouped.reset(); });
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(all_in);
  EXPECT_FALSE(grouped);
  for (const auto& r : results) EXPECT_EQ(r.result, kind::created) << r.error;
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs"), std::to_string(n));
}

TEST_F(PgStore, ClaimTakesHigherPriorityFirstThenOldestAndRespectsTheGroupLimit) {
  const auto low1 = created(order("low1", 1));
  const auto high = created(order("high", 9));
  const auto low2 = created(order("low2", 1));
  auto other = order("other", 15);
  other.group = "mail";
  created(other);
  auto first = store_->claim("db", 2, 8, 10s);
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].id, high);
  EXPECT_EQ(first[1].id, low1);
  // Two leases held: a group limit of 3 leaves room for one more, whatever `limit` asks.
  auto second = store_->claim("db", 5, 3, 10s);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].id, low2);
  EXPECT_TRUE(store_->claim("db", 5, 3, 10s).empty());
  EXPECT_EQ(running("db"), 3);
  EXPECT_EQ(store_->claim("mail", 5, 1, 10s).size(), 1u);
  ASSERT_TRUE(store_->complete(first[0].id, first[0].fence, {}));
  created(order("late", 0));
  EXPECT_EQ(store_->claim("db", 5, 3, 10s).size(), 1u);
  EXPECT_TRUE(store_->claim("db", 0, 3, 10s).empty());
}

TEST_F(PgStore, FencingRejectsTheStaleTokenAfterExpiryAndReclaim) {
  const auto id = created();
  auto a = store_->claim("db", 1, 1, 300ms);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_TRUE(store_->heartbeat(id, a[0].fence, 300ms));
  // The lease lapses by the server's clock; any process may take it back.
  ASSERT_TRUE(eventually([&] { return store_->requeue_expired({}) == 1; }, 10s));
  auto b = store_->claim("db", 1, 1, 10s);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].id, id);
  EXPECT_GT(b[0].fence, a[0].fence);
  EXPECT_EQ(b[0].attempt, 2);
  // The paused worker wakes up: nothing of it is accepted.
  EXPECT_FALSE(store_->heartbeat(id, a[0].fence, 10s));
  EXPECT_FALSE(store_->complete(id, a[0].fence, {.status = 500}));
  EXPECT_FALSE(store_->fail(id, a[0].fence, "late", {}));
  EXPECT_TRUE(store_->heartbeat(id, b[0].fence, 10s));
  ASSERT_TRUE(store_->complete(
      id, b[0].fence, {.status = 201, .headers = {{"location", "/orders/7"}}, .body = "ok"}));
  EXPECT_FALSE(store_->complete(id, b[0].fence, {.status = 500}));  // once only
  auto s = store_->status(id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::succeeded);
  EXPECT_EQ(s->attempts, 2);
  ASSERT_TRUE(s->result);
  EXPECT_EQ(s->result->status, 201);
  EXPECT_EQ(s->result->body, "ok");
  EXPECT_EQ(s->result->headers.at(0).second, "/orders/7");
  EXPECT_FALSE(s->run_at);
  EXPECT_GE(s->finished, s->created);
}

TEST_F(PgStore, AHeartbeatKeepsTheLeaseFromBeingRequeued) {
  const auto id = created();
  auto a = store_->claim("db", 1, 1, 300ms);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_TRUE(store_->heartbeat(id, a[0].fence, 60s));
  EXPECT_EQ(q("SELECT lease_until > now() + interval '50 seconds' FROM qos_jobs"), "t");
  EXPECT_EQ(store_->requeue_expired({}), 0u);
}

TEST_F(PgStore, RequeueExpiredCountsTheAttemptAndKillsAfterTheLast) {
  const auto id = created();
  const qos::jobs::retry_policy two{.max_attempts = 2};
  ASSERT_EQ(store_->claim("db", 1, 1, 300ms).size(), 1u);
  ASSERT_TRUE(eventually([&] { return store_->requeue_expired(two) == 1; }, 10s));
  auto s = store_->status(id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::queued);
  EXPECT_EQ(s->attempts, 1);
  EXPECT_NE(s->last_error.find("lease expired"), std::string::npos);
  auto again = store_->claim("db", 1, 1, 300ms);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempt, 2);
  ASSERT_TRUE(eventually([&] { return store_->requeue_expired(two) == 1; }, 10s));
  EXPECT_EQ(store_->status(id)->state, job_state::dead);
}

TEST_F(PgStore, FailRetriesWithCappedBackoffThenDiesAndCanBeRequeuedOrPurged) {
  const qos::jobs::retry_policy retry{
      .max_attempts = 3, .base = 60000ms, .cap = 100000ms, .jitter = 0.2};
  const auto id = created();
  auto delay = [&] {
    return std::stod(
        q("SELECT extract(epoch FROM run_at - now()) FROM qos_jobs WHERE id = $1", {id}));
  };
  auto j = store_->claim("db", 1, 1, 10s);
  ASSERT_EQ(j.size(), 1u);
  ASSERT_TRUE(store_->fail(id, j[0].fence, "boom 1", retry));
  auto s = store_->status(id);
  EXPECT_EQ(s->state, job_state::queued);
  EXPECT_EQ(s->last_error, "boom 1");
  EXPECT_GE(delay(), 47.0);  // 60 s ± 20 %
  EXPECT_LE(delay(), 72.0);
  EXPECT_TRUE(store_->claim("db", 1, 1, 10s).empty());  // not before its run_at
  due_now(id);
  j = store_->claim("db", 1, 1, 10s);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0].attempt, 2);
  ASSERT_TRUE(store_->fail(id, j[0].fence, "boom 2", retry));
  EXPECT_GE(delay(), 79.0);  // 120 s capped at 100 s, then ± 20 % (jitter spreads capped retries)
  EXPECT_LE(delay(), 120.5);
  due_now(id);
  j = store_->claim("db", 1, 1, 10s);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_FALSE(store_->purge(id));  // running: not the operator's to delete
  ASSERT_TRUE(store_->fail(id, j[0].fence, "boom 3", retry));
  s = store_->status(id);
  EXPECT_EQ(s->state, job_state::dead);
  EXPECT_EQ(s->attempts, 3);
  EXPECT_EQ(s->last_error, "boom 3");
  EXPECT_FALSE(s->run_at);
  EXPECT_GE(s->finished, s->created);
  EXPECT_TRUE(store_->claim("db", 1, 1, 10s).empty());
  EXPECT_EQ(store_->depth("orders"), 0u);

  ASSERT_TRUE(store_->requeue_dead(id));
  EXPECT_FALSE(store_->requeue_dead(id));
  s = store_->status(id);
  EXPECT_EQ(s->state, job_state::queued);
  EXPECT_EQ(s->attempts, 0);
  j = store_->claim("db", 1, 1, 10s);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0].attempt, 1);
  ASSERT_TRUE(store_->fail(id, j[0].fence, "fatal", {.max_attempts = 1}));
  EXPECT_EQ(store_->status(id)->state, job_state::dead);
  ASSERT_TRUE(store_->purge(id));
  EXPECT_FALSE(store_->status(id));
  EXPECT_FALSE(store_->purge(id));
}

TEST_F(PgStore, PruneDeletesOnlyTerminalJobsPastRetentionAndExpiredKeys) {
  const auto running_id = created();
  const auto done = created();
  const auto dead = created();
  std::map<std::string, qos::jobs::claimed_job> by_id;
  for (auto& j : store_->claim("db", 3, 8, 10s)) by_id[j.id] = j;
  ASSERT_EQ(by_id.size(), 3u);
  const auto queued = created();
  ASSERT_TRUE(store_->complete(done, by_id[done].fence, {}));
  ASSERT_TRUE(store_->fail(dead, by_id[dead].fence, "x", {.max_attempts = 1}));
  store_->enqueue(keyed("old", "h"), {.key_retention = 0s});
  store_->enqueue(keyed("young", "h"), {});
  // An expired lease is still not terminal.
  q("UPDATE qos_jobs SET lease_until = now() - interval '1 hour', created = now() - interval "
    "'2 days' WHERE id = $1",
    {running_id});

  EXPECT_EQ(store_->prune(3600s), 0u);                      // finished just now: within retention
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs_keys"), "1");  // the expired key is gone
  q("UPDATE qos_jobs SET finished = finished - interval '2 hours'");
  EXPECT_EQ(store_->prune(3600s), 2u);
  EXPECT_FALSE(store_->status(done));
  EXPECT_FALSE(store_->status(dead));
  EXPECT_EQ(store_->status(queued)->state, job_state::queued);
  EXPECT_EQ(store_->status(running_id)->state, job_state::running);
  EXPECT_EQ(store_->prune(0s), 0u);
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs"), "4");  // queued, running, two keyed
}

// Two stores (two pools of connections, as two processes would have) claim one group at once.
// The database's count of running rows never exceeds N, nor does our own count of jobs between
// their claim and their completion; no job runs twice.
TEST_F(PgStore, TheGroupBoundHoldsAcrossConnectionsClaimingConcurrently) {
  constexpr int n = 3;
  constexpr int jobs = 60;
  for (int i = 0; i < jobs; ++i) created(order(std::to_string(i), i % 4));
  std::vector<std::unique_ptr<pg_store>> stores;
  stores.push_back(make_store(2));
  stores.push_back(make_store(2));
  std::atomic<int> in_flight{0}, max_in_flight{0}, completed{0}, db_max{0};
  std::atomic<bool> done{false};
  std::mutex m;
  std::multiset<std::string> ran;
  std::thread monitor([&] {
    while (!done) {
      const int r = running("db");
      int seen = db_max.load();
      while (r > seen && !db_max.compare_exchange_weak(seen, r)) {
      }
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      auto& store = *stores[w % 2];
      const auto until = std::chrono::steady_clock::now() + 60s;
      while (completed < jobs && std::chrono::steady_clock::now() < until) {
        auto got = store.claim("db", 2, n, 30s);
        for (auto& j : got) {
          const int now = ++in_flight;
          int seen = max_in_flight.load();
          while (now > seen && !max_in_flight.compare_exchange_weak(seen, now)) {
          }
          {
            std::lock_guard lock(m);
            ran.insert(j.id);
          }
        }
        std::this_thread::sleep_for(2ms);  // the jobs' work
        for (auto& j : got) {
          --in_flight;  // before complete(): the database still counts it as running
          EXPECT_TRUE(store.complete(j.id, j.fence, {}));
          ++completed;
        }
        if (got.empty()) std::this_thread::sleep_for(1ms);
      }
    });
  }
  for (auto& t : workers) t.join();
  done = true;
  monitor.join();
  EXPECT_EQ(completed.load(), jobs);
  EXPECT_LE(max_in_flight.load(), n);
  EXPECT_LE(db_max.load(), n);
  EXPECT_GE(max_in_flight.load(), 2);  // they did overlap: the bound was exercised
  std::set<std::string> unique(ran.begin(), ran.end());
  EXPECT_EQ(unique.size(), ran.size());
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs WHERE state = 'succeeded'"), std::to_string(jobs));
}

// The settlements first, each against its own token, then the claim, which counts the group's
// leases as the settlements left them; one transaction.
TEST_F(PgStore, SettleAndClaimSettlesByTokenThenClaimsWithinTheGroupLimit) {
  using qos::jobs::settlement;
  const qos::jobs::retry_policy retry{
      .max_attempts = 3, .base = 60000ms, .cap = 100000ms, .jitter = 0.2};
  std::vector<std::string> ids;
  for (int p = 9; p > 3; --p) ids.push_back(created(order(std::to_string(p), p)));
  const auto held = store_->claim("db", 3, 3, 10s);
  ASSERT_EQ(held.size(), 3u);
  const std::vector<settlement> ended{
      {.what = settlement::kind::complete,
       .id = ids[0],
       .fence = held[0].fence,
       .result = {.status = 201, .headers = {{"location", "/orders/9"}}, .body = "ok"}},
      {.what = settlement::kind::fail,
       .id = ids[1],
       .fence = held[1].fence,
       .error = "boom",
       .retry = retry},
      {.what = settlement::kind::complete,
       .id = ids[2],
       .fence = held[2].fence + 1,  // not the lease's token
       .result = {.status = 500}},
  };
  const auto r =
      store_->settle_and_claim(ended, {.group = "db", .limit = 5, .group_limit = 3, .lease = 10s});
  EXPECT_EQ(r.accepted, (std::vector<bool>{true, true, false}));
  // The refused one still holds its lease: room for two once the others released theirs.
  ASSERT_EQ(r.claimed.size(), 2u);
  EXPECT_EQ(r.claimed[0].id, ids[3]);
  EXPECT_EQ(r.claimed[1].id, ids[4]);
  EXPECT_EQ(r.claimed[0].attempt, 1);
  EXPECT_EQ(r.claimed[0].request.body, "6");
  EXPECT_EQ(running("db"), 3);
  const auto done = store_->status(ids[0]);
  ASSERT_TRUE(done && done->result);
  EXPECT_EQ(done->state, job_state::succeeded);
  EXPECT_EQ(done->result->status, 201);
  EXPECT_EQ(done->result->body, "ok");
  EXPECT_EQ(done->result->headers.at(0).second, "/orders/9");
  const auto retried = store_->status(ids[1]);
  ASSERT_TRUE(retried);
  EXPECT_EQ(retried->state, job_state::queued);
  EXPECT_EQ(retried->last_error, "boom");
  const double delay = std::stod(
      q("SELECT extract(epoch FROM run_at - now()) FROM qos_jobs WHERE id = $1", {ids[1]}));
  EXPECT_GE(delay, 47.0);  // attempt 1: 60 s ± 20 %
  EXPECT_LE(delay, 72.0);
  EXPECT_EQ(store_->status(ids[2])->state, job_state::running);

  // A second attempt's delay is the row's own (120 s capped at 100 s, ± 20 %); the last
  // attempt dies; limit 0 settles only.
  due_now(ids[1]);
  q("UPDATE qos_jobs SET priority = 15 WHERE id = $1", {ids[1]});
  const auto again = store_->claim("db", 1, 4, 10s);
  ASSERT_EQ(again.size(), 1u);
  ASSERT_EQ(again[0].id, ids[1]);
  ASSERT_EQ(again[0].attempt, 2);
  const auto last =
      store_->settle_and_claim(std::vector<settlement>{{.what = settlement::kind::fail,
                                                        .id = ids[1],
                                                        .fence = again[0].fence,
                                                        .error = "again",
                                                        .retry = retry},
                                                       {.what = settlement::kind::fail,
                                                        .id = ids[2],
                                                        .fence = held[2].fence,
                                                        .error = "fatal",
                                                        .retry = {.max_attempts = 1}}},
                               {.group = "db", .limit = 0, .group_limit = 3, .lease = 10s});
  EXPECT_EQ(last.accepted, (std::vector<bool>{true, true}));
  EXPECT_TRUE(last.claimed.empty());
  const double second = std::stod(
      q("SELECT extract(epoch FROM run_at - now()) FROM qos_jobs WHERE id = $1", {ids[1]}));
  EXPECT_GE(second, 79.0);
  EXPECT_LE(second, 120.5);
  const auto dead = store_->status(ids[2]);
  ASSERT_TRUE(dead);
  EXPECT_EQ(dead->state, job_state::dead);
  EXPECT_EQ(dead->last_error, "fatal");
  EXPECT_GE(dead->finished, dead->created);
  EXPECT_EQ(store_->status(ids[5])->state, job_state::queued);
  EXPECT_EQ(running("db"), 2);
}

// A failure anywhere in the transaction (here the claim's update, refused by a trigger) undoes
// the settlements too: no answer for any of them, every lease still its token's, and the
// connection serves the next call.
TEST_F(PgStore, AFailureInSettleAndClaimAppliesNoneOfIt) {
  using qos::jobs::settlement;
  const auto a = created(order("a", 3));
  const auto b = created(order("b", 2));
  const auto c = created(order("c", 1));
  const auto held = store_->claim("db", 2, 10, 10s);
  ASSERT_EQ(held.size(), 2u);
  q("CREATE FUNCTION refuse_claims() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN RAISE EXCEPTION 'claims refused'; END $$");
  q("CREATE TRIGGER refuse_claims BEFORE UPDATE ON qos_jobs FOR EACH ROW"
    " WHEN (OLD.state = 'queued' AND NEW.state = 'running') EXECUTE FUNCTION refuse_claims()");
  const std::vector<settlement> ended{
      {.what = settlement::kind::complete, .id = a, .fence = held[0].fence, .result = {}},
      {.what = settlement::kind::fail, .id = b, .fence = held[1].fence, .error = "x", .retry = {}},
  };
  const qos::jobs::claim_request next{.group = "db", .limit = 5, .group_limit = 10, .lease = 10s};
  EXPECT_THROW(store_->settle_and_claim(ended, next), qos::jobs::store_error);
  EXPECT_NE(store_->last_error().find("claims refused"), std::string::npos);
  EXPECT_EQ(store_->status(a)->state, job_state::running);
  EXPECT_EQ(store_->status(b)->state, job_state::running);
  EXPECT_EQ(store_->status(c)->state, job_state::queued);
  EXPECT_TRUE(store_->heartbeat(a, held[0].fence, 10s));
  EXPECT_TRUE(store_->heartbeat(b, held[1].fence, 10s));

  q("DROP TRIGGER refuse_claims ON qos_jobs");
  const auto r = store_->settle_and_claim(ended, next);
  EXPECT_EQ(r.accepted, (std::vector<bool>{true, true}));
  ASSERT_EQ(r.claimed.size(), 1u);  // b waits for its backoff
  EXPECT_EQ(r.claimed[0].id, c);
  EXPECT_EQ(store_->status(a)->state, job_state::succeeded);
  EXPECT_EQ(store_->status(b)->state, job_state::queued);
}

// As above, with consumers that settle what they ran and claim again in one call: the count
// of running rows never exceeds N, and no job runs twice.
TEST_F(PgStore, TheGroupBoundHoldsWhenSettlingAndClaimingInOneCall) {
  constexpr int n = 3;
  constexpr int jobs = 60;
  for (int i = 0; i < jobs; ++i) created(order(std::to_string(i), i % 4));
  std::vector<std::unique_ptr<pg_store>> stores;
  stores.push_back(make_store(2));
  stores.push_back(make_store(2));
  std::atomic<int> in_flight{0}, max_in_flight{0}, completed{0}, db_max{0};
  std::atomic<bool> done{false};
  std::mutex m;
  std::multiset<std::string> ran;
  std::thread monitor([&] {
    while (!done) {
      const int r = running("db");
      int seen = db_max.load();
      while (r > seen && !db_max.compare_exchange_weak(seen, r)) {
      }
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      auto& store = *stores[w % 2];
      const auto until = std::chrono::steady_clock::now() + 60s;
      std::vector<qos::jobs::settlement> ended;
      while (completed < jobs && std::chrono::steady_clock::now() < until) {
        const auto r = store.settle_and_claim(
            ended, {.group = "db", .limit = 2, .group_limit = n, .lease = 30s});
        EXPECT_EQ(r.accepted, std::vector<bool>(ended.size(), true));
        completed += static_cast<int>(ended.size());
        ended.clear();
        for (const auto& j : r.claimed) {
          const int now = ++in_flight;
          int seen = max_in_flight.load();
          while (now > seen && !max_in_flight.compare_exchange_weak(seen, now)) {
          }
          std::lock_guard lock(m);
          ran.insert(j.id);
        }
        std::this_thread::sleep_for(2ms);  // the jobs' work
        for (const auto& j : r.claimed) {
          --in_flight;  // before the settlement: the database still counts it as running
          ended.push_back({.id = j.id, .fence = j.fence, .result = {}});
        }
        if (r.claimed.empty()) std::this_thread::sleep_for(1ms);
      }
      if (!ended.empty()) {
        const auto r = store.settle_and_claim(ended, {});
        completed += static_cast<int>(std::count(r.accepted.begin(), r.accepted.end(), true));
      }
    });
  }
  for (auto& t : workers) t.join();
  done = true;
  monitor.join();
  EXPECT_EQ(completed.load(), jobs);
  EXPECT_LE(max_in_flight.load(), n);
  EXPECT_LE(db_max.load(), n);
  EXPECT_GE(max_in_flight.load(), 2);  // they did overlap: the bound was exercised
  std::set<std::string> unique(ran.begin(), ran.end());
  EXPECT_EQ(unique.size(), ran.size());
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs WHERE state = 'succeeded'"), std::to_string(jobs));
}

TEST_F(PgStore, AnEnqueueWakesAWaitingConsumer) {
  store_->wait_for_work("db", 0ms);  // registers the group
  ASSERT_TRUE(eventually([&] { return store_->listener_connects() >= 1; }));
  store_->wait_for_work("db", 0ms);  // the wake-up every listener (re)connection gives
  // The LISTEN goes out on the listener's thread: wait until the server shows it.
  ASSERT_TRUE(eventually([&] {
    return q("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'qos-jobs-listener'"
             " AND datname = current_database() AND query LIKE 'LISTEN%'") == "1";
  }));
  std::atomic<bool> woke{false};
  std::thread consumer([&] { woke = store_->wait_for_work("db", 20s); });
  std::this_thread::sleep_for(20ms);
  auto other = order();
  other.group = "mail";
  created(other);  // another group's channel does not wake it
  created();
  consumer.join();
  EXPECT_TRUE(woke);
  EXPECT_FALSE(store_->wait_for_work("db", 0ms));
}

TEST_F(PgStore, ALostNotificationIsCoveredByThePollAndTheListenerReconnects) {
  store_->wait_for_work("db", 0ms);
  ASSERT_TRUE(eventually([&] { return store_->listener_connects() >= 1; }));
  const auto before = store_->listener_connects();
  const auto listener_pid = [&] {
    return q(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'qos-jobs-listener'"
        " AND datname = current_database()");
  };
  std::string pid;
  ASSERT_TRUE(eventually([&] { return !(pid = listener_pid()).empty(); }));
  EXPECT_EQ(q("SELECT pg_terminate_backend($1::int)", {pid}), "t");
  const auto id = created();
  // A consumer loop as a worker runs it: claim, else wait for a hint or the poll interval.
  std::vector<qos::jobs::claimed_job> got;
  const auto until = std::chrono::steady_clock::now() + 20s;
  while (got.empty() && std::chrono::steady_clock::now() < until) {
    got = store_->claim("db", 1, 1, 10s);
    if (got.empty()) store_->wait_for_work("db", 100ms);
  }
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id, id);
  ASSERT_TRUE(eventually([&] { return store_->listener_connects() > before; }, 20s));
  EXPECT_NE(listener_pid(), pid);
  store_->wait_for_work("db", 0ms);  // the reconnection's wake-up
  created();
  EXPECT_TRUE(store_->wait_for_work("db", 20s));  // notified again
}

// Run slots are session-level advisory locks: shared by every holder of the group, not by
// another group; a holder's slots are freed when its session ends (killed, or destroyed).
TEST_F(PgStore, RunSlotsAreSharedByHoldersAndFreedWithTheirSession) {
  auto a = store_->slots("db", 10s);
  auto b = make_store(1)->slots("db", 10s);
  auto other = store_->slots("mail", 10s);
  ASSERT_TRUE(a && b && other);
  EXPECT_EQ(a->acquire(3, 2), 2u);
  EXPECT_EQ(a->acquire(3, 2), 1u);  // its own are not taken twice
  EXPECT_EQ(a->held(), 3u);
  EXPECT_EQ(b->acquire(3, 3), 0u);
  EXPECT_EQ(other->acquire(3, 3), 3u);  // another group's slots
  a->release(1);
  EXPECT_EQ(a->held(), 2u);
  EXPECT_EQ(b->acquire(3, 3), 1u);  // the one a gave back
  EXPECT_EQ(b->acquire(4, 3), 1u);  // the group's limit grew here
  EXPECT_EQ(a->share(4), 2u);       // a and b hold slots of "db"

  // a's session ends: it learns at its next call, and its slots are free for b.
  const std::string pid =
      q("SELECT pid FROM pg_stat_activity WHERE application_name = 'qos-jobs-slots'"
        " AND datname = current_database() ORDER BY backend_start LIMIT 1");
  ASSERT_FALSE(pid.empty());
  EXPECT_EQ(q("SELECT pg_terminate_backend($1::int)", {pid}), "t");
  ASSERT_TRUE(eventually([&] {
    b->acquire(4, 4);
    return b->held() == 4u;
  }));
  EXPECT_THROW(a->share(4), qos::jobs::store_error);
  EXPECT_EQ(a->held(), 0u);
  EXPECT_EQ(a->acquire(4, 4), 0u);  // a fresh session, nothing free

  b.reset();  // destroyed: its slots are back at once
  EXPECT_EQ(a->acquire(4, 4), 4u);
}

// The holders of a group's slots and those waiting for one share them evenly: a holder learns
// its part from share(), and one that took all it asked for, or gave slots back, no longer
// counts as waiting. Another group's holders are not counted.
TEST_F(PgStore, RunSlotsAreSharedEvenlyByTheHoldersThatWantThem) {
  auto a = store_->slots("db", 10s);
  auto b = make_store(1)->slots("db", 10s);
  auto c = store_->slots("db", 10s);
  auto other = store_->slots("mail", 10s);
  ASSERT_TRUE(a && b && c && other);
  EXPECT_EQ(a->share(8), 8u);  // no session yet: nothing held, no other known
  ASSERT_EQ(a->acquire(8, 8), 8u);
  EXPECT_EQ(a->share(8), 8u);  // alone
  ASSERT_EQ(other->acquire(8, 8), 8u);
  EXPECT_EQ(a->share(8), 8u);       // another group's holder
  EXPECT_EQ(b->acquire(8, 8), 0u);  // b waits for slots
  EXPECT_EQ(a->share(8), 4u);
  EXPECT_EQ(b->share(8), 4u);
  EXPECT_EQ(c->acquire(8, 1), 0u);  // and c
  EXPECT_EQ(a->share(8), 3u);
  a->release(4);
  EXPECT_EQ(b->acquire(8, 3), 3u);  // all it asked for: it holds, no longer waits
  EXPECT_EQ(c->acquire(8, 1), 1u);
  EXPECT_EQ(a->share(8), 3u);  // 4, 3 and 1 held
  c->release(1);               // c neither holds nor waits
  EXPECT_EQ(a->share(8), 4u);
  EXPECT_EQ(c->share(8), 3u);       // counting itself, about to take its part
  EXPECT_EQ(b->acquire(8, 2), 1u);  // the last one free, and it waits for another
  b->release(4);                    // gives all back: no longer waiting either
  EXPECT_EQ(a->share(8), 8u);
  EXPECT_EQ(c->acquire(8, 2), 2u);
  EXPECT_EQ(a->share(8), 4u);
  EXPECT_EQ(c->acquire(8, 0), 0u);  // asks for none: still a holder
  EXPECT_EQ(a->share(8), 4u);
  c.reset();  // destroyed: counted no more
  EXPECT_EQ(a->share(8), 8u);
}

// A holder that makes no call for its lease (a stopped process) loses its session, and with it
// its slots: they cannot be held forever by a process that does not run.
TEST_F(PgStore, RunSlotsOfAHolderSilentForItsLeaseAreFreed) {
  auto a = store_->slots("db", 1s);
  auto b = store_->slots("db", 10s);
  ASSERT_EQ(a->acquire(2, 2), 2u);
  EXPECT_EQ(b->acquire(2, 2), 0u);
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(b->acquire(2, 2), 2u);
  EXPECT_THROW(a->share(2), qos::jobs::store_error);
  EXPECT_EQ(a->held(), 0u);

  // Holding nothing, a holder whose session the server closed takes slots on a new one, with
  // no error: it lost nothing.
  b->release(2);
  auto c = store_->slots("db", 10s);
  ASSERT_EQ(c->acquire(2, 1), 1u);
  c->release(1);
  const std::string pid =
      q("SELECT pid FROM pg_stat_activity WHERE application_name = 'qos-jobs-slots'"
        " AND datname = current_database() ORDER BY backend_start DESC LIMIT 1");
  EXPECT_EQ(q("SELECT pg_terminate_backend($1::int)", {pid}), "t");
  ASSERT_TRUE(eventually([&] {
    return q("SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int", {pid}) == "0";
  }));
  EXPECT_EQ(c->acquire(2, 2), 2u);
}

TEST_F(PgStore, AStoppedServerMeansUnavailableAndNothingStored) {
  ASSERT_EQ(store_->enqueue(order("before"), {}).result, kind::created);
  const auto held = store_->claim("db", 1, 1, 60s);
  ASSERT_EQ(held.size(), 1u);
  const auto& job = held[0];
  cluster_env::cluster->stop();
  auto e = store_->enqueue(order("during"), {});
  auto k = store_->enqueue(keyed("k", "h"), {});
  // Every other call has no answer to give: store_error, never a false that would read as
  // "fenced out" or an empty result that would read as "nothing there".
  auto no_answer = [](auto&& call) {
    try {
      call();
      return false;
    } catch (const qos::jobs::store_error&) {
      return true;
    }
  };
  const bool claim_threw = no_answer([&] { store_->claim("db", 1, 1, 10s); });
  const bool beat_threw = no_answer([&] { store_->heartbeat(job.id, job.fence, 60s); });
  const bool complete_threw = no_answer([&] { store_->complete(job.id, job.fence, {}); });
  const bool fail_threw =
      no_answer([&] { store_->fail(job.id, job.fence, "x", qos::jobs::retry_policy{}); });
  const bool status_threw = no_answer([&] { store_->status(job.id); });
  const bool depth_threw = no_answer([&] { store_->depth("orders"); });
  const bool requeue_threw = no_answer([&] { store_->requeue_expired({}); });
  const bool settle_threw = no_answer([&] {
    store_->settle_and_claim(
        std::vector<qos::jobs::settlement>{{.id = job.id, .fence = job.fence, .result = {}}},
        {.group = "db", .limit = 1, .group_limit = 1, .lease = 10s});
  });
  cluster_env::cluster->start();  // before any assertion can return
  EXPECT_EQ(e.result, kind::unavailable);
  EXPECT_FALSE(e.error.empty());
  EXPECT_EQ(k.result, kind::unavailable);
  EXPECT_TRUE(claim_threw);
  EXPECT_TRUE(beat_threw);
  EXPECT_TRUE(complete_threw);
  EXPECT_TRUE(fail_threw);
  EXPECT_TRUE(status_threw);
  EXPECT_TRUE(depth_threw);
  EXPECT_TRUE(requeue_threw);
  EXPECT_TRUE(settle_threw);
  EXPECT_FALSE(store_->last_error().empty());
  // The pool's connections died with the server: the next calls reconnect. The lease is still
  // the token's: only a lost lease is refused.
  EXPECT_EQ(store_->depth("orders"), 1u);
  EXPECT_FALSE(store_->heartbeat(job.id, job.fence + 1, 60s));
  EXPECT_TRUE(store_->heartbeat(job.id, job.fence, 60s));
  EXPECT_TRUE(store_->complete(job.id, job.fence, {}));
  EXPECT_FALSE(store_->complete(job.id, job.fence, {}));
  EXPECT_FALSE(store_->fail(job.id, job.fence, "late", qos::jobs::retry_policy{}));
  EXPECT_EQ(store_->status(job.id)->state, job_state::succeeded);
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs WHERE body = 'during'::bytea"), "0");
  EXPECT_EQ(q("SELECT count(*) FROM qos_jobs_keys"), "0");
  EXPECT_EQ(store_->enqueue(order("after"), {}).result, kind::created);
  EXPECT_EQ(store_->enqueue(keyed("k", "h"), {}).result, kind::created);
}

}  // namespace

// Accept-mode routes over real HTTP on 127.0.0.1 against qos::server with a SQLite job store in
// a temporary folder: 202 only after the commit (Location, Retry-After), the job run by the
// group's consumer and GET /jobs/{id} walking queued → running → succeeded (303 → the stored
// result) or dead after max_attempts; 503 with nothing stored when the disk fails; the depth
// cap; idempotency (same id, 422, one job from 100 concurrent duplicates, keys per tenant);
// synchronous and queued traffic of one group under one N; the admin's requeue and purge; and
// a drain that answers every request it took exactly once.
#include <signal.h>
#include <sys/resource.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <pistache/router.h>

#include "qos/jobs/job_id.hpp"
#include "qos/jobs/sqlite_store.hpp"
#include "qos/qos.hpp"
#include "support/eventually.hpp"
#include "support/http_client.hpp"
#include "unit/jobs/job_test_support.hpp"

namespace qos::test {
namespace {

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;
using namespace std::chrono_literals;
using jobs::test::temp_dir;

const std::string token = "t0ken";

// The groups and routes from YAML (the guard-mode part), the accept settings and the store in
// code.
config::app_config make_config(const std::string& db_path, std::size_t n = 1) {
  auto cfg = config::load_config_string(
      "server: {address: 127.0.0.1, port: 0, reactor_threads: 2, fiber_threads: 2,"
      " shutdown_grace: 3s}\n"
      "groups:\n"
      "  - {name: db, max_concurrent: " +
      std::to_string(n) +
      ", max_queue: 100}\n"
      "routes:\n"
      "  - {name: orders, group: db, max_wait: 5s}\n"
      "  - {name: strict, group: db, max_wait: 5s}\n"
      "  - {name: orders_sync, group: db, max_wait: 5s}\n");
  for (auto& r : cfg.routes) {
    if (r.name == "orders_sync") continue;
    r.mode = config::route_mode::accept;
    r.accept.retry_after_s = 2;
    r.accept.max_attempts = 2;
    r.accept.backoff_base = 1ms;
    r.accept.backoff_cap = 5ms;
    r.accept.lease = 5s;
    r.accept.tenant_header = "x-tenant";
    r.accept.keep_headers = {"x-order-note"};
  }
  cfg.find_route("strict");
  for (auto& r : cfg.routes) {
    if (r.name == "strict") r.accept.require_idempotency_key = true;
  }
  config::jobs_config jobs;
  jobs.sqlite_path = db_path;
  jobs.synchronous = config::sqlite_sync::normal;
  jobs.store_threads = 4;
  jobs.max_pending = 1024;
  jobs.poll_interval = 50ms;
  jobs.prune_interval = 1s;
  cfg.jobs = jobs;
  config::admin_config admin;
  admin.token = token;
  cfg.admin = admin;
  return cfg;
}

// Blocks job handlers until opened; counts them.
class valve {
 public:
  void wait() {
    std::unique_lock lk(m_);
    ++waiting_;
    cv_.wait(lk, [this] { return open_; });
    --waiting_;
  }
  void open() {
    std::lock_guard lk(m_);
    open_ = true;
    cv_.notify_all();
  }
  int waiting() {
    std::lock_guard lk(m_);
    return waiting_;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool open_ = false;
  int waiting_ = 0;
};

// The concurrency the handlers of group db saw, measured inside them.
struct in_flight {
  std::atomic<int> now{0}, max{0};
  void enter() {
    const int n = ++now;
    int m = max.load();
    while (n > m && !max.compare_exchange_weak(m, n)) {
    }
  }
  void leave() { --now; }
};

http_response post(std::uint16_t port, const std::string& target, const std::string& body,
                   header_list headers = {}) {
  http_connection c(port);
  headers.emplace_back("Content-Type", "application/json");
  return c.request({.method = "POST", .target = target, .headers = headers, .body = body});
}

http_response send(std::uint16_t port, const std::string& method, const std::string& target,
                   header_list headers = {}) {
  http_connection c(port);
  return c.request({.method = method, .target = target, .headers = std::move(headers)});
}

std::string json_field(const std::string& body, const std::string& name) {
  const std::string key = "\"" + name + "\":\"";
  const auto at = body.find(key);
  if (at == std::string::npos) return {};
  const auto end = body.find('"', at + key.size());
  return body.substr(at + key.size(), end - at - key.size());
}

struct accept_fixture : ::testing::Test {
  temp_dir dir;
  std::unique_ptr<qos::server> srv;
  std::uint16_t port = 0;
  std::uint16_t admin_port = 0;
  in_flight flight;
  valve release;  // opened at the end whatever happened, so that no handler outlives a test

  void start(config::app_config cfg, jobs::job_handler job, result_handler sync = nullptr) {
    srv = std::make_unique<qos::server>(std::move(cfg));
    auto& router = srv->router();
    rest::Routes::Post(router, "/orders", srv->gate().accept("orders", std::move(job)));
    rest::Routes::Post(router, "/strict",
                       srv->gate().accept("strict", [](const jobs::claimed_job&) {
                         return response{.status = 201, .body = "{}"};
                       }));
    if (sync)
      rest::Routes::Post(router, "/orders/sync", srv->gate().guard_result("orders_sync", sync));
    srv->start();
    port = srv->port();
    admin_port = srv->admin()->port();
  }

  jobs::job_store& store() { return *srv->runtime().job_store(); }

  std::string status_of(const std::string& id) {
    const auto r = send(port, "GET", "/jobs/" + id);
    return json_field(r.body, "state");
  }

  void TearDown() override {
    release.open();
    if (srv) srv->shutdown();
  }
};

TEST_F(accept_fixture, a_202_comes_after_the_commit_and_the_job_walks_to_its_result) {
  start(make_config(dir.file("jobs.db")), [&](const jobs::claimed_job& job) {
    release.wait();
    std::string note;
    for (const auto& [name, value] : job.request.headers) {
      if (name == "x-order-note") note = value;
    }
    return response{.status = 201,
                    .body = "{\"got\":" + job.request.body + "}",
                    .headers = {{"X-Note", note}, {"X-Attempt", std::to_string(job.attempt)}}};
  });

  const auto first = post(port, "/orders", "{\"sku\":1}", {{"X-Order-Note", "gift"}});
  ASSERT_EQ(first.status, 202) << first.body;
  const std::string id = json_field(first.body, "id");
  ASSERT_TRUE(jobs::is_job_id(id)) << first.body;
  EXPECT_EQ(first.header("Location"), "/jobs/" + id);
  EXPECT_EQ(first.header("Retry-After"), "2");
  EXPECT_EQ(json_field(first.body, "status_url"), "/jobs/" + id);
  // Committed before the 202 was written: the store has it.
  ASSERT_TRUE(store().status(id).has_value());

  // N = 1: the first job runs (held by the valve), a second one stays queued.
  ASSERT_TRUE(eventually([&] { return release.waiting() == 1; }));
  const auto running = send(port, "GET", "/jobs/" + id);
  EXPECT_EQ(running.status, 200);
  EXPECT_EQ(json_field(running.body, "state"), "running");
  EXPECT_EQ(running.header("Retry-After"), "2");
  EXPECT_NE(running.body.find("\"attempts\":1"), std::string::npos) << running.body;

  const auto second = post(port, "/orders", "{\"sku\":2}");
  ASSERT_EQ(second.status, 202);
  const std::string id2 = json_field(second.body, "id");
  const auto queued = send(port, "GET", "/jobs/" + id2);
  EXPECT_EQ(queued.status, 200);
  EXPECT_EQ(json_field(queued.body, "state"), "queued");
  EXPECT_TRUE(queued.header("Retry-After").has_value());
  EXPECT_FALSE(json_field(queued.body, "run_at").empty()) << queued.body;
  // Not done yet: no result.
  EXPECT_EQ(send(port, "GET", "/jobs/" + id + "/result").status, 404);

  release.open();
  ASSERT_TRUE(eventually([&] { return send(port, "GET", "/jobs/" + id).status == 303; }));
  const auto done = send(port, "GET", "/jobs/" + id);
  EXPECT_EQ(done.header("Location"), "/jobs/" + id + "/result");
  const auto result = send(port, "GET", "/jobs/" + id + "/result");
  EXPECT_EQ(result.status, 201);
  EXPECT_EQ(result.body, "{\"got\":{\"sku\":1}}");
  EXPECT_EQ(result.header("X-Note"), "gift");  // a kept header reached the job
  EXPECT_EQ(result.header("X-Attempt"), "1");
  EXPECT_EQ(result.header("Content-Type"), "application/json");
  ASSERT_TRUE(eventually([&] { return send(port, "GET", "/jobs/" + id2).status == 303; }));

  // Unknown, malformed: 404 without a word about which.
  EXPECT_EQ(send(port, "GET", "/jobs/" + std::string(32, 'a')).status, 404);
  EXPECT_EQ(send(port, "GET", "/jobs/not-an-id").status, 404);
  EXPECT_EQ(send(port, "GET", "/jobs/" + std::string(32, 'A')).status, 404);
}

// jobs.prefetch through the server: N = 1, one job holds the permit; is the next one leased
// ahead (running while it waits for the permit) or left queued? A first job gives the group
// its service time, without which nothing is leased ahead.
struct prefetch_fixture : accept_fixture {
  std::string state_of_the_job_behind(std::optional<std::size_t> prefetch) {
    auto cfg = make_config(dir.file("jobs.db"));
    cfg.jobs->prefetch = prefetch;
    start(std::move(cfg), [&](const jobs::claimed_job& job) {
      if (job.request.body != "{\"warm\":1}") release.wait();
      return response{.status = 201, .body = "{}"};
    });
    const std::string warm = json_field(post(port, "/orders", "{\"warm\":1}").body, "id");
    EXPECT_TRUE(eventually([&] { return status_of(warm) == "succeeded"; }));
    const std::string first = json_field(post(port, "/orders", "{\"sku\":1}").body, "id");
    EXPECT_TRUE(eventually([&] { return release.waiting() == 1; }));
    const std::string next = json_field(post(port, "/orders", "{\"sku\":2}").body, "id");
    // Leased ahead: at the consumer's next round (poll_interval 50 ms). Else it stays queued:
    // ten rounds are given to it.
    if (prefetch != std::size_t{0}) {
      EXPECT_TRUE(eventually([&] { return status_of(next) == "running"; }));
    } else {
      std::this_thread::sleep_for(500ms);
    }
    const std::string state = status_of(next);
    EXPECT_EQ(release.waiting(), 1) << "one permit: the first job's";
    release.open();
    EXPECT_TRUE(eventually([&] { return status_of(next) == "succeeded"; }));
    EXPECT_EQ(status_of(first), "succeeded");
    return state;
  }
};

TEST_F(prefetch_fixture, by_default_the_job_behind_is_leased_ahead_of_its_permit) {
  EXPECT_EQ(state_of_the_job_behind(std::nullopt), "running");
}

TEST_F(prefetch_fixture, with_prefetch_0_the_job_behind_stays_queued) {
  EXPECT_EQ(state_of_the_job_behind(0), "queued");
}

TEST_F(accept_fixture, a_job_that_keeps_failing_is_dead_and_the_admin_requeues_or_purges_it) {
  std::atomic<bool> fail{true};
  std::atomic<int> runs{0};
  start(make_config(dir.file("jobs.db")), [&](const jobs::claimed_job&) {
    ++runs;
    if (fail.load()) throw std::runtime_error("backend down");
    return response{.status = 201, .body = "{}"};
  });
  const std::string a = json_field(post(port, "/orders", "{\"n\":1}").body, "id");
  const std::string b = json_field(post(port, "/orders", "{\"n\":2}").body, "id");
  ASSERT_TRUE(eventually([&] { return status_of(a) == "dead" && status_of(b) == "dead"; }));
  const auto dead = send(port, "GET", "/jobs/" + a);
  EXPECT_EQ(dead.status, 200);
  EXPECT_NE(dead.body.find("\"attempts\":2"), std::string::npos) << dead.body;
  EXPECT_NE(json_field(dead.body, "last_error").find("backend down"), std::string::npos)
      << dead.body;
  EXPECT_FALSE(dead.header("Retry-After").has_value());
  EXPECT_EQ(runs.load(), 4);

  // Requeue: the token is needed; a dead job goes back and now succeeds.
  EXPECT_EQ(send(admin_port, "POST", "/qos/jobs/" + a + "/requeue").status, 401);
  EXPECT_EQ(
      send(admin_port, "POST", "/qos/jobs/" + a + "/requeue", {{"Authorization", "Bearer wrong"}})
          .status,
      401);
  fail = false;
  const header_list auth = {{"Authorization", "Bearer " + token}};
  EXPECT_EQ(send(admin_port, "POST", "/qos/jobs/" + a + "/requeue", auth).status, 200);
  ASSERT_TRUE(eventually([&] { return status_of(a) == "succeeded"; }));
  EXPECT_EQ(send(admin_port, "POST", "/qos/jobs/" + a + "/requeue", auth).status, 409);
  EXPECT_EQ(send(admin_port, "POST", "/qos/jobs/" + std::string(32, 'b') + "/requeue", auth).status,
            404);

  // Purge: a dead job only, with the token.
  EXPECT_EQ(send(admin_port, "DELETE", "/qos/jobs/" + b).status, 401);
  EXPECT_EQ(send(admin_port, "DELETE", "/qos/jobs/" + a, auth).status, 409);  // succeeded
  EXPECT_EQ(send(admin_port, "DELETE", "/qos/jobs/" + b, auth).status, 200);
  EXPECT_EQ(send(port, "GET", "/jobs/" + b).status, 404);
  EXPECT_EQ(send(admin_port, "DELETE", "/qos/jobs/" + b, auth).status, 404);

  // The status document and the metrics.
  ASSERT_TRUE(eventually([&] {
    const auto s = send(admin_port, "GET", "/qos/status");
    return s.body.find("\"jobs\":{\"routes\":[") != std::string::npos &&
           s.body.find("\"group\":\"db\",\"claimed\":5,\"succeeded\":1,\"failed\":4") !=
               std::string::npos;
  })) << send(admin_port, "GET", "/qos/status").body;
  const auto metrics = send(admin_port, "GET", "/metrics").body;
  EXPECT_NE(metrics.find("qos_jobs_enqueued_total{result=\"created\",route=\"orders\"} 2"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("qos_jobs_finished_total{group=\"db\",result=\"failed\"} 4"),
            std::string::npos);
  EXPECT_NE(metrics.find("qos_jobs_depth{route=\"orders\"} 0"), std::string::npos);
  EXPECT_NE(metrics.find("qos_jobs_held{group=\"db\"} 0"), std::string::npos);
  EXPECT_NE(metrics.find("qos_jobs_run_slots{group=\"db\"} 0"), std::string::npos)
      << "SQLite: no run slots";
}

TEST_F(accept_fixture, a_failing_disk_answers_503_and_stores_nothing) {
  start(make_config(dir.file("jobs.db")),
        [](const jobs::claimed_job&) { return response{.status = 201, .body = "{}"}; });
  const auto ok = post(port, "/orders", "{\"n\":1}");
  ASSERT_EQ(ok.status, 202);
  ASSERT_TRUE(eventually([&] { return status_of(json_field(ok.body, "id")) == "succeeded"; }));
  const std::size_t before = store().depth("orders");

  // Every write past a file's end fails (EFBIG) from here: the WAL cannot take the commit.
  ::signal(SIGXFSZ, SIG_IGN);
  rlimit was{};
  ::getrlimit(RLIMIT_FSIZE, &was);
  rlimit none = was;
  none.rlim_cur = 0;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &none), 0);
  std::vector<http_response> refused;
  for (int i = 0; i < 3; ++i) {
    refused.push_back(
        post(port, "/orders", "{\"n\":2}", {{"Idempotency-Key", "k" + std::to_string(i)}}));
  }
  ::setrlimit(RLIMIT_FSIZE, &was);
  for (const auto& r : refused) {
    EXPECT_EQ(r.status, 503) << r.body;
    EXPECT_TRUE(r.header("Retry-After").has_value());
    EXPECT_TRUE(r.header("Location") == std::nullopt);
  }
  EXPECT_EQ(store().depth("orders"), before);
  // None of the keys was kept: each makes a job now.
  const auto again = post(port, "/orders", "{\"n\":3}", {{"Idempotency-Key", "k0"}});
  EXPECT_EQ(again.status, 202) << again.body;
}

TEST_F(accept_fixture, the_depth_cap_answers_its_status_with_retry_after) {
  auto cfg = make_config(dir.file("jobs.db"));
  for (auto& r : cfg.routes) {
    r.accept.max_depth = 2;
    r.accept.full_status = 429;
  }
  start(cfg, [&](const jobs::claimed_job&) {
    release.wait();
    return response{.status = 201, .body = "{}"};
  });
  ASSERT_EQ(post(port, "/orders", "{\"n\":1}").status, 202);
  ASSERT_TRUE(eventually([&] { return release.waiting() == 1; }));
  ASSERT_EQ(post(port, "/orders", "{\"n\":2}").status, 202);
  const auto full = post(port, "/orders", "{\"n\":3}");
  EXPECT_EQ(full.status, 429);
  EXPECT_EQ(full.header("Retry-After"), "2");
  EXPECT_EQ(store().depth("orders"), 2U);
  release.open();
  ASSERT_TRUE(eventually([&] { return store().depth("orders") == 0; }));
  EXPECT_EQ(post(port, "/orders", "{\"n\":4}").status, 202);
}

TEST_F(accept_fixture, idempotency_keys_return_the_first_job_refuse_other_payloads_per_tenant) {
  // Jobs stay pending (the valve): duplicates meet a live job.
  start(make_config(dir.file("jobs.db")), [&](const jobs::claimed_job&) {
    release.wait();
    return response{.status = 201, .body = "{}"};
  });
  const auto a = post(port, "/orders", "{\"sku\":7}", {{"Idempotency-Key", "\"order-7\""}});
  ASSERT_EQ(a.status, 202);
  // The quoted form and the bare one are the same key.
  const auto again = post(port, "/orders", "{\"sku\":7}", {{"Idempotency-Key", "order-7"}});
  EXPECT_EQ(again.status, 202);
  EXPECT_EQ(json_field(again.body, "id"), json_field(a.body, "id"));
  EXPECT_EQ(again.header("Location"), a.header("Location"));
  const auto other = post(port, "/orders", "{\"sku\":8}", {{"Idempotency-Key", "order-7"}});
  EXPECT_EQ(other.status, 422);
  // A kept header is part of the payload; another tenant has keys of its own.
  EXPECT_EQ(
      post(port, "/orders", "{\"sku\":7}", {{"Idempotency-Key", "order-7"}, {"X-Order-Note", "x"}})
          .status,
      422);
  const auto tenant =
      post(port, "/orders", "{\"sku\":7}", {{"Idempotency-Key", "order-7"}, {"X-Tenant", "acme"}});
  EXPECT_EQ(tenant.status, 202);
  EXPECT_NE(json_field(tenant.body, "id"), json_field(a.body, "id"));

  // Malformed keys, and a route that requires one.
  EXPECT_EQ(post(port, "/orders", "{}", {{"Idempotency-Key", std::string(256, 'k')}}).status, 400);
  EXPECT_EQ(post(port, "/orders", "{}", {{"Idempotency-Key", "\"unterminated"}}).status, 400);
  EXPECT_EQ(post(port, "/orders", "{}", {{"Idempotency-Key", "caf\xc3\xa9"}}).status, 400);
  EXPECT_EQ(post(port, "/orders", "{}", {{"Idempotency-Key", std::string(255, 'k')}}).status, 202);
  EXPECT_EQ(post(port, "/strict", "{}").status, 400);
  EXPECT_EQ(post(port, "/strict", "{}", {{"Idempotency-Key", "s1"}}).status, 202);

  // 100 concurrent duplicates over HTTP: one job.
  const std::size_t depth = store().depth("orders");
  std::vector<std::string> ids(100);
  std::vector<int> statuses(100);
  std::vector<std::thread> clients;
  for (int i = 0; i < 100; ++i) {
    clients.emplace_back([&, i] {
      const auto r = post(port, "/orders", "{\"sku\":99}", {{"Idempotency-Key", "burst"}});
      statuses[static_cast<std::size_t>(i)] = r.status;
      ids[static_cast<std::size_t>(i)] = json_field(r.body, "id");
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(std::set<int>(statuses.begin(), statuses.end()), std::set<int>{202});
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 1U);
  EXPECT_EQ(store().depth("orders"), depth + 1);
  release.open();
}

TEST_F(accept_fixture, synchronous_and_queued_requests_of_a_group_share_its_n) {
  constexpr int n = 2;
  auto work = [this] {
    flight.enter();
    std::this_thread::sleep_for(15ms);
    flight.leave();
    return response{.status = 201, .body = "{}"};
  };
  start(
      make_config(dir.file("jobs.db"), n), [work](const jobs::claimed_job&) { return work(); },
      [work](const rest::Request&) { return work(); });
  std::vector<std::string> ids(12);
  std::vector<int> sync_status(12);
  std::vector<std::thread> clients;
  for (int i = 0; i < 12; ++i) {
    clients.emplace_back([&, i] {
      ids[static_cast<std::size_t>(i)] =
          json_field(post(port, "/orders", "{\"i\":" + std::to_string(i) + "}").body, "id");
    });
    clients.emplace_back([&, i] {
      sync_status[static_cast<std::size_t>(i)] = post(port, "/orders/sync", "{}").status;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(std::set<int>(sync_status.begin(), sync_status.end()), std::set<int>{201});
  for (const auto& id : ids) {
    ASSERT_TRUE(eventually([&] { return status_of(id) == "succeeded"; })) << id;
  }
  EXPECT_LE(flight.max.load(), n);
  EXPECT_GE(flight.max.load(), 1);
}

TEST_F(accept_fixture, the_drain_answers_every_request_it_took_exactly_once) {
  auto cfg = make_config(dir.file("jobs.db"));
  // A slow commit (the group commit waits 100 ms for company) keeps requests queued in front
  // of the store threads when the drain begins.
  cfg.jobs->group_commit = 100ms;
  cfg.jobs->store_threads = 2;
  // No consumer: its claims would share (and so hasten) the commits the requests wait for.
  cfg.jobs->consume = false;
  start(cfg, [](const jobs::claimed_job&) { return response{.status = 201, .body = "{}"}; });
  constexpr int clients_n = 24;
  std::vector<http_connection> conns;
  for (int i = 0; i < clients_n; ++i) {
    conns.emplace_back(port);
    ASSERT_TRUE(conns.back().connect());
  }
  std::vector<http_response> got(clients_n);
  std::vector<std::chrono::steady_clock::time_point> when(clients_n);
  std::vector<std::thread> clients;
  for (int i = 0; i < clients_n; ++i) {
    clients.emplace_back([&, i] {
      const auto at = static_cast<std::size_t>(i);
      got[at] = conns[at].request({.method = "POST",
                                   .target = "/orders",
                                   .headers = {{"Content-Type", "application/json"}},
                                   .body = "{\"i\":" + std::to_string(i) + "}"});
      when[at] = std::chrono::steady_clock::now();
    });
  }
  std::this_thread::sleep_for(50ms);
  const auto drain_began = std::chrono::steady_clock::now();
  const bool clean = srv->shutdown();
  // Gone: a client whose request the server never took (its thread was late, on a busy
  // machine) sees its connection close instead of waiting for an answer that cannot come.
  srv.reset();
  for (auto& t : clients) t.join();
  EXPECT_TRUE(clean);
  int accepted = 0, refused = 0, accepted_while_draining = 0, not_taken = 0;
  std::set<std::string> ids;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const auto& r = got[i];
    if (!r.ok()) {
      // Never a request left hanging: the connection closed with the server.
      EXPECT_EQ(r.error.find("timeout"), std::string::npos) << r.error;
      ++not_taken;
      continue;
    }
    if (r.status == 202) {
      ++accepted;
      if (when[i] > drain_began) ++accepted_while_draining;
      ids.insert(json_field(r.body, "id"));
    } else {
      EXPECT_EQ(r.status, 503) << r.body;
      EXPECT_TRUE(r.header("Retry-After").has_value());
      ++refused;
    }
  }
  EXPECT_EQ(accepted + refused + not_taken, clients_n);
  // Every 202 has its job, and every job its 202: none stored whose answer was lost.
  jobs::sqlite_store after({.path = dir.file("jobs.db")});
  for (const auto& id : ids) EXPECT_TRUE(after.status(id).has_value()) << id;
  EXPECT_EQ(after.depth("orders"), ids.size());
  // The store calls queued when the drain began were made and answered, not dropped.
  EXPECT_GE(accepted_while_draining, 1);
}

TEST_F(accept_fixture,
       a_client_gone_before_the_commit_still_has_its_job_stored_and_nothing_breaks) {
  auto cfg = make_config(dir.file("jobs.db"));
  cfg.jobs->group_commit = 100ms;  // the client is gone well before the answer
  cfg.jobs->consume = false;       // (no consumer's claim to share and hasten the commit)
  start(cfg, [](const jobs::claimed_job&) { return response{.status = 201, .body = "{}"}; });
  for (int i = 0; i < 5; ++i) {
    http_connection c(port);
    const std::string body = "{\"gone\":" + std::to_string(i) + "}";
    c.send_raw(
        "POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Idempotency-Key: gone-" +
        std::to_string(i) + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
        body);
    ASSERT_TRUE(c.error().empty()) << c.error();
    c.close();  // FIN: the request is surely read, the answer then goes to a closed socket
  }
  // Each was committed (the same key and payload again is a duplicate, not a new job) and the
  // server goes on serving.
  for (int i = 0; i < 5; ++i) {
    const std::string body = "{\"gone\":" + std::to_string(i) + "}";
    const auto key = "gone-" + std::to_string(i);
    const auto r = post(port, "/orders", body, {{"Idempotency-Key", key}});
    EXPECT_EQ(r.status, 202) << r.body;
  }
  const auto metrics = send(admin_port, "GET", "/metrics").body;
  EXPECT_NE(metrics.find("qos_jobs_enqueued_total{result=\"created\",route=\"orders\"} 5"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("qos_jobs_enqueued_total{result=\"duplicate\",route=\"orders\"} 5"),
            std::string::npos);
}

TEST_F(accept_fixture, store_calls_beyond_max_pending_get_503_at_once_and_store_nothing) {
  auto cfg = make_config(dir.file("jobs.db"));
  cfg.jobs->group_commit = 100ms;
  cfg.jobs->store_threads = 1;
  cfg.jobs->max_pending = 1;
  cfg.jobs->consume = false;  // (no consumer's claim to share and hasten the commit)
  start(cfg, [](const jobs::claimed_job&) { return response{.status = 201, .body = "{}"}; });
  constexpr int clients_n = 8;
  std::vector<http_response> got(clients_n);
  std::vector<std::thread> clients;
  for (int i = 0; i < clients_n; ++i) {
    clients.emplace_back([&, i] {
      got[static_cast<std::size_t>(i)] = post(port, "/orders", "{\"i\":" + std::to_string(i) + "}",
                                              {{"Idempotency-Key", "m" + std::to_string(i)}});
    });
  }
  for (auto& t : clients) t.join();
  std::set<std::string> ids;
  int refused = 0;
  for (const auto& r : got) {
    if (r.status == 202) {
      ids.insert(json_field(r.body, "id"));
    } else {
      EXPECT_EQ(r.status, 503) << r.body;
      EXPECT_TRUE(r.header("Retry-After").has_value());
      ++refused;
    }
  }
  // One call runs, one waits: with eight at once over a 100 ms commit, some find no room.
  EXPECT_GE(refused, 1);
  EXPECT_EQ(ids.size() + static_cast<std::size_t>(refused), static_cast<std::size_t>(clients_n));
  for (const auto& id : ids) EXPECT_TRUE(store().status(id).has_value());
  // A refused key was never stored: it makes a job now.
  for (int i = 0; i < clients_n; ++i) {
    if (got[static_cast<std::size_t>(i)].status != 503) continue;
    EXPECT_EQ(post(port, "/orders", "{}", {{"Idempotency-Key", "m" + std::to_string(i)}}).status,
              202);
    break;
  }
}

}  // namespace
}  // namespace qos::test

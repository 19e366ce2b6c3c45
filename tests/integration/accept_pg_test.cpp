// An accept route on the PostgreSQL job store (a private cluster: tests/support/pg_cluster),
// over real HTTP on 127.0.0.1: `jobs: {store: postgres}` builds the store, the 202 comes after
// the commit and the group's consumer (woken by LISTEN/NOTIFY) runs the job; with the database
// down the route answers 503 and keeps nothing, and serves again once it is back.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>

#include <pistache/router.h>

#include "qos/jobs/job_id.hpp"
#include "qos/qos.hpp"
#include "support/eventually.hpp"
#include "support/http_client.hpp"
#include "support/pg_cluster.hpp"

namespace qos::test {
namespace {

namespace rest = Pistache::Rest;
using namespace std::chrono_literals;

http_response call(std::uint16_t port, const std::string& method, const std::string& target,
                   const std::string& body = {}, header_list headers = {}) {
  http_connection c(port);
  return c.request(
      {.method = method, .target = target, .headers = std::move(headers), .body = body});
}

std::string json_field(const std::string& body, const std::string& name) {
  const std::string key = "\"" + name + "\":\"";
  const auto at = body.find(key);
  if (at == std::string::npos) return {};
  const auto end = body.find('"', at + key.size());
  return body.substr(at + key.size(), end - at - key.size());
}

TEST(accept_pg, a_job_is_accepted_run_and_refused_while_the_database_is_down) {
  if (!pg_cluster::available()) {
    GTEST_SKIP() << "PostgreSQL 15 server binaries (" << pg_cluster::bin
                 << ") are not installed: the PostgreSQL accept test is skipped";
  }
  pg_cluster cluster;
  auto cfg = config::load_config_string(
      "server: {address: 127.0.0.1, port: 0, shutdown_grace: 2s}\n"
      "groups: [{name: db, max_concurrent: 2, max_queue: 10}]\n"
      "routes: [{name: orders, group: db, max_wait: 2s}]\n");
  cfg.routes[0].mode = config::route_mode::accept;
  cfg.routes[0].accept.retry_after_s = 1;
  config::jobs_config jobs;
  jobs.store = config::job_store_kind::postgres;
  jobs.conninfo = cluster.conninfo();
  jobs.pool = 2;
  jobs.store_threads = 2;
  jobs.poll_interval = 200ms;
  cfg.jobs = jobs;

  qos::server srv(cfg);
  rest::Routes::Post(srv.router(), "/orders",
                     srv.gate().accept("orders", [](const jobs::claimed_job& job) {
                       return response{.status = 201, .body = job.request.body};
                     }));
  srv.start();
  const auto port = srv.port();

  const auto accepted = call(port, "POST", "/orders", "{\"sku\":1}", {{"Idempotency-Key", "a"}});
  ASSERT_EQ(accepted.status, 202) << accepted.body;
  const std::string id = json_field(accepted.body, "id");
  ASSERT_TRUE(jobs::is_job_id(id));
  EXPECT_EQ(accepted.header("Location"), "/jobs/" + id);
  ASSERT_TRUE(eventually([&] { return call(port, "GET", "/jobs/" + id).status == 303; }));
  const auto result = call(port, "GET", "/jobs/" + id + "/result");
  EXPECT_EQ(result.status, 201);
  EXPECT_EQ(result.body, "{\"sku\":1}");
  const auto again = call(port, "POST", "/orders", "{\"sku\":1}", {{"Idempotency-Key", "a"}});
  EXPECT_EQ(json_field(again.body, "id"), id);

  cluster.stop();
  const auto down = call(port, "POST", "/orders", "{\"sku\":2}", {{"Idempotency-Key", "b"}});
  EXPECT_EQ(down.status, 503) << down.body;
  EXPECT_TRUE(down.header("Retry-After").has_value());
  cluster.start();
  // Back: the refused key was not kept, so it makes a job now (the pool reconnects).
  ASSERT_TRUE(eventually(
      [&] {
        const auto r = call(port, "POST", "/orders", "{\"sku\":2}", {{"Idempotency-Key", "b"}});
        return r.status == 202;
      },
      20s));
  EXPECT_TRUE(srv.shutdown());
}

}  // namespace
}  // namespace qos::test

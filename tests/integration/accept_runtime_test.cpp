// Accept routes in a service with its own Pistache endpoint (qos::runtime): a store the service
// built itself, the status routes it routes itself, start_jobs() after its accept() calls, a
// reload that changes the route's accept settings for the requests that follow, and drain()
// before the endpoint's shutdown.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>

#include <pistache/endpoint.h>
#include <pistache/router.h>

#include "qos/jobs/job_id.hpp"
#include "qos/jobs/sqlite_store.hpp"
#include "qos/qos.hpp"
#include "support/eventually.hpp"
#include "support/http_client.hpp"
#include "unit/jobs/job_test_support.hpp"

namespace qos::test {
namespace {

namespace rest = Pistache::Rest;
using namespace std::chrono_literals;

http_response call(std::uint16_t port, const std::string& method, const std::string& target,
                   const std::string& body = {}) {
  http_connection c(port);
  return c.request({.method = method, .target = target, .body = body});
}

config::app_config make_config(std::size_t max_depth) {
  auto cfg = config::load_config_string(
      "groups: [{name: db, max_concurrent: 1, max_queue: 10}]\n"
      "routes: [{name: orders, group: db, max_wait: 2s}]\n");
  cfg.routes[0].mode = config::route_mode::accept;
  cfg.routes[0].accept.max_depth = max_depth;
  cfg.routes[0].accept.retry_after_s = 3;
  config::jobs_config jobs;  // store threads and consumer settings; the store is ours
  jobs.poll_interval = 50ms;
  cfg.jobs = jobs;
  return cfg;
}

TEST(accept_runtime, a_service_with_its_own_endpoint_accepts_runs_and_reloads_accept_settings) {
  jobs::test::temp_dir dir;
  auto store = std::make_shared<jobs::sqlite_store>(jobs::sqlite_options{.path = dir.file("j.db")});
  std::atomic<bool> hold{true};
  Pistache::Http::Endpoint endpoint{Pistache::Address("127.0.0.1", Pistache::Port(0))};
  rest::Router router;
  {
    qos::runtime rt(make_config(5), store);
    ASSERT_EQ(rt.job_store(), store.get());
    qos::runtime::prime(router);
    rest::Routes::Post(router, "/orders",
                       rt.gate().accept("orders", [&](const jobs::claimed_job& job) {
                         const auto until = std::chrono::steady_clock::now() + 10s;
                         while (hold && std::chrono::steady_clock::now() < until) {
                           std::this_thread::sleep_for(1ms);
                         }
                         return response{.status = 201, .body = job.request.body};
                       }));
    rest::Routes::Get(router, "/jobs/:id", rt.job_status_handler());
    rest::Routes::Get(router, "/jobs/:id/result", rt.job_result_handler());
    rt.start_jobs();
    endpoint.init(Pistache::Http::Endpoint::options().threads(2));
    endpoint.setHandler(router.handler());
    endpoint.serveThreaded();
    const auto port = static_cast<std::uint16_t>(endpoint.getPort());

    const auto a = call(port, "POST", "/orders", "{\"n\":1}");
    ASSERT_EQ(a.status, 202) << a.body;
    EXPECT_EQ(a.header("Retry-After"), "3");
    const std::string id = a.header("Location").value_or("").substr(6);
    ASSERT_TRUE(jobs::is_job_id(id));
    ASSERT_TRUE(eventually([&] {
      return store->depth("orders") == 1 && store->status(id)->state == jobs::job_state::running;
    }));
    ASSERT_EQ(call(port, "POST", "/orders", "{\"n\":2}").status, 202);

    // The reload lowers the cap and the Retry-After: the next request meets both.
    auto next = make_config(2);
    next.routes[0].accept.retry_after_s = 7;
    const auto r = rt.reload(next);
    ASSERT_TRUE(r.applied) << r.error;
    const auto full = call(port, "POST", "/orders", "{\"n\":3}");
    EXPECT_EQ(full.status, 503);
    EXPECT_EQ(full.header("Retry-After"), "7");

    hold = false;
    ASSERT_TRUE(eventually([&] { return call(port, "GET", "/jobs/" + id).status == 303; }));
    const auto result = call(port, "GET", "/jobs/" + id + "/result");
    EXPECT_EQ(result.status, 201);
    EXPECT_EQ(result.body, "{\"n\":1}");
    ASSERT_TRUE(eventually([&] { return store->depth("orders") == 0; }));

    EXPECT_TRUE(rt.drain(2s));
    // Drained: enqueues are refused, with nothing stored.
    const auto late = call(port, "POST", "/orders", "{\"n\":4}");
    EXPECT_EQ(late.status, 503);
    EXPECT_TRUE(late.header("Retry-After").has_value());
    EXPECT_EQ(store->depth("orders"), 0U);
    endpoint.shutdown();
  }
  // The runtime is gone; the store it shared is the service's and still answers.
  EXPECT_EQ(store->depth("orders"), 0U);
}

}  // namespace
}  // namespace qos::test

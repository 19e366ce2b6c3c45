// qos added to a service that already has its own Pistache endpoint and router (the README's
// "Bring your own server" snippet is the block between the byo markers, checked to be the same
// text there): no endpoint, no signal handler, no change to the process's default logger.
#include "qos/http/runtime.hpp"

#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>

#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include "support/eventually.hpp"
#include "support/http_client.hpp"

// [byo-begin]
#include <pistache/endpoint.h>
#include <pistache/router.h>

#include "qos/qos.hpp"

using namespace Pistache;

// The service as it was: its own endpoint (options, TLS, ...), router and routes. The database
// call blocks; the image cache is in memory.
struct catalog {
  std::function<std::string(const Rest::Request&)> query;  // blocking DB read
  std::map<std::string, std::string> image_cache;
};

struct service {
  Http::Endpoint endpoint{Address("127.0.0.1", Port(0))};
  Rest::Router router;
  // qos: limit groups, fallbacks and metrics from YAML (load_config("qos.yaml")) or built in
  // code; both are validated the same way.
  qos::runtime gate{qos::config::load_config_string(R"(
groups:
  - {name: db, max_concurrent: 1, max_queue: 1}
routes:
  - {name: db, group: db, max_wait: 200ms, fallback: {status: 503, retry_after: 1}}
)")};

  void serve(catalog& db) {
    endpoint.init(Http::Endpoint::options().threads(2).maxRequestSize(16 * 1024));
    qos::runtime::prime(router);
    // A guarded route: at most max_concurrent run, the rest wait (parked, not blocking a
    // thread) or get the fallback.
    auto db_read =
        gate.gate().guard_blocking("db", [&db](const Rest::Request& req, Http::ResponseWriter& w) {
          w.send(Http::Code::Ok, db.query(req));
        });
    Rest::Routes::Get(router, "/items/:id", db_read);
    // One route, two paths: a cache hit answers at once on the reactor; only a miss goes
    // through the gate, and is limited by the db group with its fallback.
    Rest::Routes::Get(
        router, "/images/:id",
        qos::gate::plain([&db, db_read](const Rest::Request& req, Http::ResponseWriter& w) {
          auto hit = db.image_cache.find(req.param(":id").as<std::string>());
          if (hit != db.image_cache.end()) {
            w.send(Http::Code::Ok, hit->second);
          } else {
            db_read(req, std::move(w));
          }
        }));
    Rest::Routes::Get(router, "/metrics", gate.metrics_handler());  // wherever you like
    endpoint.setHandler(router.handler());
    endpoint.serveThreaded();
  }

  void stop() {
    // qos first: parked requests get their fallback, running handlers finish (they hold
    // writers into Pistache); then the endpoint.
    gate.drain(std::chrono::seconds(5));
    endpoint.shutdown();
  }
};
// [byo-end]

namespace qos {
namespace {

using namespace std::chrono_literals;
using test::eventually;
using test::http_get;

struct sigterm_action {
  static void (*current())(int) {
    struct sigaction sa {};
    sigaction(SIGTERM, nullptr, &sa);
    return sa.sa_handler;
  }
};

TEST(runtime_test, guards_routes_of_an_existing_endpoint_and_serves_cache_hits_on_the_reactor) {
  const auto level_before = spdlog::default_logger()->level();
  const auto sigterm_before = sigterm_action::current();
  std::atomic<bool> release{false};
  std::atomic<int> queries{0};
  catalog db;
  db.image_cache["1"] = "<svg>cached</svg>";
  db.query = [&](const Rest::Request&) {
    ++queries;
    const auto until = clock::now() + 10s;
    while (!release && clock::now() < until) std::this_thread::sleep_for(1ms);
    return std::string("from the database");
  };
  service svc;
  svc.serve(db);
  const auto port = static_cast<std::uint16_t>(svc.endpoint.getPort());

  // The one permit is taken by a slow miss, its queue place by another miss.
  std::optional<test::http_response> first, second;
  std::thread a([&] { first = http_get(port, "/images/2"); });
  ASSERT_TRUE(eventually([&] { return queries == 1; }));
  std::thread b([&] { second = http_get(port, "/items/7"); });
  ASSERT_TRUE(eventually([&] {
    return svc.gate.admission().find_group("db")->stats().reserved +
               svc.gate.admission().find_group("db")->stats().waiting ==
           1;
  }));
  // Cache hits still answer at once; a third miss finds the queue full: the fallback.
  const auto hit = http_get(port, "/images/1");
  EXPECT_EQ(hit.status, 200);
  EXPECT_EQ(hit.body, "<svg>cached</svg>");
  const auto shed = http_get(port, "/images/3");
  EXPECT_EQ(shed.status, 503);
  EXPECT_EQ(shed.header("X-QoS-Outcome"), "queue_full");
  EXPECT_EQ(shed.header("Retry-After"), "1");
  release = true;
  a.join();
  b.join();
  EXPECT_EQ(first->status, 200);
  EXPECT_EQ(first->body, "from the database");
  EXPECT_EQ(second->status, 200);
  EXPECT_EQ(queries.load(), 2);
  EXPECT_NE(http_get(port, "/metrics").body.find("qos_"), std::string::npos);

  // The runtime took no signal and left the process's default logger alone.
  EXPECT_EQ(sigterm_action::current(), sigterm_before);
  EXPECT_EQ(spdlog::default_logger()->level(), level_before);
  svc.stop();
}

TEST(runtime_test, a_config_built_in_code_is_validated_like_yaml) {
  config::app_config cfg;
  config::group_config g;
  g.name = "db";
  g.limiter.max_concurrent = 4;
  g.blocking_threads = 2;  // fewer threads than the limit may grant
  cfg.groups.push_back(g);
  try {
    runtime rt(cfg);
    FAIL() << "a pool smaller than the limit was accepted";
  } catch (const invalid_option& e) {
    EXPECT_EQ(e.key(), "blocking_threads");
  }
}

TEST(runtime_test, registers_its_metrics_in_the_applications_registry) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto& mine =
      prometheus::BuildCounter().Name("app_orders_total").Help("Orders.").Register(*registry);
  mine.Add({}).Increment(3);
  runtime rt(config::load_config_string("groups: [{name: db, max_concurrent: 1}]\n"
                                        "routes: [{name: db, group: db}]\n"),
             registry);
  const std::string page = rt.metrics().render(rt.admission());
  EXPECT_NE(page.find("app_orders_total 3"), std::string::npos);
  EXPECT_NE(page.find("qos_build_info"), std::string::npos);
  EXPECT_TRUE(rt.drain(std::chrono::seconds(1)));
}

TEST(runtime_test, has_an_access_log_only_when_the_config_enables_it) {
  const std::string routes =
      "groups: [{name: db, max_concurrent: 1}]\n"
      "routes: [{name: db, group: db}]\n";
  runtime off(config::load_config_string(routes));
  EXPECT_EQ(off.access_log(), nullptr);
  runtime on(config::load_config_string("logging: {access_log: {enabled: true}}\n" + routes));
  ASSERT_NE(on.access_log(), nullptr);
  EXPECT_TRUE(on.access_log()->enabled());
}

// The README shows the same snippet as this file, byte for byte.
TEST(runtime_test, the_readme_shows_this_snippet) {
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  auto block = [](const std::string& text, const std::string& begin, const std::string& end) {
    const auto b = text.find(begin);
    const auto e = text.find(end, b == std::string::npos ? 0 : b);
    if (b == std::string::npos || e == std::string::npos) return std::string("<missing>");
    return text.substr(b + begin.size(), e - b - begin.size());
  };
  const std::string here =
      read(std::string(QOS_SOURCE_DIR) + "/tests/integration/runtime_test.cpp");
  const std::string readme = read(std::string(QOS_SOURCE_DIR) + "/README.md");
  const std::string snippet = block(here, "// [byo-begin]\n", "// [byo-end]");
  EXPECT_NE(snippet, "<missing>");
  EXPECT_EQ(block(readme, "<!-- byo-begin -->\n```cpp\n", "```\n<!-- byo-end -->"), snippet);
}

}  // namespace
}  // namespace qos

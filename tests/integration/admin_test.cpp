// The admin listener over real HTTP on 127.0.0.1: its routes, the bearer token rules, readiness
// and the /qos/status document (parsed by python3's json where available).
#include "qos/http/admin.hpp"

#include <atomic>
#include <memory>
#include <string>

#include <gtest/gtest.h>
#include <pistache/router.h>

#include "qos/qos.hpp"
#include "support/http_client.hpp"
#include "support/log_capture.hpp"

namespace qos::test {
namespace {

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;

config::app_config small_config() {
  return config::load_config_string(R"(
groups:
  - {name: db, max_concurrent: 3, max_queue: 7}
routes:
  - {name: items, group: db, max_wait: 200ms}
)");
}

http_response request(std::uint16_t port, const std::string& method, const std::string& target,
                      header_list headers = {}) {
  http_connection c(port);
  http_request req;
  req.method = method;
  req.target = target;
  req.headers = std::move(headers);
  return c.request(req);
}

header_list bearer(const std::string& token) {
  return {{"Authorization", "Bearer " + token}};
}

struct admin_fixture : ::testing::Test {
  void start(admin_options o, admin::hooks h = {}) {
    rt = std::make_unique<runtime>(small_config());
    // The route exists in the metrics once the gate guards it.
    (void)rt->gate().guard("items", [](const rest::Request&, http::ResponseWriter& w) {
      w.send(http::Code::Ok, "item");
    });
    a = std::make_unique<admin>(*rt, std::move(o), std::move(h));
    a->start();
    port = a->port();
  }
  void TearDown() override {
    if (a) a->shutdown();
    if (rt) rt->drain(std::chrono::seconds(1));
  }
  std::unique_ptr<runtime> rt;
  std::unique_ptr<admin> a;
  std::uint16_t port = 0;
};

TEST_F(admin_fixture, post_needs_the_right_token_and_reads_are_open_on_loopback) {
  std::atomic<int> reloads{0};
  admin::hooks h;
  h.reload = [&] {
    ++reloads;
    return admin_reply{200, "applied\n"};
  };
  start({.address = "127.0.0.1", .port = 0, .token = "s3cret"}, h);

  EXPECT_EQ(request(port, "GET", "/healthz").status, 200);
  EXPECT_EQ(request(port, "GET", "/readyz").status, 200);
  EXPECT_EQ(request(port, "GET", "/metrics").status, 200);
  EXPECT_EQ(request(port, "GET", "/qos/status").status, 200);

  auto none = request(port, "POST", "/qos/reload");
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(none.header("WWW-Authenticate").value_or(""), "Bearer realm=\"qos\"");
  EXPECT_EQ(request(port, "POST", "/qos/reload", bearer("s3cret-not")).status, 401);
  EXPECT_EQ(request(port, "POST", "/qos/reload", bearer("s3cre")).status, 401);
  EXPECT_EQ(request(port, "POST", "/qos/reload", {{"Authorization", "Basic czNjcmV0"}}).status,
            401);
  EXPECT_EQ(reloads.load(), 0);
  auto ok = request(port, "POST", "/qos/reload", bearer("s3cret"));
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.body, "applied\n");
  EXPECT_EQ(request(port, "POST", "/qos/reload", {{"authorization", "bearer  s3cret "}}).status,
            200);
  EXPECT_EQ(reloads.load(), 2);
}

// Longer than std::string's inline buffer: a view of a temporary copy would read freed memory.
TEST_F(admin_fixture, a_long_token_is_compared_whole) {
  const std::string token(200, 'k');
  admin::hooks h;
  h.reload = [] { return admin_reply{200, "applied\n"}; };
  start({.token = token}, h);
  EXPECT_EQ(request(port, "POST", "/qos/reload", bearer(token)).status, 200);
  EXPECT_EQ(request(port, "POST", "/qos/reload", bearer(token + "k")).status, 401);
  EXPECT_EQ(request(port, "POST", "/qos/reload", bearer(token.substr(1))).status, 401);
}

TEST_F(admin_fixture, a_refused_reload_answers_400_with_the_error) {
  admin::hooks h;
  h.reload = [] { return admin_reply{400, "qos.yaml:3:5: groups[0].max_concurrent: too big\n"}; };
  start({.token = "t"}, h);
  auto r = request(port, "POST", "/qos/reload", bearer("t"));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body, "qos.yaml:3:5: groups[0].max_concurrent: too big\n");
}

TEST_F(admin_fixture, without_a_configured_token_post_is_refused) {
  admin::hooks h;
  h.reload = [] { return admin_reply{200, "applied\n"}; };
  start({}, h);
  EXPECT_EQ(request(port, "POST", "/qos/reload").status, 403);
  EXPECT_EQ(request(port, "POST", "/qos/reload", bearer("")).status, 403);
  EXPECT_EQ(request(port, "GET", "/healthz").status, 200);
}

TEST_F(admin_fixture, application_routes_behind_protect_need_the_token) {
  rt = std::make_unique<runtime>(small_config());
  a = std::make_unique<admin>(*rt, admin_options{.token = "t"});
  std::atomic<int> resets{0};
  rest::Routes::Post(a->router(), "/stats/reset",
                     a->protect([&](const rest::Request&, http::ResponseWriter w) {
                       ++resets;
                       w.send(http::Code::Ok, "reset\n");
                       return rest::Route::Result::Ok;
                     }));
  a->start();
  port = a->port();
  EXPECT_EQ(request(port, "POST", "/stats/reset").status, 401);
  EXPECT_EQ(resets.load(), 0);
  EXPECT_EQ(request(port, "POST", "/stats/reset", bearer("t")).status, 200);
  EXPECT_EQ(resets.load(), 1);
}

TEST_F(admin_fixture, readyz_turns_503_when_not_ready) {
  start({});
  EXPECT_EQ(request(port, "GET", "/readyz").status, 200);
  a->set_ready(false);
  auto r = request(port, "GET", "/readyz");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "draining\n");
  EXPECT_EQ(request(port, "GET", "/healthz").status, 200);
}

TEST(admin, beyond_loopback_a_token_is_required_for_everything) {
  runtime rt(small_config());
  EXPECT_THROW(admin(rt, admin_options{.address = "0.0.0.0", .token = {}}), std::invalid_argument);
  // Bound on all addresses (reached here through loopback): even reads need the token.
  admin a(rt, admin_options{.address = "0.0.0.0", .token = "t"});
  a.start();
  EXPECT_EQ(request(a.port(), "GET", "/metrics").status, 401);
  EXPECT_EQ(request(a.port(), "GET", "/qos/status").status, 401);
  EXPECT_EQ(request(a.port(), "GET", "/qos/status", bearer("t")).status, 200);
  a.shutdown();
  rt.drain(std::chrono::seconds(1));
}

TEST_F(admin_fixture, status_is_json_with_groups_and_routes) {
  admin::hooks h;
  h.config_hash = [] { return std::string("abc123"); };
  h.config_version = [] { return std::uint64_t{4}; };
  start({}, h);
  auto r = request(port, "GET", "/qos/status");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Content-Type").value_or(""), "application/json");
  std::string body = r.body;
  while (!body.empty() && body.back() == '\n') body.pop_back();
  if (!have_python3()) GTEST_SKIP() << "python3 not found: the JSON is not parsed";
  std::string error;
  auto out = python_json(
      {body},
      "o['config_hash'], o['config_version'], o['ready'], len(o['groups']), "
      "o['groups'][0]['name'], o['groups'][0]['limit'], o['groups'][0]['in_use'], "
      "o['groups'][0]['max_queue'], o['groups'][0]['shedding'], o['routes'][0]['name'], "
      "o['routes'][0]['group'], o['routes'][0]['arrivals'], "
      "o['routes'][0]['outcomes']['admitted'], "
      "o['uptime_seconds'] >= 0",
      &error);
  ASSERT_TRUE(out) << error;
  ASSERT_EQ(out->size(), 1u);
  EXPECT_EQ((*out)[0], "abc123 4 True 1 db 3 0 7 False items db 0 0 True");
}

}  // namespace
}  // namespace qos::test

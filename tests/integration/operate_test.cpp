// Operating a qos::server as a load balancer and an operator see it, over real HTTP on
// 127.0.0.1 (public listener and admin listener on ports the kernel picks):
//  - the drain order: /readyz 503 first, the public listener still serving through
//    server.drain_delay, then closed (ECONNREFUSED), every request answered exactly once;
//  - drain_parked: serve: parked requests served within the grace, newcomers on kept-alive
//    connections refused with the shutdown fallback, the rest answered when the grace is short;
//  - from the drain's start, each connection closed after its next answer;
//  - hurry() cutting a long drain short with every parked request answered, and the wait for
//    an answer a client does not read;
//  - POST /qos/reload on the admin listener: applied and listed, shown by /qos/status, an
//    invalid file refused with file:line:col:key and counted, the token required, and nothing
//    of it on the public port.
// Bounded waits only (eventually, poll deadlines); the lower bounds on time are the settings
// under test (drain_delay), never a speed.
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <pistache/router.h>
#include <boost/fiber/operations.hpp>

#include "integration/parked_batch.hpp"
#include "qos/qos.hpp"
#include "robustness/raw_client.hpp"
#include "support/eventually.hpp"
#include "support/http_client.hpp"

namespace qos::test {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace http = Pistache::Http;
namespace rest = Pistache::Rest;
using steady = std::chrono::steady_clock;

// Longer than a string's inline buffer, as real tokens are (a view of a copy of the header
// once dangled past 15 characters of "Bearer <token>").
constexpr const char* token = "op-s3cret-5d0c1e27a9b84f63a1e2c7d9";

// One group `db` of `limit` permits and a deep queue, route `guarded` waiting up to 20 s, an
// admin listener on a free loopback port with a token.
config::app_config operate_config(std::size_t limit) {
  config::app_config cfg;
  cfg.server.address = "127.0.0.1";
  cfg.server.port = 0;
  cfg.server.reactor_threads = 2;
  cfg.server.fiber_threads = 2;
  cfg.server.shutdown_grace = 10s;
  config::admin_config admin;
  admin.port = 0;
  admin.token = token;
  cfg.admin = admin;
  config::group_config g;
  g.name = "db";
  g.limiter.max_concurrent = limit;
  g.limiter.max_queue = 10000;
  cfg.groups.push_back(g);
  config::route_config r;
  r.name = "guarded";
  r.group = "db";
  r.max_wait = 20s;
  cfg.routes.push_back(r);
  return cfg;
}

http_request get(const std::string& target) {
  http_request req;
  req.target = target;
  return req;
}

header_list bearer(const std::string& t) {
  return {{"Authorization", "Bearer " + t}};
}

http_response call(std::uint16_t port, const std::string& method, const std::string& target,
                   header_list headers = {}) {
  http_connection c(port);
  http_request req;
  req.method = method;
  req.target = target;
  req.headers = std::move(headers);
  return c.request(req);
}

class operate_test : public ::testing::Test {
 protected:
  // /plain/:id answers its id on the reactor; /guarded/:id goes through the gate and sleeps
  // `work_` on its fiber before answering its id.
  void start(config::app_config cfg) {
    srv_ = std::make_unique<server>(std::move(cfg));
    auto& router = srv_->router();
    rest::Routes::Get(router, "/plain/:id",
                      gate::plain([](const rest::Request& req, http::ResponseWriter& w) {
                        w.send(http::Code::Ok, req.param(":id").as<std::string>());
                      }));
    rest::Routes::Get(
        router, "/guarded/:id",
        srv_->gate().guard("guarded", [this](const rest::Request& req, http::ResponseWriter& w) {
          while (hold_.load()) boost::this_fiber::sleep_for(1ms);
          boost::this_fiber::sleep_for(std::chrono::milliseconds(work_ms_.load()));
          w.send(http::Code::Ok, req.param(":id").as<std::string>());
        }));
    rest::Routes::Get(router, "/big",
                      gate::plain([this](const rest::Request&, http::ResponseWriter& w) {
                        ++big_answered_;
                        w.send(http::Code::Ok, std::string(8 << 20, 'x'));
                      }));
    srv_->start();
    ASSERT_NE(srv_->admin(), nullptr);
    port_ = srv_->port();
    admin_port_ = srv_->admin()->port();
  }

  // Parks `n` guarded requests and waits until all but `limit` of them wait in the queue. The
  // first `limit` hold their permits until then: a slow sender (a loaded machine) would
  // otherwise see the first ones served before the last arrive, and never that count.
  void park(parked_batch& batch, int n, std::size_t limit) {
    hold_ = true;
    const auto sent = batch.send(port_, n, "/guarded/1");
    const bool parked = eventually(
        [&] { return srv_->admission().waiting() == static_cast<std::size_t>(n) - limit; }, 20s);
    hold_ = false;
    ASSERT_EQ(sent, n) << batch.error();
    ASSERT_TRUE(parked) << srv_->admission().waiting() << " waiting";
  }

  void TearDown() override {
    if (stopper_.joinable()) stopper_.join();
    if (srv_) {
      EXPECT_TRUE(srv_->shutdown());
    }
    srv_.reset();
  }

  // shutdown() on a thread of its own, as run() does on a signal.
  void shutdown_async() {
    stopper_ = std::thread([this] { drained_ = srv_->shutdown(); });
  }
  bool join_shutdown() {
    stopper_.join();
    return drained_;
  }

  std::unique_ptr<server> srv_;
  std::uint16_t port_ = 0;
  std::uint16_t admin_port_ = 0;
  std::atomic<int> work_ms_{1};
  std::atomic<bool> hold_{false};     // guarded handlers wait (on their fibers) while true
  std::atomic<int> big_answered_{0};  // /big answers 8 MiB, more than socket buffers hold
  std::thread stopper_;
  bool drained_ = false;
};

TEST_F(operate_test, drain_says_not_ready_first_serves_through_the_delay_then_refuses) {
  auto cfg = operate_config(2);
  cfg.server.drain_delay = 300ms;
  work_ms_ = 400;
  start(cfg);
  EXPECT_EQ(call(admin_port_, "GET", "/readyz").status, 200);

  parked_batch parked;
  park(parked, 20, 2);
  const auto began = steady::now();
  shutdown_async();

  // A load balancer's probe sees 503 first...
  ASSERT_TRUE(eventually([&] { return call(admin_port_, "GET", "/readyz").status == 503; }, 5s));
  // ...while the public listener still takes new connections and serves them.
  const auto during = call(port_, "GET", "/plain/7");
  EXPECT_EQ(during.status, 200) << during.error;
  EXPECT_EQ(during.body, "7");
  parked_batch late;
  EXPECT_EQ(late.send(port_, 1, "/guarded/2"), 1) << late.error();
  EXPECT_EQ(call(admin_port_, "GET", "/healthz").status, 200);

  // Then the listener closes: nothing new is accepted, not once.
  ASSERT_TRUE(eventually([&] { return connect_errno(port_) == ECONNREFUSED; }, 5s));
  EXPECT_GE(steady::now() - began, 300ms) << "the listener closed before drain_delay";
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(connect_errno(port_), ECONNREFUSED);
    std::this_thread::sleep_for(5ms);
  }

  EXPECT_TRUE(join_shutdown());
  parked.collect(10s);
  late.collect(10s);
  for (const parked_batch* b : {&parked, &late}) {
    EXPECT_EQ(b->answered(), b->sent()) << b->error();
    EXPECT_EQ(b->unexpected(), 0);
    EXPECT_EQ(b->extra(), 0);
  }
  // The two running at the start finished; the queue was shed (drain_parked: shed), which it
  // could not have been in full: 18 waiters of 400 ms on 2 permits outlast the delay.
  EXPECT_GE(parked.with_status(200), 2);
  EXPECT_GE(parked.shutdown_fallbacks(), 1);
  EXPECT_EQ(parked.with_status(200) + parked.shutdown_fallbacks(), 20);
}

TEST_F(operate_test, drain_parked_serve_serves_the_queue_and_refuses_newcomers) {
  auto cfg = operate_config(2);
  cfg.server.drain_parked = config::drain_mode::serve;
  work_ms_ = 200;
  start(cfg);
  // A kept-alive connection opened before the drain.
  http_connection kept(port_);
  ASSERT_EQ(kept.request(get("/plain/1")).status, 200);

  parked_batch parked;
  park(parked, 12, 2);  // 12 x 200 ms on 2 permits: about 1.2 s of work
  shutdown_async();
  ASSERT_TRUE(eventually([&] { return connect_errno(port_) == ECONNREFUSED; }, 5s));
  // The listener closes just before the queue does (one call apart): this request arrives
  // later still, through the reactor, while the queue is being served.
  const auto newcomer = kept.request(get("/guarded/9"));
  EXPECT_EQ(newcomer.status, 503) << newcomer.error;
  EXPECT_EQ(newcomer.header("X-QoS-Outcome").value_or(""), "shutdown");

  EXPECT_TRUE(join_shutdown());
  parked.collect(10s);
  EXPECT_EQ(parked.with_status(200), 12) << parked.error();
  EXPECT_EQ(parked.extra(), 0);
}

TEST_F(operate_test, drain_parked_serve_with_a_short_grace_answers_the_rest_with_the_fallback) {
  auto cfg = operate_config(2);
  cfg.server.drain_parked = config::drain_mode::serve;
  cfg.server.shutdown_grace = 500ms;
  work_ms_ = 50;
  start(cfg);
  parked_batch parked;
  park(parked, 60, 2);  // 60 x 50 ms on 2 permits: 1.5 s of work, three times the grace
  shutdown_async();
  EXPECT_TRUE(join_shutdown());
  parked.collect(10s);
  EXPECT_EQ(parked.answered(), 60) << parked.error();
  EXPECT_EQ(parked.unexpected(), 0);
  EXPECT_EQ(parked.extra(), 0);
  EXPECT_GE(parked.with_status(200), 2);
  EXPECT_GE(parked.shutdown_fallbacks(), 1);
}

TEST_F(operate_test, hurry_ends_a_long_drain_with_every_parked_request_answered) {
  auto cfg = operate_config(1);
  cfg.server.drain_parked = config::drain_mode::serve;
  cfg.server.shutdown_grace = 60s;
  cfg.server.drain_delay = 100ms;
  work_ms_ = 50;
  start(cfg);
  parked_batch parked;
  park(parked, 100, 1);  // 100 x 50 ms on one permit: 5 s to serve them all
  shutdown_async();
  ASSERT_TRUE(eventually([&] { return connect_errno(port_) == ECONNREFUSED; }, 5s));
  std::this_thread::sleep_for(100ms);
  const auto hurried = steady::now();
  srv_->hurry();
  EXPECT_TRUE(join_shutdown());
  // Far less than the 4.5 s or more of queue left, or the 60 s grace.
  EXPECT_LT(steady::now() - hurried, 3s);
  parked.collect(10s);
  EXPECT_EQ(parked.answered(), 100) << parked.error();
  EXPECT_EQ(parked.unexpected(), 0);
  EXPECT_EQ(parked.extra(), 0);
  EXPECT_GE(parked.with_status(200), 1);
  EXPECT_GE(parked.shutdown_fallbacks(), 1) << "the queue was served in full: no hurry";
}

// From the start of a drain every answer says `Connection: close` and ends its connection, the
// answer of a request already running included: a closed-loop client reconnects instead of
// sending its next request into the stop.
TEST_F(operate_test, a_drain_closes_each_connection_after_its_next_answer) {
  auto cfg = operate_config(2);
  cfg.server.drain_delay = 2s;
  work_ms_ = 300;
  start(cfg);
  const auto get_line = [](const std::string& target) {
    return "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  };
  raw_client kept(port_);
  ASSERT_TRUE(kept.send(get_line("/plain/1")));
  const auto before = kept.read(1);
  ASSERT_EQ(before.responses.size(), 1u);
  EXPECT_TRUE(before.responses[0].keep_alive);
  raw_client running(port_);
  ASSERT_TRUE(running.send(get_line("/guarded/2")));  // on its fiber for 300 ms
  ASSERT_TRUE(
      eventually([&] { return srv_->admission().find_group("db")->stats().in_use == 1; }, 5s));

  shutdown_async();
  ASSERT_TRUE(eventually([&] { return call(admin_port_, "GET", "/readyz").status == 503; }, 5s));
  // The listener still serves (drain_delay), each connection for one more answer.
  ASSERT_TRUE(kept.send(get_line("/plain/3")));
  const auto after = kept.read_until_closed();
  ASSERT_EQ(after.responses.size(), 1u);
  EXPECT_EQ(after.responses[0].body, "3");
  EXPECT_FALSE(after.responses[0].keep_alive);
  EXPECT_TRUE(after.closed);
  const auto late = running.read_until_closed();
  ASSERT_EQ(late.responses.size(), 1u);
  EXPECT_EQ(late.responses[0].body, "2");
  EXPECT_FALSE(late.responses[0].keep_alive);
  EXPECT_TRUE(late.closed);
  srv_->hurry();
  EXPECT_TRUE(join_shutdown());
}

// The stop writes out queued answers within the grace, but a client that reads nothing cannot
// hold it past a hurry.
TEST_F(operate_test, hurry_ends_the_wait_for_a_client_that_reads_nothing) {
  auto cfg = operate_config(1);
  cfg.server.shutdown_grace = 60s;
  start(cfg);
  raw_client reader(port_, /*receive_buffer=*/4096);
  ASSERT_TRUE(reader.connected());
  ASSERT_TRUE(reader.send("GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
  ASSERT_TRUE(eventually([&] { return big_answered_.load() == 1; }, 5s));
  shutdown_async();
  ASSERT_TRUE(eventually([&] { return connect_errno(port_) == ECONNREFUSED; }, 5s));
  const auto hurried = steady::now();
  srv_->hurry();
  EXPECT_TRUE(join_shutdown());  // every handler ended: a clean drain, one answer unwritten
  // Far less than the 60 s grace the unread answer could otherwise hold the stop.
  EXPECT_LT(steady::now() - hurried, 3s);
}

// The config as a file, reloaded through the admin listener.
class operate_reload_test : public operate_test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("qos-operate-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "token") << token << "\n";
    path_ = (dir_ / "qos.yaml").string();
  }
  void TearDown() override {
    operate_test::TearDown();
    fs::remove_all(dir_);
  }

  // Written whole to a new file and renamed over the old: the server never reads half a file.
  void write_config(const std::string& text) {
    const auto tmp = dir_ / "qos.yaml.tmp";
    std::ofstream(tmp) << text;
    fs::rename(tmp, path_);
  }
  static std::string yaml(const std::string& max_concurrent) {
    return "server: {address: 127.0.0.1, port: 0, reactor_threads: 2, fiber_threads: 2}\n"
           "admin: {port: 0, token_file: token}\n"
           "groups:\n"
           "  - name: db\n"
           "    max_concurrent: " +
           max_concurrent +
           "\n"
           "    max_queue: 1000\n"
           "routes:\n"
           "  - {name: guarded, group: db, max_wait: 20s}\n";
  }

  // The db group's limit in /qos/status, or -1.
  int status_limit() {
    const auto r = call(admin_port_, "GET", "/qos/status");
    std::smatch m;
    static const std::regex limit("\"name\":\"db\",\"limit\":([0-9]+)");
    if (r.status != 200 || !std::regex_search(r.body, m, limit)) return -1;
    return std::stoi(m[1].str());
  }

  fs::path dir_;
  std::string path_;
};

TEST_F(operate_reload_test, post_reload_applies_refuses_counts_and_needs_the_token) {
  write_config(yaml("2"));
  start(config::load_config(path_));
  EXPECT_EQ(status_limit(), 2);

  write_config(yaml("4"));
  const auto applied = call(admin_port_, "POST", "/qos/reload", bearer(token));
  EXPECT_EQ(applied.status, 200) << applied.body;
  EXPECT_NE(applied.body.find("group db: max_concurrent 2 -> 4"), std::string::npos)
      << applied.body;
  EXPECT_EQ(status_limit(), 4);
  EXPECT_EQ(call(port_, "GET", "/guarded/5").body, "5");

  // Line 5, column 21: the value of max_concurrent.
  write_config(yaml("0"));
  const auto refused = call(admin_port_, "POST", "/qos/reload", bearer(token));
  EXPECT_EQ(refused.status, 400);
  EXPECT_NE(refused.body.find(path_ + ":5:21: groups[0].max_concurrent:"), std::string::npos)
      << refused.body;
  EXPECT_EQ(status_limit(), 4);
  EXPECT_EQ(srv_->runtime().current_config()->find_group("db")->limiter.max_concurrent, 4u);

  // Without the token, or with another: refused before anything is read.
  write_config(yaml("6"));
  const auto anonymous = call(admin_port_, "POST", "/qos/reload");
  EXPECT_EQ(anonymous.status, 401);
  EXPECT_EQ(
      call(admin_port_, "POST", "/qos/reload", bearer("op-s3cret-5d0c1e27a9b84f63a1e2c7d")).status,
      401);
  EXPECT_EQ(status_limit(), 4);

  const auto metrics = call(admin_port_, "GET", "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("qos_config_reloads_total{result=\"error\"} 1"), std::string::npos)
      << metrics.body;
  EXPECT_NE(metrics.body.find("qos_config_reloads_total{result=\"ok\"} 1"), std::string::npos);

  // The public listener knows none of it.
  EXPECT_EQ(call(port_, "POST", "/qos/reload", bearer(token)).status, 404);
  EXPECT_EQ(call(port_, "GET", "/qos/status").status, 404);
  EXPECT_EQ(call(port_, "GET", "/metrics").status, 404);
  EXPECT_EQ(call(port_, "GET", "/readyz").status, 404);
  EXPECT_EQ(status_limit(), 4);
}

}  // namespace
}  // namespace qos::test

// Reloading a live server's config through runtime::reload over real HTTP on 127.0.0.1: a raised
// limit under 500 parked requests is used at once and never exceeded, and loses no request; an
// invalid config changes nothing and is counted; a storm of reloads under load loses nothing;
// a request runs under the policy it arrived with.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pistache/router.h>
#include <boost/fiber/operations.hpp>

#include "qos/qos.hpp"
#include "support/eventually.hpp"
#include "support/http_client.hpp"
#include "support/wire/http_response_parser.hpp"

namespace qos {
namespace {

using test::eventually;

using namespace std::chrono_literals;
namespace http = Pistache::Http;
namespace rest = Pistache::Rest;

// What a burst of clients got back: one entry per connection.
struct burst_result {
  std::vector<int> status;  // 0: no complete response before the deadline
  int extra = 0;            // connections that received bytes after their one response
  std::string error;        // the first socket or parse failure, if any
};

// Opens `n` connections to 127.0.0.1:port, sends one keep-alive GET `target` on each, and reads
// exactly one response per connection (poll, no thread per connection), all within `limit`.
// Then listens 50 ms more: a second response on any connection counts in `extra`.
burst_result burst(std::uint16_t port, int n, const std::string& target,
                   std::chrono::milliseconds limit = 60s) {
  burst_result out;
  out.status.assign(static_cast<std::size_t>(n), 0);
  std::vector<int> fds;
  std::vector<wire::http_response_parser> parsers(static_cast<std::size_t>(n));
  const std::string request =
      "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < n; ++i) {
    // A loopback accept queue may hold as few as 129 connections (somaxconn 128), and a SYN
    // that finds it full is retried only a second later: give the server time to accept.
    if (i % 64 == 63) std::this_thread::sleep_for(10ms);
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
            static_cast<ssize_t>(request.size())) {
      if (out.error.empty()) out.error = "connect/send failed";
      if (fd >= 0) ::close(fd);
      fds.push_back(-1);
      continue;
    }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    fds.push_back(fd);
  }
  const auto read_round = [&](std::chrono::milliseconds wait, bool after) {
    std::vector<pollfd> polled;
    std::vector<std::size_t> which;
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (fds[i] >= 0 && (after || out.status[i] == 0)) {
        polled.push_back({fds[i], POLLIN, 0});
        which.push_back(i);
      }
    }
    if (polled.empty()) return false;
    if (::poll(polled.data(), polled.size(), static_cast<int>(wait.count())) <= 0) return true;
    char buf[4096];
    for (std::size_t k = 0; k < polled.size(); ++k) {
      if (polled[k].revents == 0) continue;
      const std::size_t i = which[k];
      const ssize_t got = ::recv(fds[i], buf, sizeof buf, 0);
      if (got <= 0) {
        if (out.status[i] == 0 && out.error.empty()) out.error = "closed before a response";
        ::close(fds[i]);
        fds[i] = -1;
        continue;
      }
      if (after) {
        ++out.extra;
        continue;
      }
      parsers[i].feed(std::string_view(buf, static_cast<std::size_t>(got)));
      const auto r = parsers[i].next();
      if (r == wire::parse_result::complete) {
        out.status[i] = parsers[i].response().status;
      } else if (r == wire::parse_result::error && out.error.empty()) {
        out.error = parsers[i].error();
      }
    }
    return true;
  };
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until && read_round(100ms, false)) {
  }
  const auto quiet = std::chrono::steady_clock::now() + 50ms;
  while (std::chrono::steady_clock::now() < quiet && read_round(10ms, true)) {
  }
  for (int fd : fds) {
    if (fd >= 0) ::close(fd);
  }
  return out;
}

// The handler of /work: holds a blocking-pool thread for `work`, counting how many run at once.
struct load_meter {
  std::chrono::milliseconds work{20};
  std::atomic<int> running{0};
  std::atomic<int> peak{0};
  std::mutex m;
  std::vector<clock::time_point> finished;  // guarded by m

  void enter() {
    const int now = ++running;
    int seen = peak.load();
    while (now > seen && !peak.compare_exchange_weak(seen, now)) {
    }
  }
  void leave() {
    --running;
    std::lock_guard lk(m);
    finished.push_back(clock::now());
  }
  // Handlers that finished within [from, to).
  int finished_in(clock::time_point from, clock::time_point to) {
    std::lock_guard lk(m);
    return static_cast<int>(std::count_if(finished.begin(), finished.end(),
                                          [&](auto t) { return t >= from && t < to; }));
  }
};

std::string yaml(std::size_t limit, const std::string& route_extra = "",
                 const std::string& max_wait = "30s") {
  return R"(
server: {address: 127.0.0.1, port: 0, reactor_threads: 2, fiber_threads: 2}
groups:
  - {name: db, max_concurrent: )" +
         std::to_string(limit) + R"(, max_queue: 1000}
routes:
  - {name: work, group: db, max_wait: )" +
         max_wait + route_extra + R"(}
)";
}

class reload_test : public ::testing::Test {
 protected:
  void start(const std::string& text) {
    srv_ = std::make_unique<server>(config::load_config_string(text, "qos.yaml"));
    rest::Routes::Get(
        srv_->router(), "/work",
        srv_->gate().guard_blocking("work", [this](const rest::Request&, http::ResponseWriter& w) {
          meter_.enter();
          std::this_thread::sleep_for(meter_.work);
          meter_.leave();
          w.send(http::Code::Ok, "done");
        }));
    srv_->start();
  }
  group_stats db() { return srv_->admission().find_group("db")->stats(); }
  const metrics_registry::route_series& counters() { return *srv_->metrics().find("work"); }
  std::future<burst_result> burst_async(int n, const std::string& target = "/work") {
    return std::async(std::launch::async,
                      [port = srv_->port(), n, target] { return burst(port, n, target); });
  }
  void TearDown() override {
    if (srv_) srv_->shutdown();
  }

  load_meter meter_;
  std::unique_ptr<server> srv_;
};

TEST_F(reload_test, a_raised_limit_is_used_at_once_by_500_parked_requests_and_loses_none) {
  meter_.work = 40ms;
  start(yaml(8));
  auto clients = burst_async(500);
  ASSERT_TRUE(eventually([&] { return db().waiting + db().reserved >= 400; }, 30s))
      << "waiting " << db().waiting << ", in use " << db().in_use << ", arrived "
      << counters().arrivals() << ", finished " << meter_.finished_in({}, clock::now());
  const auto before = clock::now();
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(meter_.peak.load(), 8);

  const auto reloaded_at = clock::now();
  const auto r = srv_->runtime().reload(config::load_config_string(yaml(16), "qos.yaml"));
  ASSERT_TRUE(r.applied) << r.error;
  EXPECT_EQ(r.changes, std::vector<std::string>{"group db: max_concurrent 8 -> 16"});
  EXPECT_TRUE(r.restart_needed.empty());
  // Granted by the reload itself, not at later releases: 16 permits are out when it returns.
  EXPECT_EQ(db().in_use, 16u);
  ASSERT_TRUE(eventually([&] { return meter_.peak.load() == 16; }, 5s));
  std::this_thread::sleep_for(250ms);
  const auto after = clock::now();

  const burst_result got = clients.get();
  EXPECT_EQ(got.error, "");
  EXPECT_EQ(got.extra, 0) << "a request was answered twice";
  EXPECT_EQ(std::count(got.status.begin(), got.status.end(), 200), 500);
  EXPECT_EQ(meter_.peak.load(), 16) << "the new limit was exceeded";

  // Goodput: completions per window roughly double (a ratio, with slack for a loaded machine).
  const int old_rate = meter_.finished_in(before, reloaded_at);
  const int new_rate = meter_.finished_in(after - (reloaded_at - before), after);
  EXPECT_GT(old_rate, 0);
  EXPECT_GE(new_rate * 10, old_rate * 15) << old_rate << " then " << new_rate;

  // The counters add up: every request arrived once and was admitted once.
  EXPECT_EQ(counters().arrivals(), 500u);
  EXPECT_EQ(counters().count(outcome::admitted), 500u);
  EXPECT_EQ(srv_->metrics().reloads(true), 1u);
  EXPECT_EQ(srv_->metrics().reloads(false), 0u);
  EXPECT_EQ(db().limit, 16u);
  EXPECT_EQ(srv_->runtime().current_config()->find_group("db")->limiter.max_concurrent, 16u);
  const std::string page = srv_->metrics().render(srv_->admission());
  EXPECT_NE(page.find("qos_config_reloads_total{result=\"ok\"} 1"), std::string::npos);
}

TEST_F(reload_test, an_invalid_file_changes_nothing_and_is_reported_and_counted) {
  start(yaml(8));
  const std::string path = ::testing::TempDir() + "qos_reload_invalid.yaml";
  {
    std::ofstream f(path);
    f << "groups:\n  - {name: db, max_concurrent: 0}\nroutes:\n  - {name: work, group: db}\n";
  }
  const auto r = srv_->runtime().reload_file(path);
  EXPECT_FALSE(r.applied);
  EXPECT_EQ(r.error.rfind(path + ":2:", 0), 0u) << r.error;
  EXPECT_NE(r.error.find("groups[0].max_concurrent: must be > 0"), std::string::npos) << r.error;
  EXPECT_TRUE(r.changes.empty());

  // A route the code guards cannot go: refused too.
  {
    std::ofstream f(path);
    f << "groups:\n  - {name: db, max_concurrent: 16}\nroutes:\n  - {name: other, group: db}\n";
  }
  const auto gone = srv_->runtime().reload_file(path);
  EXPECT_FALSE(gone.applied);
  EXPECT_NE(gone.error.find("route 'work' is guarded"), std::string::npos) << gone.error;

  EXPECT_FALSE(srv_->runtime().reload_file(path + ".missing").applied);
  std::remove(path.c_str());

  EXPECT_EQ(db().limit, 8u);
  EXPECT_EQ(srv_->runtime().current_config()->find_group("db")->limiter.max_concurrent, 8u);
  EXPECT_EQ(srv_->metrics().reloads(false), 3u);
  EXPECT_EQ(srv_->metrics().reloads(true), 0u);
  EXPECT_EQ(test::http_get(srv_->port(), "/work").status, 200);
  const std::string page = srv_->metrics().render(srv_->admission());
  EXPECT_NE(page.find("qos_config_reloads_total{result=\"error\"} 3"), std::string::npos);
}

TEST_F(reload_test, a_hundred_reloads_in_a_second_under_load_lose_nothing) {
  start(yaml(4));
  auto clients = burst_async(600);
  ASSERT_TRUE(eventually([&] { return db().waiting + db().reserved >= 100; }, 30s));
  // Limits and route policy both move: 4 and 12 permits, two max_waits and fallbacks.
  const auto one = config::load_config_string(yaml(12, ", fallback: {status: 503, body: a}"));
  const auto two = config::load_config_string(yaml(4, "", "29s"));
  int applied = 0;
  for (int i = 0; i < 100; ++i) {
    applied += srv_->runtime().reload(i % 2 == 0 ? one : two).applied ? 1 : 0;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(applied, 100);
  const burst_result got = clients.get();
  EXPECT_EQ(got.error, "");
  EXPECT_EQ(got.extra, 0);
  EXPECT_EQ(std::count(got.status.begin(), got.status.end(), 200), 600);
  EXPECT_LE(meter_.peak.load(), 12);
  EXPECT_EQ(counters().arrivals(), 600u);
  EXPECT_EQ(counters().count(outcome::admitted), 600u);
  EXPECT_EQ(srv_->metrics().reloads(true), 100u);
  EXPECT_EQ(db().in_use, 0u);
  EXPECT_EQ(db().waiting, 0u);
}

// A request keeps the policy it arrived with: a parked request's wait and fallback are the old
// ones after a reload, and a request that arrives after it gets the new ones.
TEST(reload_policy_test, each_request_runs_under_the_policy_it_arrived_with) {
  std::atomic<bool> hold{true};
  server srv(config::load_config_string(R"(
server: {address: 127.0.0.1, port: 0, reactor_threads: 2, fiber_threads: 2}
groups:
  - {name: db, max_concurrent: 1}
routes:
  - {name: slow, group: db, max_wait: 400ms, fallback: {status: 503, body: old}}
)"));
  rest::Routes::Get(srv.router(), "/slow",
                    srv.gate().guard("slow", [&](const rest::Request&, http::ResponseWriter& w) {
                      while (hold.load()) boost::this_fiber::sleep_for(1ms);
                      w.send(http::Code::Ok, "served");
                    }));
  srv.start();
  auto* db = srv.admission().find_group("db");
  auto holder = std::async(std::launch::async, [&] { return test::http_get(srv.port(), "/slow"); });
  ASSERT_TRUE(eventually([&] { return db->stats().in_use == 1; }));
  auto parked = std::async(std::launch::async, [&] { return test::http_get(srv.port(), "/slow"); });
  ASSERT_TRUE(eventually([&] { return db->stats().waiting == 1; }));

  auto next = srv.runtime().current_config();
  auto changed = *next;
  changed.routes[0].max_wait = 20s;
  changed.routes[0].fallback.route.status = 429;
  changed.routes[0].fallback.route.body = "new";
  const auto r = srv.runtime().reload(changed);
  ASSERT_TRUE(r.applied) << r.error;
  ASSERT_EQ(r.changes.size(), 2u);
  EXPECT_EQ(r.changes[0], "route slow: max_wait 400ms -> 20s");
  EXPECT_EQ(r.changes[1].rfind("route slow: fallback changed for queue_full, timeout, ", 0), 0u)
      << r.changes[1];

  // The parked request times out at its own 400 ms with its own fallback.
  const auto old = parked.get();
  EXPECT_EQ(old.status, 503);
  EXPECT_EQ(old.body, "old");
  EXPECT_EQ(old.header("X-QoS-Outcome").value_or(""), "timeout");

  // One arriving now waits up to 20 s: it is served once the holder lets go.
  auto fresh = std::async(std::launch::async, [&] { return test::http_get(srv.port(), "/slow"); });
  ASSERT_TRUE(eventually([&] { return db->stats().waiting == 1; }));
  std::this_thread::sleep_for(500ms);  // past the old max_wait
  hold = false;
  EXPECT_EQ(fresh.get().status, 200);
  EXPECT_EQ(holder.get().status, 200);
  srv.shutdown();
}

// Shadow mode switched on by a reload lets everything through at once; switched off, the limit
// holds again for requests that arrive after.
TEST(reload_policy_test, shadow_mode_follows_the_reload) {
  std::atomic<int> running{0}, peak{0};
  std::atomic<bool> hold{true};
  server srv(config::load_config_string(R"(
server: {address: 127.0.0.1, port: 0, reactor_threads: 2, fiber_threads: 2}
groups:
  - {name: db, max_concurrent: 1}
routes:
  - {name: r, group: db, max_wait: 20s}
)"));
  rest::Routes::Get(srv.router(), "/r",
                    srv.gate().guard("r", [&](const rest::Request&, http::ResponseWriter& w) {
                      const int now = ++running;
                      int seen = peak.load();
                      while (now > seen && !peak.compare_exchange_weak(seen, now)) {
                      }
                      while (hold.load()) boost::this_fiber::sleep_for(1ms);
                      --running;
                      w.send(http::Code::Ok, "ok");
                    }));
  srv.start();
  auto shadowed = *srv.runtime().current_config();
  shadowed.groups[0].shadow = true;
  ASSERT_TRUE(srv.runtime().reload(shadowed).applied);
  std::vector<std::future<test::http_response>> calls;
  for (int i = 0; i < 3; ++i) {
    calls.push_back(
        std::async(std::launch::async, [&] { return test::http_get(srv.port(), "/r"); }));
  }
  ASSERT_TRUE(eventually([&] { return running == 3; }));
  hold = false;
  for (auto& c : calls) EXPECT_EQ(c.get().status, 200);
  EXPECT_EQ(peak.load(), 3);
  EXPECT_EQ(srv.metrics().find("r")->arrivals(), 3u);
  srv.shutdown();
}

}  // namespace
}  // namespace qos

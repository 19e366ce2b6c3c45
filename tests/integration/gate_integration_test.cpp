// The gate over real HTTP: a real Pistache server on 127.0.0.1, port 0, real sockets. Waits
// are bounded; nothing asserts speed.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <pistache/router.h>
#include <boost/fiber/operations.hpp>

#include "qos/qos.hpp"
#include "support/eventually.hpp"
#include "support/http_client.hpp"

namespace qos {
namespace {

using test::eventually;

using namespace std::chrono_literals;
namespace http = Pistache::Http;
namespace rest = Pistache::Rest;
using test::http_connection;
using test::http_get;
using test::http_response;

// A gate a test opens: handlers park on it (fiber-friendly) until the test lets them go.
class valve {
 public:
  void open() { open_ = true; }
  bool is_open() const { return open_; }
  void wait_on_fiber() const {
    const auto until = clock::now() + 10s;
    while (!open_ && clock::now() < until) boost::this_fiber::sleep_for(1ms);
  }

 private:
  std::atomic<bool> open_{false};
};

config::app_config base_config() {
  config::app_config cfg;
  cfg.server.address = "127.0.0.1";
  cfg.server.port = 0;
  cfg.server.reactor_threads = 2;
  cfg.server.fiber_threads = 2;
  cfg.server.shutdown_grace = 5000ms;
  return cfg;
}

config::group_config group(std::string name, std::size_t n, std::size_t queue) {
  config::group_config g;
  g.name = std::move(name);
  g.limiter.max_concurrent = n;
  g.limiter.max_queue = queue;
  return g;
}

config::route_config route(std::string name, std::string grp, std::chrono::milliseconds wait) {
  config::route_config r;
  r.name = std::move(name);
  r.group = std::move(grp);
  r.max_wait = wait;
  return r;
}

// Tracks how many handlers run at once.
struct concurrency_probe {
  std::atomic<int> now{0}, peak{0}, runs{0};
  void enter() {
    ++runs;
    const int n = ++now;
    int seen = peak.load();
    while (n > seen && !peak.compare_exchange_weak(seen, n)) {
    }
  }
  void leave() { --now; }
};

class gate_test : public ::testing::Test {
 protected:
  void start(config::app_config cfg) {
    srv_ = std::make_unique<server>(std::move(cfg));
    rest::Routes::Get(srv_->router(), "/cache",
                      gate::plain([](const rest::Request&, http::ResponseWriter& w) {
                        w.send(http::Code::Ok, std::string("cached"));
                      }));
  }
  void serve() {
    srv_->start();
    port_ = srv_->port();
  }
  void TearDown() override {
    if (srv_) {
      EXPECT_TRUE(srv_->shutdown());
    }
  }
  group_stats stats(const std::string& g) { return srv_->admission().find_group(g)->stats(); }
  rest::Router& router() { return srv_->router(); }
  qos::gate& gate() { return srv_->gate(); }

  std::unique_ptr<server> srv_;
  std::uint16_t port_ = 0;
};

TEST_F(gate_test, limit_of_four_is_exact_under_eight_clients_and_all_are_served) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 4, 100));
  cfg.routes.push_back(route("work", "db", 5000ms));
  start(cfg);
  concurrency_probe probe;
  rest::Routes::Get(router(), "/work",
                    gate().guard("work", [&](const rest::Request&, http::ResponseWriter& w) {
                      probe.enter();
                      boost::this_fiber::sleep_for(50ms);
                      probe.leave();
                      w.send(http::Code::Ok, std::string("done"));
                    }));
  serve();

  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&] {
      http_connection conn(port_);
      for (int i = 0; i < 6; ++i) {
        auto r = conn.request({"GET", "/work", {}, {}});
        if (r.status == 200 && r.body == "done") ++ok;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 48);
  EXPECT_EQ(probe.runs.load(), 48);
  EXPECT_EQ(probe.peak.load(), 4);
  EXPECT_TRUE(eventually([&] { return stats("db").in_use == 0; }));
}

TEST_F(gate_test, blocking_handlers_share_one_group_and_respect_its_limit) {
  auto cfg = base_config();
  cfg.groups.push_back(group("pool", 3, 100));
  cfg.routes.push_back(route("a", "pool", 5000ms));
  cfg.routes.push_back(route("b", "pool", 5000ms));
  start(cfg);
  concurrency_probe probe;
  auto blocking = [&](const rest::Request&, http::ResponseWriter& w) {
    probe.enter();
    std::this_thread::sleep_for(30ms);  // a synchronous driver call: on the blocking pool
    probe.leave();
    w.send(http::Code::Ok, std::string("row"));
  };
  rest::Routes::Get(router(), "/a", gate().guard_blocking("a", blocking));
  rest::Routes::Get(router(), "/b", gate().guard_blocking("b", blocking));
  serve();

  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      http_connection conn(port_);
      for (int i = 0; i < 4; ++i) {
        if (conn.request({"GET", c % 2 ? "/a" : "/b", {}, {}}).status == 200) ++ok;
      }
    });
  }
  // The cache route answers on the reactor meanwhile, although every permit is taken.
  EXPECT_TRUE(eventually([&] { return stats("pool").in_use == 3; }));
  EXPECT_EQ(http_get(port_, "/cache").status, 200);
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 32);
  EXPECT_EQ(probe.peak.load(), 3);
}

TEST_F(gate_test, cache_route_answers_while_group_is_saturated_and_queue_is_full) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 2));
  auto r = route("slow", "db", 10000ms);
  auto& busy = r.fallback.own[index(outcome::queue_full)];
  busy = r.fallback.route;
  busy->status = 429;
  busy->retry_after_s = 2;
  busy->body = "busy";
  cfg.routes.push_back(r);
  start(cfg);
  valve v;
  std::atomic<int> runs{0};
  rest::Routes::Get(router(), "/slow",
                    gate().guard("slow", [&](const rest::Request&, http::ResponseWriter& w) {
                      ++runs;
                      v.wait_on_fiber();
                      w.send(http::Code::Ok, std::string("slow"));
                    }));
  serve();

  // 1 running + 2 parked fill the group; the fourth is shed at once.
  std::vector<std::thread> held;
  std::atomic<int> held_ok{0};
  for (int i = 0; i < 3; ++i) {
    held.emplace_back([&] {
      if (http_get(port_, "/slow").status == 200) ++held_ok;
    });
    ASSERT_TRUE(eventually([&] {
      auto s = stats("db");
      return s.in_use + s.waiting == static_cast<std::size_t>(i + 1);
    }));
  }
  auto shed = http_get(port_, "/slow");
  EXPECT_EQ(shed.status, 429);
  EXPECT_EQ(shed.header("Retry-After"), "2");
  EXPECT_EQ(shed.header(outcome_header), "queue_full");
  EXPECT_EQ(shed.body, "busy");

  auto cached = http_get(port_, "/cache");
  EXPECT_EQ(cached.status, 200);
  EXPECT_EQ(cached.body, "cached");

  v.open();
  for (auto& t : held) t.join();
  EXPECT_EQ(held_ok.load(), 3);
  EXPECT_EQ(runs.load(), 3);
}

TEST_F(gate_test, wait_timeout_answers_the_fallback_and_never_runs_the_handler) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  auto r = route("slow", "db", 100ms);
  r.fallback.route.status = 503;
  r.fallback.route.retry_after_s = 1;
  r.fallback.route.headers["X-Team"] = "catalog";
  r.fallback.route.body = R"({"error":"overloaded"})";
  r.fallback.route.content_type = "application/json";
  cfg.routes.push_back(r);
  start(cfg);
  valve v;
  std::atomic<int> runs{0};
  rest::Routes::Get(router(), "/slow",
                    gate().guard("slow", [&](const rest::Request&, http::ResponseWriter& w) {
                      ++runs;
                      v.wait_on_fiber();
                      w.send(http::Code::Ok, std::string("slow"));
                    }));
  rest::Routes::Get(router(), "/metrics", srv_->metrics_handler());
  serve();

  std::thread holder([&] { EXPECT_EQ(http_get(port_, "/slow").status, 200); });
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 1; }));
  const auto sent = clock::now();
  auto late = http_get(port_, "/slow");
  EXPECT_GE(clock::now() - sent, 100ms);
  EXPECT_EQ(late.status, 503);
  EXPECT_EQ(late.header("Retry-After"), "1");
  EXPECT_EQ(late.header("X-Team"), "catalog");
  EXPECT_EQ(late.header(outcome_header), "timeout");
  EXPECT_EQ(late.header("Content-Type"), "application/json");
  EXPECT_EQ(late.body, R"({"error":"overloaded"})");
  EXPECT_EQ(stats("db").waiting, 0u);
  v.open();
  holder.join();
  EXPECT_EQ(runs.load(), 1);
  EXPECT_TRUE(eventually([&] { return stats("db").in_use == 0; }));
  const auto* m = srv_->metrics().find("slow");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->count(outcome::timeout), 1u);
  EXPECT_EQ(m->count(outcome::admitted), 1u);
  // The one timeout is in the lateness histogram, and the exposition shows it.
  EXPECT_EQ(m->late_count(), 1u);
  const auto text = http_get(port_, "/metrics").body;
  EXPECT_NE(text.find("qos_fallback_late_seconds_count{group=\"db\",route=\"slow\"} 1"),
            std::string::npos)
      << text;
}

// The sum of the values of the samples of `name` (a counter) for `route` in a text exposition.
double metric_sum(const std::string& text, const std::string& name, const std::string& route) {
  double total = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + "{", 0) != 0) continue;
    if (line.find("route=\"" + route + "\"") == std::string::npos) continue;
    total += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return total;
}

TEST_F(gate_test, metrics_count_every_arrival_once_by_outcome_after_a_mixed_run) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 1));
  cfg.routes.push_back(route("mixed", "db", 100ms));
  start(cfg);
  valve v;
  rest::Routes::Get(router(), "/mixed",
                    gate().guard("mixed", [&](const rest::Request&, http::ResponseWriter& w) {
                      v.wait_on_fiber();
                      w.send(http::Code::Ok, std::string("done"));
                    }));
  rest::Routes::Get(router(), "/metrics", srv_->metrics_handler());
  serve();

  // One runs (held), one waits its 100 ms out, one finds the queue full; then three more run.
  std::thread holder([&] { EXPECT_EQ(http_get(port_, "/mixed").status, 200); });
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 1; }));
  std::thread waiter(
      [&] { EXPECT_EQ(http_get(port_, "/mixed").header(outcome_header), "timeout"); });
  ASSERT_TRUE(eventually([&] {
    const auto s = stats("db");
    return s.waiting + s.reserved == 1;
  }));
  EXPECT_EQ(http_get(port_, "/mixed").header(outcome_header), "queue_full");
  waiter.join();
  v.open();
  holder.join();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(http_get(port_, "/mixed").status, 200);

  // A request is reported just after its answer leaves.
  const auto* m = srv_->metrics().find("mixed");
  ASSERT_NE(m, nullptr);
  ASSERT_TRUE(eventually([&] {
    return m->count(outcome::admitted) + m->count(outcome::timeout) +
               m->count(outcome::queue_full) ==
           6;
  }));
  const auto text = http_get(port_, "/metrics").body;
  EXPECT_EQ(metric_sum(text, "qos_requests_arrived_total", "mixed"), 6) << text;
  EXPECT_EQ(metric_sum(text, "qos_requests_total", "mixed"), 6) << text;
  EXPECT_NE(text.find("qos_requests_total{group=\"db\",outcome=\"admitted\",priority=\"0\","
                      "route=\"mixed\"} 4"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("qos_requests_total{group=\"db\",outcome=\"timeout\",priority=\"0\","
                      "route=\"mixed\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("qos_requests_total{group=\"db\",outcome=\"queue_full\",priority=\"0\","
                      "route=\"mixed\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("qos_wait_seconds_count{group=\"db\",route=\"mixed\"} 6"), std::string::npos)
      << text;
}

TEST_F(gate_test, fallback_handler_in_code_answers_and_static_fallback_backs_it_up) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  cfg.routes.push_back(route("item", "db", 50ms));
  start(cfg);
  valve v;
  rest::Routes::Get(router(), "/item/:id",
                    gate().guard("item", [&](const rest::Request&, http::ResponseWriter& w) {
                      v.wait_on_fiber();
                      w.send(http::Code::Ok, std::string("fresh"));
                    }));
  gate().on_fallback("item", [](outcome why, const rest::Request& req, http::ResponseWriter& w) {
    if (req.param(":id").as<int>() == 1) {
      qos::add_header(w, "X-Stale", "true");
      w.send(http::Code::Ok, "stale:" + std::string(to_string(why)));
    }
    // Other ids: nothing sent, the static fallback answers.
  });
  serve();

  std::thread holder([&] { EXPECT_EQ(http_get(port_, "/item/9").body, "fresh"); });
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 1; }));
  auto stale = http_get(port_, "/item/1");
  EXPECT_EQ(stale.status, 200);
  EXPECT_EQ(stale.body, "stale:timeout");
  EXPECT_EQ(stale.header("X-Stale"), "true");
  EXPECT_EQ(stale.header(outcome_header), "timeout");
  auto none = http_get(port_, "/item/2");
  EXPECT_EQ(none.status, 503);
  EXPECT_EQ(none.header(outcome_header), "timeout");
  v.open();
  holder.join();
}

TEST_F(gate_test, high_priority_queued_after_low_priority_is_served_first) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 100));
  auto r = route("ranked", "db", 10000ms);
  r.priority.default_level = 1;
  r.priority.header = "X-Api-Key";
  r.priority.values = {{"gold-key", 10}, {"silver-key", 5}};
  r.priority.raw_header = "X-Priority";
  r.priority.raw_header_trusted = false;  // clients cannot raise their own level
  cfg.routes.push_back(r);
  start(cfg);
  valve v;
  std::mutex order_mutex;
  std::vector<std::string> order;
  rest::Routes::Get(router(), "/ranked/:tag",
                    gate().guard("ranked", [&](const rest::Request& req, http::ResponseWriter& w) {
                      const auto tag = req.param(":tag").as<std::string>();
                      if (tag == "holder") v.wait_on_fiber();
                      {
                        std::lock_guard lk(order_mutex);
                        order.push_back(tag);
                      }
                      w.send(http::Code::Ok, tag);
                    }));
  serve();

  std::vector<std::thread> clients;
  auto send = [&](std::string tag, test::header_list headers) {
    clients.emplace_back([this, tag, headers] {
      EXPECT_EQ(http_get(port_, "/ranked/" + tag, headers).status, 200);
    });
  };
  send("holder", {});
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 1; }));
  // Low first: default level, an unknown key, and a raw level the config does not trust.
  const std::vector<std::pair<std::string, test::header_list>> low = {
      {"low1", {}},
      {"low2", {{"X-Api-Key", "stolen-key"}}},
      {"low3", {{"X-Priority", "15"}}},
  };
  for (std::size_t i = 0; i < low.size(); ++i) {
    send(low[i].first, low[i].second);
    ASSERT_TRUE(eventually([&] { return stats("db").waiting == i + 1; }));
  }
  send("silver", {{"X-Api-Key", "silver-key"}});
  ASSERT_TRUE(eventually([&] { return stats("db").waiting == 4; }));
  send("gold1", {{"X-Api-Key", "gold-key"}});
  ASSERT_TRUE(eventually([&] { return stats("db").waiting == 5; }));
  send("gold2", {{"X-Api-Key", "gold-key"}});
  ASSERT_TRUE(eventually([&] { return stats("db").waiting == 6; }));
  v.open();
  for (auto& t : clients) t.join();
  const std::vector<std::string> expected = {"holder", "gold1", "gold2", "silver",
                                             "low1",   "low2",  "low3"};
  EXPECT_EQ(order, expected);
}

TEST_F(gate_test, trusted_raw_priority_header_sets_the_level) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 100));
  auto r = route("ranked", "db", 10000ms);
  r.priority.raw_header = "X-Priority";
  r.priority.raw_header_trusted = true;
  cfg.routes.push_back(r);
  start(cfg);
  valve v;
  std::mutex order_mutex;
  std::vector<std::string> order;
  rest::Routes::Get(router(), "/ranked/:tag",
                    gate().guard("ranked", [&](const rest::Request& req, http::ResponseWriter& w) {
                      const auto tag = req.param(":tag").as<std::string>();
                      if (tag == "holder") v.wait_on_fiber();
                      std::lock_guard lk(order_mutex);
                      order.push_back(tag);
                      w.send(http::Code::Ok, tag);
                    }));
  serve();
  std::vector<std::thread> clients;
  auto send = [&](std::string tag, test::header_list headers, std::size_t waiting_after) {
    clients.emplace_back([this, tag, headers] { http_get(port_, "/ranked/" + tag, headers); });
    ASSERT_TRUE(eventually([&] {
      auto s = stats("db");
      return s.in_use == 1 && s.waiting == waiting_after;
    }));
  };
  send("holder", {}, 0);
  send("bad", {{"X-Priority", "high"}}, 1);  // malformed: the route default (0)
  send("huge", {{"X-Priority", "99"}}, 2);   // out of range: the route default
  send("p7", {{"X-Priority", "7"}}, 3);
  v.open();
  for (auto& t : clients) t.join();
  const std::vector<std::string> expected = {"holder", "p7", "bad", "huge"};
  EXPECT_EQ(order, expected);
}

TEST_F(gate_test, client_that_disconnects_while_queued_never_runs_its_handler) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  cfg.routes.push_back(route("slow", "db", 10000ms));
  start(cfg);
  valve v;
  std::mutex runs_mutex;
  std::map<std::string, int> runs;
  rest::Routes::Get(router(), "/slow/:tag",
                    gate().guard("slow", [&](const rest::Request& req, http::ResponseWriter& w) {
                      const auto tag = req.param(":tag").as<std::string>();
                      {
                        std::lock_guard lk(runs_mutex);
                        ++runs[tag];
                      }
                      if (tag == "holder") v.wait_on_fiber();
                      w.send(http::Code::Ok, tag);
                    }));
  serve();

  std::thread holder([&] { EXPECT_EQ(http_get(port_, "/slow/holder").status, 200); });
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 1; }));
  {
    http_connection gone(port_);
    gone.send_raw("GET /slow/gone HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    ASSERT_TRUE(gone.error().empty());
    ASSERT_TRUE(eventually([&] { return stats("db").waiting == 1; }));
    gone.close(true);
  }
  // Let the reactor see the closed socket before the permit frees up.
  std::this_thread::sleep_for(200ms);
  v.open();
  holder.join();
  ASSERT_TRUE(eventually([&] {
    auto s = stats("db");
    return s.in_use == 0 && s.waiting == 0;
  }));
  EXPECT_EQ(http_get(port_, "/slow/after").status, 200);
  std::lock_guard lk(runs_mutex);
  EXPECT_EQ(runs["gone"], 0);
  EXPECT_EQ(runs["holder"], 1);
  EXPECT_EQ(runs["after"], 1);
  EXPECT_EQ(srv_->metrics().find("slow")->count(outcome::client_gone), 1u);
}

TEST_F(gate_test, throwing_or_silent_handler_gets_500_and_frees_its_permit) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 2, 10));
  cfg.routes.push_back(route("r", "db", 1000ms));
  start(cfg);
  rest::Routes::Get(router(), "/boom",
                    gate().guard("r", [](const rest::Request&, http::ResponseWriter&) {
                      throw std::runtime_error("driver exploded");
                    }));
  rest::Routes::Get(router(), "/boom-blocking",
                    gate().guard_blocking("r", [](const rest::Request&, http::ResponseWriter&) {
                      throw 42;  // not even a std::exception
                    }));
  rest::Routes::Get(router(), "/silent",
                    gate().guard("r", [](const rest::Request&, http::ResponseWriter&) {}));
  rest::Routes::Get(router(), "/fine",
                    gate().guard("r", [](const rest::Request&, http::ResponseWriter& w) {
                      w.send(http::Code::Ok, std::string("fine"));
                    }));
  serve();
  http_connection conn(port_);
  for (int i = 0; i < 3; ++i) {
    for (const char* path : {"/boom", "/boom-blocking", "/silent"}) {
      auto r = conn.request({"GET", path, {}, {}});
      EXPECT_EQ(r.status, 500) << path;
      EXPECT_EQ(r.header(outcome_header), "error") << path;
    }
  }
  EXPECT_TRUE(eventually([&] { return stats("db").in_use == 0; }));
  EXPECT_EQ(conn.request({"GET", "/fine", {}, {}}).body, "fine");
  EXPECT_EQ(srv_->metrics().find("r")->count(outcome::error), 9u);
}

TEST_F(gate_test, shutdown_answers_waiters_with_fallback_and_lets_running_handlers_finish) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  cfg.routes.push_back(route("slow", "db", 10000ms));
  start(cfg);
  valve v;
  rest::Routes::Get(router(), "/slow",
                    gate().guard("slow", [&](const rest::Request&, http::ResponseWriter& w) {
                      v.wait_on_fiber();
                      w.send(http::Code::Ok, std::string("finished"));
                    }));
  serve();
  http_response running, waiting1, waiting2;
  std::thread a([&] { running = http_get(port_, "/slow"); });
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 1; }));
  std::thread b([&] { waiting1 = http_get(port_, "/slow"); });
  std::thread c([&] { waiting2 = http_get(port_, "/slow"); });
  ASSERT_TRUE(eventually([&] { return stats("db").waiting == 2; }));
  std::thread stopper([&] { EXPECT_TRUE(srv_->shutdown()); });
  b.join();
  c.join();
  EXPECT_EQ(waiting1.status, 503);
  EXPECT_EQ(waiting1.header(outcome_header), "shutdown");
  EXPECT_EQ(waiting2.header(outcome_header), "shutdown");
  v.open();
  a.join();
  stopper.join();
  EXPECT_EQ(running.status, 200);
  EXPECT_EQ(running.body, "finished");
}

TEST_F(gate_test, guarded_responses_keep_the_connection_alive) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  cfg.routes.push_back(route("r", "db", 1000ms));
  start(cfg);
  rest::Routes::Get(router(), "/r",
                    gate().guard("r", [](const rest::Request&, http::ResponseWriter& w) {
                      w.send(http::Code::Ok, std::string("r"));
                    }));
  serve();
  // Requests without a Connection header (HTTP/1.1 default: keep-alive), one at a time on one
  // connection: both are answered and the connection stays open.
  http_connection conn(port_);
  for (int i = 0; i < 2; ++i) {
    conn.send_raw("GET /r HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    ASSERT_TRUE(conn.error().empty()) << conn.error();
    auto r = conn.read_response();
    EXPECT_EQ(r.status, 200) << r.error;
    EXPECT_EQ(r.body, "r");
    EXPECT_EQ(r.header("Connection").value_or(""), "Keep-Alive");
    EXPECT_TRUE(conn.is_open());
  }
}

TEST_F(gate_test, max_exec_answers_504_at_the_limit_and_keeps_the_permit_until_the_end) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  auto r = route("slow", "db", 1000ms);
  r.max_exec = 50ms;
  cfg.routes.push_back(r);
  start(cfg);
  valve v;
  std::atomic<bool> finished{false};
  rest::Routes::Get(router(), "/slow", gate().guard_result("slow", [&](const rest::Request&) {
    v.wait_on_fiber();  // on the blocking pool: a plain thread waits too
    finished = true;
    return response{.status = 200, .body = "too late", .content_type = "text/plain"};
  }));
  serve();
  auto late = http_get(port_, "/slow");
  EXPECT_EQ(late.status, 504);
  EXPECT_EQ(late.header(outcome_header), "exec_timeout");
  // The abandoned handler still occupies the group until it really ends.
  EXPECT_FALSE(finished.load());
  EXPECT_EQ(stats("db").in_use, 1u);
  v.open();
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 0; }));
  EXPECT_TRUE(finished.load());
  EXPECT_EQ(srv_->metrics().find("slow")->count(outcome::exec_timeout), 1u);
}

TEST_F(gate_test, result_handler_within_max_exec_is_sent_with_its_headers) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  auto r = route("fast", "db", 1000ms);
  r.max_exec = 5000ms;
  cfg.routes.push_back(r);
  start(cfg);
  rest::Routes::Get(router(), "/fast",
                    gate().guard_result(
                        "fast",
                        [](const rest::Request&) {
                          return response{.status = 201,
                                          .body = "made",
                                          .content_type = "text/plain",
                                          .headers = {{"X-Id", "7"}}};
                        },
                        handler_kind::fiber));
  EXPECT_THROW(gate().guard("fast", [](const rest::Request&, http::ResponseWriter&) {}),
               std::invalid_argument);
  serve();
  auto ok = http_get(port_, "/fast");
  EXPECT_EQ(ok.status, 201);
  EXPECT_EQ(ok.body, "made");
  EXPECT_EQ(ok.header("X-Id"), "7");
}

TEST_F(gate_test, client_deadline_header_cuts_the_wait_and_reaches_the_handler) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  auto r = route("dl", "db", 10000ms);
  r.deadline.header = "X-Request-Timeout";
  r.deadline.grpc_timeout = true;
  cfg.routes.push_back(r);
  start(cfg);
  valve v;
  std::atomic<long long> budget_ms{-1};
  rest::Routes::Get(router(), "/dl/:tag",
                    gate().guard("dl", [&](const rest::Request& req, http::ResponseWriter& w) {
                      if (req.param(":tag").as<std::string>() == "holder") {
                        v.wait_on_fiber();
                      } else if (auto left = remaining_budget()) {
                        budget_ms =
                            std::chrono::duration_cast<std::chrono::milliseconds>(*left).count();
                      }
                      w.send(http::Code::Ok, std::string("ok"));
                    }));
  serve();
  std::thread holder([&] { EXPECT_EQ(http_get(port_, "/dl/holder").status, 200); });
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 1; }));
  auto cut = http_get(port_, "/dl/x", {{"X-Request-Timeout", "40ms"}});
  EXPECT_EQ(cut.status, 503);
  EXPECT_EQ(cut.header(outcome_header), "deadline");
  auto grpc = http_get(port_, "/dl/x", {{"grpc-timeout", "30m"}});
  EXPECT_EQ(grpc.header(outcome_header), "deadline");
  v.open();
  holder.join();
  // A free permit: the handler runs and sees what is left of its 5 s.
  EXPECT_EQ(http_get(port_, "/dl/y", {{"X-Request-Timeout", "5s"}}).status, 200);
  EXPECT_GT(budget_ms.load(), 0);
  EXPECT_LE(budget_ms.load(), 5000);
  // A malformed header is ignored: no deadline, normal service.
  EXPECT_EQ(http_get(port_, "/dl/z", {{"X-Request-Timeout", "soon"}}).status, 200);
}

TEST_F(gate_test, retry_after_auto_is_computed_and_bounded) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 1));
  auto r = route("auto", "db", 10000ms);
  r.fallback.route.retry_after_auto = true;
  cfg.routes.push_back(r);
  start(cfg);
  valve v;
  rest::Routes::Get(router(), "/auto",
                    gate().guard("auto", [&](const rest::Request&, http::ResponseWriter& w) {
                      v.wait_on_fiber();
                      w.send(http::Code::Ok, std::string("ok"));
                    }));
  serve();
  std::vector<std::thread> held;
  for (int i = 0; i < 2; ++i) {
    held.emplace_back([&] { http_get(port_, "/auto"); });
    ASSERT_TRUE(eventually([&] {
      auto s = stats("db");
      return s.in_use + s.waiting == static_cast<std::size_t>(i + 1);
    }));
  }
  auto shed = http_get(port_, "/auto");
  EXPECT_EQ(shed.status, 503);
  ASSERT_TRUE(shed.header("Retry-After"));
  const int secs = std::stoi(*shed.header("Retry-After"));
  EXPECT_GE(secs, 1);
  EXPECT_LE(secs, 60);
  v.open();
  for (auto& t : held) t.join();
}

TEST_F(gate_test, reactor_handler_runs_inline_with_a_free_permit_and_on_a_fiber_after_a_wait) {
  auto cfg = base_config();
  cfg.server.reactor_threads = 1;  // so that "the reactor thread" is one known thread
  cfg.groups.push_back(group("db", 1, 10));
  auto fast = route("fast", "db", 5000ms);
  fast.deadline.header = "X-Request-Timeout";
  cfg.routes.push_back(fast);
  cfg.routes.push_back(route("hold", "db", 5000ms));
  start(cfg);
  valve v;
  std::mutex m;
  std::thread::id reactor_thread;
  std::map<std::string, std::thread::id> ran_on;
  std::atomic<long long> budget_ms{-1};
  std::atomic<int> in_use_seen{-1};
  rest::Routes::Get(router(), "/where",
                    gate::plain([&](const rest::Request&, http::ResponseWriter& w) {
                      std::lock_guard lk(m);
                      reactor_thread = std::this_thread::get_id();
                      w.send(http::Code::Ok, std::string("here"));
                    }));
  rest::Routes::Get(
      router(), "/fast/:tag",
      gate().guard(
          "fast",
          [&](const rest::Request& req, http::ResponseWriter& w) {
            const auto tag = req.param(":tag").as<std::string>();
            {
              std::lock_guard lk(m);
              ran_on[tag] = std::this_thread::get_id();
            }
            in_use_seen = static_cast<int>(stats("db").in_use);
            if (auto left = remaining_budget()) {
              budget_ms = std::chrono::duration_cast<std::chrono::milliseconds>(*left).count();
            }
            w.send(http::Code::Ok, "fast " + tag);
          },
          handler_kind::reactor));
  rest::Routes::Get(router(), "/hold",
                    gate().guard("hold", [&](const rest::Request&, http::ResponseWriter& w) {
                      v.wait_on_fiber();
                      w.send(http::Code::Ok, std::string("held"));
                    }));
  serve();
  ASSERT_EQ(http_get(port_, "/where").status, 200);

  // A free permit: answered from the reactor thread, under the permit, with its budget.
  auto r = http_get(port_, "/fast/free", {{"X-Request-Timeout", "5s"}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "fast free");
  EXPECT_EQ(in_use_seen.load(), 1);
  EXPECT_GT(budget_ms.load(), 0);
  EXPECT_LE(budget_ms.load(), 5000);
  {
    std::lock_guard lk(m);
    EXPECT_EQ(ran_on["free"], reactor_thread);
  }

  // The group is full: the request waits on a fiber (the reactor is not blocked meanwhile),
  // then runs there with its own copy of the request.
  std::thread holder([&] { EXPECT_EQ(http_get(port_, "/hold").body, "held"); });
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 1; }));
  http_response waited;
  std::thread waiter([&] { waited = http_get(port_, "/fast/waited"); });
  ASSERT_TRUE(eventually([&] { return stats("db").waiting == 1; }));
  EXPECT_EQ(http_get(port_, "/cache").status, 200);
  v.open();
  holder.join();
  waiter.join();
  EXPECT_EQ(waited.status, 200);
  EXPECT_EQ(waited.body, "fast waited");
  {
    std::lock_guard lk(m);
    EXPECT_NE(ran_on["waited"], reactor_thread);
  }
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 0; }));
}

TEST_F(gate_test, reserved_headroom_serves_high_priority_at_once_past_a_queue_of_low) {
  auto cfg = base_config();
  auto g = group("db", 2, 100);
  g.limiter.reserve = 1;
  g.limiter.reserve_level = 10;
  cfg.groups.push_back(g);
  auto r = route("ranked", "db", 10000ms);
  r.priority.header = "X-Api-Key";
  r.priority.values = {{"gold-key", 10}};
  cfg.routes.push_back(r);
  start(cfg);
  valve v;
  rest::Routes::Get(router(), "/ranked/:tag",
                    gate().guard("ranked", [&](const rest::Request& req, http::ResponseWriter& w) {
                      const auto tag = req.param(":tag").as<std::string>();
                      if (tag != "gold") v.wait_on_fiber();
                      w.send(http::Code::Ok, tag);
                    }));
  serve();
  // One low request takes the lower levels' share; the next ones queue although a unit is
  // free: it is the headroom.
  std::vector<std::thread> low;
  for (int i = 0; i < 3; ++i) {
    low.emplace_back(
        [&, i] { EXPECT_EQ(http_get(port_, "/ranked/low" + std::to_string(i)).status, 200); });
  }
  ASSERT_TRUE(eventually([&] {
    auto s = stats("db");
    return s.in_use == 1 && s.waiting == 2;
  }));
  auto gold = http_get(port_, "/ranked/gold", {{"X-Api-Key", "gold-key"}});
  EXPECT_EQ(gold.status, 200);
  EXPECT_EQ(gold.body, "gold");
  EXPECT_EQ(stats("db").waiting, 2u);  // served past them, not ahead of anyone who could run
  v.open();
  for (auto& t : low) t.join();
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 0; }));
}

TEST_F(gate_test, reactor_kind_is_refused_for_result_handlers) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  cfg.routes.push_back(route("r", "db", 1000ms));
  start(cfg);
  EXPECT_THROW(gate().guard_result(
                   "r", [](const rest::Request&) { return response{}; }, handler_kind::reactor),
               std::invalid_argument);
}

TEST(gate_config_test, unknown_route_name_is_an_error_at_setup) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  cfg.routes.push_back(route("r", "db", 1000ms));
  server srv(cfg);
  EXPECT_THROW(srv.gate().guard("nope", [](const rest::Request&, http::ResponseWriter&) {}),
               std::invalid_argument);
  EXPECT_TRUE(srv.shutdown());
}

}  // namespace
}  // namespace qos

namespace qos {
namespace {

// A rule in code that throws after the reactor wrapper took the writer: the request is still
// answered, with 500 and outcome error, and the route keeps working.
TEST_F(gate_test, a_failure_in_the_reactor_wrapper_after_the_writer_moved_is_answered_500) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  cfg.routes.push_back(route("r", "db", 1000ms));
  start(cfg);
  gate().on_priority("r", [](const rest::Request& req) -> std::optional<priority> {
    if (req.headers().tryGetRaw("X-Break")) throw std::runtime_error("tier lookup failed");
    return 3;
  });
  rest::Routes::Get(router(), "/r",
                    gate().guard("r", [](const rest::Request&, http::ResponseWriter& w) {
                      w.send(http::Code::Ok, std::string("ok"));
                    }));
  serve();
  auto broken = http_get(port_, "/r", {{"X-Break", "1"}});
  EXPECT_EQ(broken.status, 500);
  EXPECT_EQ(broken.header("X-QoS-Outcome"), "error");
  EXPECT_EQ(http_get(port_, "/r").status, 200);
  // The permit comes back just after the answer leaves.
  EXPECT_TRUE(eventually([&] { return stats("db").in_use == 0; }));
}

// A gRPC timeout too large for nanoseconds is a far deadline, not an expired one.
TEST_F(gate_test, an_overflowing_grpc_timeout_is_a_far_deadline_not_an_expired_one) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  auto r = route("r", "db", 1000ms);
  r.deadline.grpc_timeout = true;
  cfg.routes.push_back(r);
  start(cfg);
  rest::Routes::Get(router(), "/r",
                    gate().guard("r", [](const rest::Request&, http::ResponseWriter& w) {
                      w.send(http::Code::Ok, std::string("ok"));
                    }));
  serve();
  for (const char* t : {"99999999H", "99999999M", "99999999S", "99999999n"}) {
    SCOPED_TRACE(t);
    EXPECT_EQ(http_get(port_, "/r", {{"grpc-timeout", t}}).status, 200);
  }
  EXPECT_EQ(http_get(port_, "/r", {{"grpc-timeout", "1n"}}).status, 503);  // truly too short
}

}  // namespace
}  // namespace qos

#include <sstream>

#include "qos/ops/access_log.hpp"
#include "support/log_capture.hpp"

namespace qos {
namespace {

// The access log over real HTTP: the gate writes through it once each guarded request is
// answered. The server goes before the log, so no request outlives it.
class gate_access_log_test : public gate_test {
 protected:
  void TearDown() override {
    gate_test::TearDown();
    srv_.reset();
  }

  struct access_line {
    std::string method, path, outcome, route, priority, waited, handled, bytes, peer;
    int status = -1;
  };
  // The lines so far, by path (text format: time, method, path, status, outcome, key=value...).
  std::map<std::string, access_line> lines_by_path() const {
    std::map<std::string, access_line> out;
    for (const auto& text : sink_->lines()) {
      std::istringstream in(text);
      std::string time;
      access_line l;
      in >> time >> l.method >> l.path >> l.status >> l.outcome >> l.route >> l.priority >>
          l.waited >> l.handled >> l.bytes >> l.peer;
      out[l.path] = l;
    }
    return out;
  }

  std::shared_ptr<test::line_sink> sink_ = std::make_shared<test::line_sink>();
  access_log log_{{.enabled = true}, config::log_format::text, sink_};
};

TEST_F(gate_access_log_test, one_line_per_guarded_request_says_what_the_client_got) {
  auto cfg = base_config();
  cfg.groups.push_back(group("db", 1, 10));
  cfg.routes.push_back(route("work", "db", 50ms));
  start(cfg);
  gate().set_access_log(&log_);
  valve v;
  auto work = gate().guard("work", [&](const rest::Request&, http::ResponseWriter& w) {
    v.wait_on_fiber();
    w.send(http::Code::Ok, std::string("done"));
  });
  rest::Routes::Get(router(), "/work/:id", work);
  rest::Routes::Post(router(), "/work/:id", work);
  serve();

  // The first request holds the only permit until the valve opens; the second waits 50 ms for
  // it and gets the timeout fallback.
  std::thread first([&] { EXPECT_EQ(http_get(port_, "/work/1?x=1").status, 200); });
  ASSERT_TRUE(eventually([&] { return stats("db").in_use == 1; }));
  http_connection conn(port_);
  const auto second = conn.request({"POST", "/work/2", {}, "payload"});
  EXPECT_EQ(second.status, 503);
  EXPECT_EQ(second.header("X-QoS-Outcome"), "timeout");
  v.open();
  first.join();
  EXPECT_EQ(http_get(port_, "/cache").status, 200);  // unguarded: no line
  EXPECT_EQ(http_get(port_, "/work/3").status, 200);
  ASSERT_TRUE(eventually([&] { return sink_->lines().size() >= 3; }));

  const auto lines = lines_by_path();
  EXPECT_EQ(sink_->lines().size(), 3u);
  ASSERT_EQ(lines.size(), 3u);
  const auto& admitted = lines.at("/work/1");
  EXPECT_EQ(admitted.method, "GET");
  EXPECT_EQ(admitted.status, 200);
  EXPECT_EQ(admitted.outcome, "admitted");
  EXPECT_EQ(admitted.route, "route=work");
  EXPECT_EQ(admitted.priority, "priority=0");
  EXPECT_NE(admitted.handled, "handled_ms=0.000");
  EXPECT_NE(admitted.bytes, "bytes=0");
  EXPECT_EQ(admitted.peer.rfind("peer=127.0.0.1:", 0), 0u) << admitted.peer;

  const auto& fallback = lines.at("/work/2");
  EXPECT_EQ(fallback.method, "POST");
  EXPECT_EQ(fallback.status, 503);
  EXPECT_EQ(fallback.outcome, "timeout");
  EXPECT_GE(std::stod(fallback.waited.substr(fallback.waited.find('=') + 1)), 49.9);
  EXPECT_EQ(fallback.handled, "handled_ms=0.000");
  EXPECT_NE(fallback.bytes, "bytes=0");
  EXPECT_EQ(fallback.peer.rfind("peer=127.0.0.1:", 0), 0u) << fallback.peer;

  EXPECT_EQ(lines.at("/work/3").outcome, "admitted");
}

}  // namespace
}  // namespace qos

// Slow and idle clients against a real server with 1 s timeouts: a client that does not finish
// its head (or body) in time gets 408 and a close, before or after its first request; an idle
// kept-alive connection is closed quietly; a request that takes longer than the timeouts to
// answer is not cut; every `server:` timeout reaches the connection layer. Each test is
// bounded; nothing asserts speed.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "robustness/raw_client.hpp"
#include "robustness/robust_server.hpp"
#include "support/eventually.hpp"

namespace qos::test {
namespace {

using namespace std::chrono_literals;

class timeout_test : public ::testing::Test {
 protected:
  void SetUp() override {
    srv_ = start_robust_server({.header_timeout = 1s,
                                .body_timeout = 1s,
                                .keepalive_timeout = 1s,
                                .guarded_work = 1500ms});
    port_ = srv_->port();
    baseline_ = open_fds();
  }
  void TearDown() override {
    // The test's clients are closed by now: the server gives every socket back (a connection
    // it forgot would hold one), and its timers lapse with the last connection.
    EXPECT_TRUE(eventually([&] { return open_fds() <= baseline_; }, 5s))
        << open_fds() << " descriptors open, " << baseline_ << " before the test";
    EXPECT_TRUE(srv_->shutdown());
  }

  std::unique_ptr<server> srv_;
  std::uint16_t port_ = 0;
  int baseline_ = 0;
};

TEST_F(timeout_test, a_client_that_sends_nothing_gets_408_and_is_closed) {
  raw_client c(port_);
  ASSERT_TRUE(c.connected());
  const auto r = c.read_until_closed(5s);
  EXPECT_TRUE(r.closed);
  ASSERT_EQ(r.responses.size(), 1u) << r.error;
  EXPECT_EQ(r.responses[0].status, 408);
}

TEST_F(timeout_test, a_slowloris_head_gets_408_and_is_closed) {
  raw_client c(port_);
  ASSERT_TRUE(c.send("GET /plain/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"));
  // One header byte every 100 ms: activity does not extend the header timeout.
  const std::string trickle = "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
  bool closed_while_sending = false;
  for (char ch : trickle) {
    if (!c.send(std::string_view(&ch, 1))) {
      closed_while_sending = true;
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  const auto r = c.read_until_closed(5s);
  EXPECT_TRUE(r.closed || closed_while_sending);
  ASSERT_EQ(r.responses.size(), 1u) << r.error;
  EXPECT_EQ(r.responses[0].status, 408);
}

TEST_F(timeout_test, a_slow_head_after_a_first_request_gets_408_too) {
  raw_client c(port_);
  ASSERT_TRUE(c.send(get("/plain/1")));
  auto first = c.read(1);
  ASSERT_EQ(first.statuses(), std::vector<int>{200});
  ASSERT_TRUE(c.send("GET /plain/2 HTTP/1.1\r\nHost: 127"));
  const auto r = c.read_until_closed(5s);
  EXPECT_TRUE(r.closed);
  EXPECT_EQ(r.statuses(), std::vector<int>{408});
}

TEST_F(timeout_test, a_body_that_does_not_come_gets_408_and_is_closed) {
  raw_client c(port_);
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\nabc"));
  const auto r = c.read_until_closed(5s);
  EXPECT_TRUE(r.closed);
  EXPECT_EQ(r.statuses(), std::vector<int>{408});
}

TEST_F(timeout_test, an_idle_kept_alive_connection_is_closed_quietly) {
  raw_client c(port_);
  ASSERT_TRUE(c.send(get("/plain/7")));
  const auto r = c.read_until_closed(5s);
  EXPECT_TRUE(r.closed);
  ASSERT_EQ(r.statuses(), std::vector<int>{200});  // and no 408 after it
  EXPECT_EQ(r.responses[0].body, "7");
  EXPECT_EQ(r.responses[0].header("Connection").value_or(""), "Keep-Alive");
}

TEST_F(timeout_test, a_request_answered_after_the_timeouts_is_not_cut) {
  // /guarded sleeps 1.5 s, more than every timeout: a connection waiting for its answer is
  // neither idle nor slow. (Pistache's own header timeout answered such a request 408.)
  raw_client c(port_);
  ASSERT_TRUE(c.send(get("/guarded/5")));
  const auto r = c.read(1, 8s);
  ASSERT_EQ(r.statuses(), std::vector<int>{200}) << r.error;
  EXPECT_EQ(r.responses[0].body, "5");
  // After the answer the keep-alive timeout runs again.
  const auto after = c.read_until_closed(5s);
  EXPECT_TRUE(after.closed);
  EXPECT_TRUE(after.responses.empty());
}

TEST_F(timeout_test, many_silent_connections_are_all_answered_and_closed) {
  std::vector<std::unique_ptr<raw_client>> clients;
  for (int i = 0; i < 200; ++i) {
    clients.push_back(std::make_unique<raw_client>(port_));
    ASSERT_TRUE(clients.back()->connected());
  }
  // Half of them send half a head.
  for (std::size_t i = 0; i < clients.size(); i += 2) {
    ASSERT_TRUE(clients[i]->send("GET /plain/1 HTTP/1.1\r\n"));
  }
  int answered = 0;
  for (auto& c : clients) {
    const auto r = c->read_until_closed(5s);
    if (r.closed && r.statuses() == std::vector<int>{408}) ++answered;
  }
  EXPECT_EQ(answered, 200);
}

// qos::server builds its connection layer's options from `server:` with this; a timeout left
// out would silently keep connection_options' default.
TEST(connection_options_of, takes_every_timeout_of_the_server_config) {
  config::server_config s;
  s.header_timeout = 2s;
  s.body_timeout = 3s;
  s.keepalive_timeout = 4s;
  s.send_timeout = 5s;
  const connection_options o = connection_options_of(s);
  EXPECT_EQ(o.header_timeout, 2s);
  EXPECT_EQ(o.body_timeout, 3s);
  EXPECT_EQ(o.keepalive_timeout, 4s);
  EXPECT_EQ(o.send_timeout, 5s);
}

}  // namespace
}  // namespace qos::test

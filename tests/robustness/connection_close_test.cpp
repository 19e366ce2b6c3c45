// `Connection: close` and HTTP/1.0 against a real server: the socket is closed right after the
// response, on unguarded and guarded routes (the keep-alive timeout here is 30 s, so a close
// within the test's bound is not a timeout); HTTP/1.0 with keep-alive and HTTP/1.1 stay open.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "robustness/raw_client.hpp"
#include "robustness/robust_server.hpp"

namespace qos::test {
namespace {

using namespace std::chrono_literals;

class connection_close_test : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    srv_ = start_robust_server();
    port_ = srv_->port();
  }
  void TearDown() override { EXPECT_TRUE(srv_->shutdown()); }

  std::string target(const std::string& id) const { return GetParam() + id; }

  std::unique_ptr<server> srv_;
  std::uint16_t port_ = 0;
};

TEST_P(connection_close_test, connection_close_is_closed_after_the_response) {
  raw_client c(port_);
  ASSERT_TRUE(c.send(get(target("1"), "Connection: close\r\n")));
  const auto r = c.read_until_closed(5s);
  EXPECT_TRUE(r.closed);
  ASSERT_EQ(r.statuses(), std::vector<int>{200}) << r.error;
  EXPECT_EQ(r.responses[0].body, "1");
  EXPECT_EQ(r.responses[0].header("Connection").value_or(""), "Close");
}

TEST_P(connection_close_test, http_1_0_is_closed_after_the_response) {
  raw_client c(port_);
  ASSERT_TRUE(c.send("GET " + target("2") + " HTTP/1.0\r\n\r\n"));
  const auto r = c.read_until_closed(5s);
  EXPECT_TRUE(r.closed);
  ASSERT_EQ(r.statuses(), std::vector<int>{200}) << r.error;
  EXPECT_EQ(r.responses[0].body, "2");
  EXPECT_EQ(r.responses[0].minor_version, 0);
}

TEST_P(connection_close_test, http_1_0_with_keep_alive_stays_open) {
  raw_client c(port_);
  for (const char* id : {"3", "4"}) {
    ASSERT_TRUE(c.send("GET " + target(id) + " HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    const auto r = c.read(1);
    ASSERT_EQ(r.statuses(), std::vector<int>{200}) << r.error;
    EXPECT_EQ(r.responses[0].body, id);
    EXPECT_FALSE(r.closed);
  }
}

TEST_P(connection_close_test, http_1_1_stays_open_across_requests) {
  raw_client c(port_);
  for (const char* id : {"5", "6", "7"}) {
    ASSERT_TRUE(c.send(get(target(id))));
    const auto r = c.read(1);
    ASSERT_EQ(r.statuses(), std::vector<int>{200}) << r.error;
    EXPECT_EQ(r.responses[0].body, id);
    EXPECT_EQ(r.responses[0].header("Connection").value_or(""), "Keep-Alive");
  }
}

TEST_P(connection_close_test, requests_pipelined_behind_a_close_are_not_served) {
  // The client said this one is the last: what it sent after is not answered, and the
  // connection closes right after the response it asked for.
  raw_client c(port_);
  ASSERT_TRUE(c.send(get(target("8"), "Connection: close\r\n") + get(target("9"))));
  const auto r = c.read_until_closed(5s);
  EXPECT_TRUE(r.closed);
  ASSERT_EQ(r.statuses(), std::vector<int>{200}) << r.error;
  EXPECT_EQ(r.responses[0].body, "8");
}

INSTANTIATE_TEST_SUITE_P(route, connection_close_test,
                         ::testing::Values(std::string("/plain/"), std::string("/guarded/")),
                         [](const auto& info) {
                           return info.param == "/plain/" ? std::string("unguarded")
                                                          : std::string("guarded");
                         });

TEST(connection_close, a_head_response_ends_the_connection) {
  // Pistache writes the body a handler gives to a HEAD response; a client would read it as
  // the start of the next response. The connection ends after it instead.
  auto srv = start_robust_server();
  raw_client c(srv->port());
  c.expect_head();
  ASSERT_TRUE(c.send("HEAD /plain/1 HTTP/1.1\r\nHost: x\r\n\r\n"));
  const auto r = c.read(1);
  ASSERT_EQ(r.statuses(), std::vector<int>{200}) << r.error;
  EXPECT_EQ(r.responses[0].header("Connection").value_or(""), "Close");
  EXPECT_TRUE(srv->shutdown());
}

}  // namespace
}  // namespace qos::test

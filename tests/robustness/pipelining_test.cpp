// Pipelining against a real server: 1, 2, 3 and 100 requests written at once on one keep-alive
// connection get exactly one response each, in order, on an unguarded route (answered on the
// reactor), a guarded one (answered later from a fiber) and both mixed; the connection stays
// usable. A client that pipelines more than the server holds gets the responses it can, in
// order, then a close (it retries the rest) - never a silent drop.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "robustness/raw_client.hpp"
#include "robustness/robust_server.hpp"

namespace qos::test {
namespace {

using namespace std::chrono_literals;

class pipelining_test : public ::testing::Test {
 protected:
  void SetUp() override {
    srv_ = start_robust_server();
    port_ = srv_->port();
  }
  void TearDown() override { EXPECT_TRUE(srv_->shutdown()); }

  // Writes the requests for `targets` at once, then expects one 200 per request, in order,
  // each answering its own id, and the connection still open for one more.
  void expect_in_order(const std::vector<std::string>& targets) {
    raw_client c(port_);
    std::string batch;
    for (const auto& t : targets) batch += get(t);
    ASSERT_TRUE(c.send(batch));
    const auto r = c.read(targets.size(), 8s);
    ASSERT_EQ(r.responses.size(), targets.size()) << r.error << (r.closed ? " (closed)" : "");
    for (std::size_t i = 0; i < targets.size(); ++i) {
      EXPECT_EQ(r.responses[i].status, 200) << i;
      EXPECT_EQ(r.responses[i].body, targets[i].substr(targets[i].rfind('/') + 1)) << i;
    }
    EXPECT_FALSE(r.closed);
    ASSERT_TRUE(c.send(get("/plain/last")));
    const auto more = c.read(1);
    ASSERT_EQ(more.statuses(), std::vector<int>{200}) << more.error;
    EXPECT_EQ(more.responses[0].body, "last");
    // Nothing else came: exactly one response per request.
    const auto extra = c.read(1, 200ms);
    EXPECT_TRUE(extra.responses.empty());
  }

  std::unique_ptr<server> srv_;
  std::uint16_t port_ = 0;
};

class pipelining_batch_test : public pipelining_test, public ::testing::WithParamInterface<int> {};

std::vector<std::string> targets(const std::string& prefix, int n) {
  std::vector<std::string> t;
  for (int i = 0; i < n; ++i) t.push_back(prefix + std::to_string(i));
  return t;
}

TEST_P(pipelining_batch_test, unguarded_requests_are_answered_once_each_in_order) {
  expect_in_order(targets("/plain/", GetParam()));
}

TEST_P(pipelining_batch_test, guarded_requests_are_answered_once_each_in_order) {
  expect_in_order(targets("/guarded/", GetParam()));
}

TEST_P(pipelining_batch_test, mixed_requests_keep_their_order_across_fiber_answers) {
  // A guarded answer comes from a fiber after the reactor moved on; the unguarded request
  // behind it must not overtake it.
  std::vector<std::string> t;
  for (int i = 0; i < GetParam(); ++i) {
    t.push_back((i % 2 == 0 ? "/guarded/" : "/plain/") + std::to_string(i));
  }
  expect_in_order(t);
}

INSTANTIATE_TEST_SUITE_P(batch, pipelining_batch_test, ::testing::Values(1, 2, 3, 100));

TEST_F(pipelining_test, requests_cut_anywhere_across_reads_are_all_answered) {
  raw_client c(port_);
  std::string batch;
  for (int i = 0; i < 20; ++i) {
    batch += get((i % 3 == 0 ? "/guarded/" : "/plain/") + std::to_string(i));
  }
  // Odd-sized pieces, so that requests and their heads are split everywhere.
  for (std::size_t at = 0; at < batch.size(); at += 7) {
    ASSERT_TRUE(c.send(std::string_view(batch).substr(at, 7)));
  }
  const auto r = c.read(20, 8s);
  ASSERT_EQ(r.responses.size(), 20u) << r.error;
  for (int i = 0; i < 20; ++i) EXPECT_EQ(r.responses[i].body, std::to_string(i));
}

TEST_F(pipelining_test, pipelined_bodies_are_framed_one_by_one) {
  raw_client c(port_);
  std::string batch;
  for (int i = 0; i < 10; ++i) {
    const std::string body = "body-" + std::to_string(i);
    batch += "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\n\r\n" + body;
  }
  ASSERT_TRUE(c.send(batch));
  const auto r = c.read(10, 8s);
  ASSERT_EQ(r.responses.size(), 10u) << r.error;
  for (int i = 0; i < 10; ++i) EXPECT_EQ(r.responses[i].body, "body-" + std::to_string(i));
}

TEST_F(pipelining_test, a_bad_request_behind_good_ones_is_answered_in_its_turn) {
  raw_client c(port_);
  ASSERT_TRUE(c.send(get("/guarded/0") + get("/plain/1") +
                     "POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n" + get("/plain/3")));
  const auto r = c.read_until_closed(8s);
  EXPECT_TRUE(r.closed);
  ASSERT_EQ(r.statuses(), (std::vector<int>{200, 200, 400})) << r.error;
  EXPECT_EQ(r.responses[0].body, "0");
  EXPECT_EQ(r.responses[1].body, "1");
}

TEST_F(pipelining_test, a_client_that_does_not_read_stops_being_served_until_it_does) {
  // 300 requests for 64 KiB each, written at once, and nothing read for a while: Pistache
  // would queue all 19 MiB in memory. Only what the socket buffers and a bounded queue hold
  // is handed on; once the client reads, the rest follows, in order.
  big_calls() = 0;
  raw_client c(port_, 64 * 1024);
  std::string batch;
  for (int i = 0; i < 300; ++i) batch += get("/big/" + std::to_string(i));
  ASSERT_TRUE(c.send(batch));
  std::this_thread::sleep_for(1s);
  EXPECT_LT(big_calls().load(), 300);
  const auto r = c.read(300, 8s);
  ASSERT_EQ(r.responses.size(), 300u) << r.error;
  for (int i = 0; i < 300; ++i) {
    EXPECT_EQ(r.responses[i].body.substr(0, r.responses[i].body.find('.')), std::to_string(i));
  }
  EXPECT_EQ(big_calls().load(), 300);
}

TEST_F(pipelining_test, more_than_the_server_holds_gets_answers_in_order_then_a_close) {
  // A slow request first (its handler sleeps 500 ms), then more pipelined bytes than the
  // 1 MiB held behind it.
  srv_->shutdown();
  srv_ = start_robust_server({.guarded_work = 500ms});
  port_ = srv_->port();
  raw_client c(port_);
  std::string batch = get("/guarded/0");
  int sent = 1;
  while (batch.size() < (std::size_t{3} << 20) / 2) {
    batch += get("/plain/" + std::to_string(sent));
    ++sent;
  }
  // The server may close before it read everything: a failed send is part of the story.
  std::thread writer([&] { c.send(batch, 8s); });
  const auto r = c.read_until_closed(9s);
  writer.join();
  EXPECT_TRUE(r.closed);
  ASSERT_GE(r.responses.size(), 1u) << r.error;
  EXPECT_LT(static_cast<int>(r.responses.size()), sent);
  for (std::size_t i = 0; i < r.responses.size(); ++i) {
    EXPECT_EQ(r.responses[i].status, 200);
    EXPECT_EQ(r.responses[i].body, std::to_string(i)) << "responses out of order";
  }
}

}  // namespace
}  // namespace qos::test

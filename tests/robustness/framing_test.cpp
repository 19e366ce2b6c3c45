// Bad input against a real server: garbage, a TLS ClientHello, an HTTP/0.9 line, NUL bytes and
// bad framing are answered at once (the timeouts here are 30 s, so an answer within the test's
// bound is not a timeout) and the connection is closed; good chunked bodies and
// `Expect: 100-continue` work; a handler that throws or never answers still gives one answer.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "robustness/raw_client.hpp"
#include "robustness/robust_server.hpp"

namespace qos::test {
namespace {

using namespace std::chrono_literals;

class framing_test : public ::testing::Test {
 protected:
  void SetUp() override {
    srv_ = start_robust_server();
    port_ = srv_->port();
  }
  void TearDown() override { EXPECT_TRUE(srv_->shutdown()); }

  // Sends `bytes` on a new connection; the server must answer `status` and close.
  void expect_rejected(const std::string& bytes, int status) {
    raw_client c(port_);
    ASSERT_TRUE(c.connected());
    c.send(bytes);  // the server may close before it has read everything
    const auto r = c.read_until_closed(5s);
    EXPECT_TRUE(r.closed) << "not closed after " << testing::PrintToString(bytes);
    ASSERT_EQ(r.responses.size(), 1u) << testing::PrintToString(bytes) << " " << r.error;
    EXPECT_EQ(r.responses[0].status, status) << testing::PrintToString(bytes);
    EXPECT_EQ(r.responses[0].header("Connection").value_or(""), "Close");
  }

  std::unique_ptr<server> srv_;
  std::uint16_t port_ = 0;
};

TEST_F(framing_test, garbage_gets_400_and_a_close_at_once) {
  expect_rejected(std::string("\x01\x02\x03 hello\r\n\r\n", 13), 400);
  expect_rejected("hello world\r\n\r\n", 400);
  expect_rejected("{\"json\": true}\n", 400);
}

TEST_F(framing_test, a_tls_client_hello_gets_400_and_a_close) {
  // The start of a TLS 1.2 ClientHello record: handshake (0x16), version, length, ...
  const std::string hello("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x5a\x5b\x5c\x5d", 15);
  expect_rejected(hello + std::string(200, '\x42'), 400);
}

TEST_F(framing_test, an_http_0_9_request_gets_400_and_a_close) {
  expect_rejected("GET /\r\n", 400);
  expect_rejected("GET /plain/1\r\n\r\n", 400);
}

TEST_F(framing_test, nul_bytes_get_400_and_a_close) {
  expect_rejected(std::string(4096, '\0'), 400);
  expect_rejected("GET /plain/1 HTTP/1.1\r\n" + std::string(4096, '\0'), 400);
}

TEST_F(framing_test, bad_content_lengths_get_400) {
  for (const char* value :
       {"-1", "1180591620717411303424", "abc", "1e3", "+5", "5 5", "0x10", ""}) {
    expect_rejected(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::string(value) + "\r\n\r\nhello",
        400);
  }
  expect_rejected("POST /echo HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
                  400);
}

TEST_F(framing_test, a_body_larger_than_the_limit_gets_413_before_it_is_sent) {
  expect_rejected("POST /echo HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n", 413);
}

TEST_F(framing_test, conflicting_or_unknown_transfer_encodings_are_refused) {
  expect_rejected(
      "POST /echo HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n0\r\n\r\n",
      400);
  expect_rejected("POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501);
  expect_rejected("POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501);
  expect_rejected("POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
  expect_rejected("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400);
  expect_rejected(
      "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n", 413);
}

TEST_F(framing_test, malformed_heads_get_400) {
  expect_rejected("GET /plain/1 HTTP/1.1\r\nHost : x\r\n\r\n", 400);           // space before ':'
  expect_rejected("GET /plain/1 HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400);  // obs-fold
  expect_rejected("GET /plain/1 HTTP/1.1\nHost: x\n\n", 400);                  // bare LF
  expect_rejected("GET  /plain/1 HTTP/1.1\r\n\r\n", 400);                      // two spaces
  expect_rejected("GET /plain/1 HTTP/1.1\r\nX-A: a\x01b\r\n\r\n", 400);        // control byte
  expect_rejected("FOO /plain/1 HTTP/1.1\r\n\r\n", 400);  // Pistache knows no such method
}

TEST_F(framing_test, unsupported_versions_get_505) {
  expect_rejected("GET /plain/1 HTTP/2.0\r\n\r\n", 505);
  expect_rejected("GET /plain/1 HTTP/1.2\r\n\r\n", 505);
}

TEST_F(framing_test, a_head_larger_than_the_limit_gets_431) {
  expect_rejected("GET /plain/1 HTTP/1.1\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n", 431);
  expect_rejected("GET /" + std::string(20000, 'a') + " HTTP/1.1\r\n\r\n", 414);
}

TEST_F(framing_test, a_chunked_body_is_decoded_and_the_connection_stays) {
  raw_client c(port_);
  ASSERT_TRUE(
      c.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n" +
             get("/plain/2")));
  const auto r = c.read(2);
  ASSERT_EQ(r.statuses(), (std::vector<int>{200, 200})) << r.error;
  EXPECT_EQ(r.responses[0].body, "hello world");
  EXPECT_EQ(r.responses[1].body, "2");
  EXPECT_FALSE(r.closed);
}

TEST_F(framing_test, a_body_cut_across_reads_is_reassembled) {
  raw_client c(port_);
  const std::string request =
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world";
  for (char ch : request) ASSERT_TRUE(c.send(std::string_view(&ch, 1)));
  const auto r = c.read(1);
  ASSERT_EQ(r.statuses(), std::vector<int>{200}) << r.error;
  EXPECT_EQ(r.responses[0].body, "hello world");
}

TEST_F(framing_test, expect_100_continue_gets_the_interim_answer) {
  raw_client c(port_);
  ASSERT_TRUE(c.send(
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
  // Only the interim answer can come before the body is sent.
  const auto before = c.read(1, 1s);
  EXPECT_EQ(before.interim, std::vector<int>{100});
  EXPECT_TRUE(before.responses.empty());
  ASSERT_TRUE(c.send("hello"));
  const auto r = c.read(1);
  ASSERT_EQ(r.statuses(), std::vector<int>{200}) << r.error;
  EXPECT_EQ(r.responses[0].body, "hello");
}

TEST_F(framing_test, empty_lines_before_a_request_are_ignored) {
  raw_client c(port_);
  ASSERT_TRUE(c.send("\r\n\r\n" + get("/plain/3")));
  const auto r = c.read(1);
  ASSERT_EQ(r.statuses(), std::vector<int>{200}) << r.error;
  EXPECT_EQ(r.responses[0].body, "3");
}

TEST_F(framing_test, a_handler_that_throws_gets_one_500_and_a_close) {
  expect_rejected(get("/throw"), 500);
}

TEST_F(framing_test, a_handler_that_never_answers_gets_one_500_and_a_close) {
  expect_rejected(get("/silent"), 500);
}

TEST_F(framing_test, every_response_says_when_it_was_made) {
  raw_client c(port_);
  ASSERT_TRUE(c.send(get("/plain/1") + get("/guarded/2")));
  const auto r = c.read(2);
  ASSERT_EQ(r.statuses(), (std::vector<int>{200, 200})) << r.error;
  for (const auto& resp : r.responses) {
    const auto date = resp.header("Date").value_or("");
    EXPECT_EQ(date.size(), 29u) << date;  // "Sun, 06 Nov 1994 08:49:37 GMT"
    EXPECT_EQ(date.substr(date.size() - 4), " GMT");
  }
}

}  // namespace
}  // namespace qos::test

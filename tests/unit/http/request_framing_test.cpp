// The request framer on bytes alone: where a request ends (lengths, chunks, pipelined
// neighbours), how each bad input is answered, and that any cut of the stream gives the same
// result as the whole.
#include "qos/http/detail/request_framing.hpp"

#include <gtest/gtest.h>

#include <string>

namespace qos::detail {
namespace {

constexpr std::size_t limit = 1024;

struct outcome {
  framing_status status;
  framed_request request;
  std::string body;
  int error = 0;
};

// Feeds `bytes` in pieces of `step` (0: all at once), as a connection would.
outcome frame(const std::string& bytes, std::size_t step = 0) {
  request_framer f(limit);
  framing_status s = framing_status::need_more;
  std::size_t have = step == 0 ? bytes.size() : 0;
  for (;;) {
    have = std::min(have, bytes.size());
    s = f.next(std::string_view(bytes).substr(0, have));
    if (s != framing_status::need_more || have == bytes.size()) break;
    have += step;
  }
  outcome o{s, f.request(), {}, f.error_status()};
  if (s == framing_status::complete) o.body = std::string(f.body(bytes));
  return o;
}

TEST(request_framing, a_get_ends_at_its_empty_line) {
  const std::string head = "GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n";
  const auto o = frame(head + "GET /next HTTP/1.1\r\n");
  ASSERT_EQ(o.status, framing_status::complete);
  EXPECT_EQ(o.request.consumed, head.size());
  EXPECT_EQ(o.request.head_size, head.size());
  EXPECT_EQ(o.request.minor_version, 1);
  EXPECT_FALSE(o.request.close);
  EXPECT_EQ(o.body, "");
}

TEST(request_framing, a_content_length_body_is_taken_exactly) {
  const std::string req = "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
  const auto o = frame(req + "GET / HTTP/1.1\r\n\r\n");
  ASSERT_EQ(o.status, framing_status::complete);
  EXPECT_EQ(o.request.consumed, req.size());
  EXPECT_EQ(o.body, "hello");
  EXPECT_EQ(frame("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhell").status,
            framing_status::need_more);
}

TEST(request_framing, a_chunked_body_is_decoded_with_extensions_and_trailers) {
  const std::string req =
      "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"
      "5;a=b\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
  const auto o = frame(req + "NEXT");
  ASSERT_EQ(o.status, framing_status::complete);
  EXPECT_TRUE(o.request.chunked);
  EXPECT_EQ(o.request.consumed, req.size());
  EXPECT_EQ(o.body, "hello0123456789");
}

TEST(request_framing, any_cut_of_the_stream_gives_the_same_request) {
  const std::string req =
      "\r\nPOST /x HTTP/1.1\r\nConnection: keep-alive, close\r\nTransfer-Encoding: chunked\r\n"
      "\r\n3\r\nabc\r\n0\r\n\r\n";
  for (std::size_t step = 1; step <= 9; ++step) {
    const auto o = frame(req, step);
    ASSERT_EQ(o.status, framing_status::complete) << step;
    EXPECT_EQ(o.request.head_begin, 2u);
    EXPECT_EQ(o.request.consumed, req.size());
    EXPECT_EQ(o.body, "abc");
    EXPECT_TRUE(o.request.close);
  }
}

TEST(request_framing, connection_semantics_follow_the_version) {
  EXPECT_TRUE(frame("GET / HTTP/1.0\r\n\r\n").request.close);
  EXPECT_FALSE(frame("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").request.close);
  EXPECT_FALSE(frame("GET / HTTP/1.1\r\n\r\n").request.close);
  EXPECT_TRUE(frame("GET / HTTP/1.1\r\nConnection: CLOSE\r\n\r\n").request.close);
  EXPECT_TRUE(frame("HEAD / HTTP/1.1\r\n\r\n").request.head_method);
}

TEST(request_framing, bad_input_gets_its_status) {
  const std::pair<std::string, int> cases[] = {
      {std::string("\x16\x03\x01\x02\x00", 5), 400},
      {std::string(64, '\0'), 400},
      {"GET /\r\n", 400},
      {"GET / HTTP/1.1\nHost: x\n\n", 400},
      {"GET / HTTP/3.0\r\n", 505},
      {"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nX : a\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length: 1180591620717411303424\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length: 12a\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 413},
      {"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
      {"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX", 400},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n", 413},
      {"GET /" + std::string(limit, 'a') + " HTTP/1.1\r\n\r\n", 414},
      {"GET / HTTP/1.1\r\nX: " + std::string(limit, 'a') + "\r\n\r\n", 431},
  };
  for (const auto& [bytes, status] : cases) {
    for (std::size_t step : {std::size_t{0}, std::size_t{1}}) {
      const auto o = frame(bytes, step);
      EXPECT_EQ(o.status, framing_status::error) << testing::PrintToString(bytes);
      EXPECT_EQ(o.error, status) << testing::PrintToString(bytes);
    }
  }
}

TEST(request_framing, garbage_is_refused_at_its_first_byte) {
  request_framer f(limit);
  EXPECT_EQ(f.next(std::string_view("\x16", 1)), framing_status::error);
  request_framer g(limit);
  EXPECT_EQ(g.next("GET / HTTP/1.1\r\nHost: a"), framing_status::need_more);
  EXPECT_TRUE(g.started());
  EXPECT_FALSE(g.head_complete());
  EXPECT_EQ(g.next(std::string_view("GET / HTTP/1.1\r\nHost: a\0", 25)), framing_status::error);
}

TEST(request_framing, expect_continue_is_awaited_until_the_body_is_complete) {
  request_framer f(limit);
  const std::string head = "POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n";
  EXPECT_EQ(f.next(head), framing_status::need_more);
  EXPECT_TRUE(f.head_complete());
  EXPECT_TRUE(f.awaiting_continue());
  EXPECT_EQ(f.next(head + "ok"), framing_status::complete);
  EXPECT_FALSE(f.awaiting_continue());
  f.reset();
  EXPECT_FALSE(f.started());
}

}  // namespace
}  // namespace qos::detail

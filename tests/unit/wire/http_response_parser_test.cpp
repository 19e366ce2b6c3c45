// The HTTP/1.1 response parser of tests/support/wire: framing, keep-alive, errors, and the same
// responses whatever way the bytes are split across reads.
#include "support/wire/http_response_parser.hpp"

#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

namespace qos::wire {
namespace {

// What a caller sees: every response, then how the stream stands when the bytes run out.
struct transcript {
  std::vector<parsed_response> responses;
  parse_result last = parse_result::incomplete;
  std::string error;
};

// Takes every complete response out of the parser.
void drain(http_response_parser& p, transcript& t) {
  for (;;) {
    t.last = p.next();
    if (t.last != parse_result::complete) break;
    t.responses.push_back(p.response());
  }
  t.error = p.error();
}

// Feeds `pieces` one read at a time (then end of stream when `eof`) and collects the responses.
transcript parse(const std::vector<std::string_view>& pieces, bool eof = false,
                 parser_options options = {}) {
  http_response_parser p(options);
  transcript t;
  for (auto piece : pieces) {
    p.feed(piece);
    drain(p, t);
  }
  if (eof) {
    p.feed_eof();
    drain(p, t);
  }
  return t;
}

transcript parse(std::string_view wire, bool eof = false, parser_options options = {}) {
  return parse(std::vector<std::string_view>{wire}, eof, options);
}

// One comparable line per response, so a failure shows which field differs.
std::string describe(const transcript& t) {
  std::string s;
  for (const auto& r : t.responses) {
    s += "HTTP/1." + std::to_string(r.minor_version) + " " + std::to_string(r.status) + " " +
         r.reason + " |";
    for (const auto& [name, value] : r.headers) s += " " + name + "=" + value + ";";
    s += " body=" + r.body + (r.keep_alive ? " keep-alive" : " close") + "\n";
  }
  s += "then " + std::to_string(static_cast<int>(t.last)) + " " + t.error;
  return s;
}

const std::string content_length =
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  a b \r\n\r\nhello";
const std::string chunked =
    "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
    "4\r\nWiki\r\n5;ext=1\r\npedia\r\nA \r\n in chunks\r\n0\r\nX-Trailer: t\r\n\r\n";
const std::string no_content = "HTTP/1.1 204 No Content\r\nX-QoS-Outcome: admitted\r\n\r\n";
const std::string until_eof = "HTTP/1.1 200 OK\r\nX-B: b\r\n\r\nstreamed body";

TEST(HttpResponseParser, ContentLengthResponse) {
  const auto t = parse(content_length);
  ASSERT_EQ(t.last, parse_result::incomplete) << t.error;
  ASSERT_EQ(t.responses.size(), 1u);
  const auto& r = t.responses[0];
  EXPECT_EQ(r.minor_version, 1);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.reason, "OK");
  ASSERT_EQ(r.headers.size(), 2u);
  EXPECT_EQ(r.headers[0], (std::pair<std::string, std::string>{"Content-Length", "5"}));
  EXPECT_EQ(r.headers[1], (std::pair<std::string, std::string>{"X-A", "a b"}));
  EXPECT_EQ(r.body, "hello");
  EXPECT_TRUE(r.keep_alive);
}

TEST(HttpResponseParser, StatusLineWithoutReason) {
  const auto t = parse("HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(t.responses.size(), 1u) << t.error;
  EXPECT_EQ(t.responses[0].status, 503);
  EXPECT_EQ(t.responses[0].reason, "");
}

TEST(HttpResponseParser, SameResponsesWhereverTheBytesAreSplit) {
  // Every framing, pipelined in one stream, ending with a body delimited by end of stream.
  const std::string wire = content_length + chunked + no_content + until_eof;
  const auto whole = parse(wire, true);
  ASSERT_EQ(whole.responses.size(), 4u) << describe(whole);
  ASSERT_EQ(whole.last, parse_result::closed) << describe(whole);
  const std::string_view w = wire;
  for (std::size_t i = 0; i <= w.size(); ++i) {
    const auto split = parse({w.substr(0, i), w.substr(i)}, true);
    ASSERT_EQ(describe(split), describe(whole)) << "split at byte " << i;
    for (std::size_t j = i; j <= w.size(); j += 7) {  // two splits, a sample of second offsets
      const auto three = parse({w.substr(0, i), w.substr(i, j - i), w.substr(j)}, true);
      ASSERT_EQ(describe(three), describe(whole)) << "split at bytes " << i << " and " << j;
    }
  }
  std::vector<std::string_view> bytes;
  for (std::size_t i = 0; i < w.size(); ++i) bytes.push_back(w.substr(i, 1));
  EXPECT_EQ(describe(parse(bytes, true)), describe(whole)) << "one byte per read";
}

TEST(HttpResponseParser, PipelinedResponsesInOneRead) {
  const auto t = parse(content_length + chunked + no_content + content_length);
  ASSERT_EQ(t.last, parse_result::incomplete) << t.error;
  ASSERT_EQ(t.responses.size(), 4u);
  EXPECT_EQ(t.responses[0].body, "hello");
  EXPECT_EQ(t.responses[1].status, 201);
  EXPECT_EQ(t.responses[1].body, "Wikipedia in chunks");
  EXPECT_EQ(t.responses[2].status, 204);
  EXPECT_EQ(t.responses[2].header("x-qos-outcome"), "admitted");
  EXPECT_EQ(t.responses[3].body, "hello");
}

TEST(HttpResponseParser, MidResponseTellsAnIdleConnectionFromACutOne) {
  http_response_parser p;
  EXPECT_FALSE(p.mid_response());
  p.feed(content_length.substr(0, 3));
  EXPECT_EQ(p.next(), parse_result::incomplete);
  EXPECT_TRUE(p.mid_response());
  p.feed(content_length.substr(3));
  EXPECT_EQ(p.next(), parse_result::complete);
  EXPECT_FALSE(p.mid_response());
  p.feed("H");
  EXPECT_TRUE(p.mid_response());
}

TEST(HttpResponseParser, BadStatusLineIsAnError) {
  for (std::string_view line :
       {"HTTP/2 200 OK", "HTTP/1.1 20 OK", "HTTP/1.1 2000 OK", "HTTP/1.1 200OK", "HTTX/1.1 200 OK",
        "HTTP/1.1 099 Low", "HTTP/1.1 600 High", "HTTP/1.1 2x0 OK", "", " HTTP/1.1 200 OK",
        "HTTP/1.x 200 OK", "garbage"}) {
    http_response_parser p;
    p.feed(std::string(line) + "\r\nContent-Length: 0\r\n\r\n");
    EXPECT_EQ(p.next(), parse_result::error) << line;
    EXPECT_NE(p.error().find("malformed status line"), std::string::npos) << p.error();
    EXPECT_TRUE(p.mid_response());
    // A failed parser stays failed: the stream has lost its framing.
    p.feed(content_length);
    EXPECT_EQ(p.next(), parse_result::error);
    p.reset();
    p.feed(content_length);
    EXPECT_EQ(p.next(), parse_result::complete) << "reset() starts a new connection";
  }
}

TEST(HttpResponseParser, MalformedHeaderLineIsAnError) {
  for (std::string_view line :
       {"NoColon", ": empty name", "Name : space before colon", " folded: continuation"}) {
    const auto t = parse("HTTP/1.1 200 OK\r\nX-A: a\r\n" + std::string(line) + "\r\n\r\n");
    EXPECT_EQ(t.last, parse_result::error) << line;
    EXPECT_NE(t.error.find("malformed header line"), std::string::npos) << t.error;
  }
}

TEST(HttpResponseParser, WithoutLengthTheBodyRunsToEndOfStream) {
  http_response_parser p;
  p.feed(until_eof);
  EXPECT_EQ(p.next(), parse_result::incomplete);
  p.feed(" and more");
  EXPECT_EQ(p.next(), parse_result::incomplete);
  p.feed_eof();
  ASSERT_EQ(p.next(), parse_result::complete);
  EXPECT_EQ(p.response().body, "streamed body and more");
  EXPECT_FALSE(p.response().keep_alive);
  EXPECT_EQ(p.next(), parse_result::closed);
  EXPECT_FALSE(p.mid_response());
}

TEST(HttpResponseParser, BadContentLengthIsAnError) {
  for (std::string_view value :
       {"abc", "-1", "+5", "", "5 5", "5, 5", "0x10", "1.0", "99999999999999999999999999"}) {
    const auto t = parse("HTTP/1.1 200 OK\r\nContent-Length: " + std::string(value) + "\r\n\r\n");
    EXPECT_EQ(t.last, parse_result::error) << "'" << value << "'";
    EXPECT_NE(t.error.find("Content-Length"), std::string::npos) << t.error;
  }
}

TEST(HttpResponseParser, RepeatedContentLengthMustAgree) {
  const auto same = parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok");
  ASSERT_EQ(same.responses.size(), 1u) << same.error;
  EXPECT_EQ(same.responses[0].body, "ok");
  const auto conflict =
      parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!");
  EXPECT_EQ(conflict.last, parse_result::error);
  EXPECT_TRUE(conflict.responses.empty());
}

TEST(HttpResponseParser, HeaderNamesAndTokensIgnoreCase) {
  const auto t = parse(
      "HTTP/1.1 200 OK\r\ncontent-LENGTH: 2\r\nX-Dup: first\r\nx-dup: second\r\n"
      "CONNECTION: Close\r\n\r\nok"
      "HTTP/1.1 200 OK\r\ntransfer-ENCODING: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n");
  ASSERT_EQ(t.responses.size(), 2u) << t.error;
  const auto& r = t.responses[0];
  EXPECT_EQ(r.body, "ok");
  EXPECT_FALSE(r.keep_alive);
  EXPECT_EQ(r.header("Content-Length"), "2");
  EXPECT_EQ(r.header("X-DUP"), "first") << "the first of repeated headers";
  EXPECT_EQ(r.header("X-Missing"), std::nullopt);
  EXPECT_EQ(t.responses[1].body, "ok");
  EXPECT_TRUE(t.responses[1].keep_alive);
}

TEST(HttpResponseParser, KeepAliveFollowsConnectionAndVersion) {
  auto keep_alive = [](std::string_view version, std::string_view connection) {
    std::string wire = std::string(version) + " 200 OK\r\nContent-Length: 0\r\n";
    if (!connection.empty()) wire += "Connection: " + std::string(connection) + "\r\n";
    const auto t = parse(wire + "\r\n");
    EXPECT_EQ(t.responses.size(), 1u) << t.error;
    return !t.responses.empty() && t.responses[0].keep_alive;
  };
  EXPECT_TRUE(keep_alive("HTTP/1.1", ""));
  EXPECT_TRUE(keep_alive("HTTP/1.1", "keep-alive"));
  EXPECT_TRUE(keep_alive("HTTP/1.1", "Upgrade, Keep-Alive"));
  EXPECT_FALSE(keep_alive("HTTP/1.1", "close"));
  EXPECT_FALSE(keep_alive("HTTP/1.1", "Upgrade, close"));
  EXPECT_FALSE(keep_alive("HTTP/1.0", ""));
  EXPECT_TRUE(keep_alive("HTTP/1.0", "Keep-Alive"));
  EXPECT_FALSE(keep_alive("HTTP/1.0", "keep-alive, close"));
}

TEST(HttpResponseParser, ChunkedBodyWithExtensionsAndTrailers) {
  const auto t = parse(chunked + content_length);
  ASSERT_EQ(t.responses.size(), 2u) << t.error;
  EXPECT_EQ(t.responses[0].body, "Wikipedia in chunks");
  EXPECT_TRUE(t.responses[0].keep_alive);
  EXPECT_EQ(t.responses[0].header("X-Trailer"), std::nullopt) << "trailers are dropped";
  EXPECT_EQ(t.responses[1].body, "hello") << "the next response starts after the trailers";
}

TEST(HttpResponseParser, MalformedChunksAreErrors) {
  const std::string head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (std::string_view body : {"zz\r\n", "\r\n", "4\r\nWikiXX\r\n0\r\n\r\n", "-4\r\nWiki\r\n",
                                "10000000000000000000\r\n"}) {
    const auto t = parse(head + std::string(body));
    EXPECT_EQ(t.last, parse_result::error) << body;
    EXPECT_NE(t.error.find("chunk"), std::string::npos) << t.error;
  }
}

TEST(HttpResponseParser, ChunkedWinsOverContentLengthAndClosesAfter) {
  const auto t = parse(
      "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
      "2\r\nok\r\n0\r\n\r\n");
  ASSERT_EQ(t.responses.size(), 1u) << t.error;
  EXPECT_EQ(t.responses[0].body, "ok");
  EXPECT_FALSE(t.responses[0].keep_alive);
}

TEST(HttpResponseParser, UnknownFinalCodingRunsToEndOfStream) {
  const auto t = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nok", true);
  ASSERT_EQ(t.responses.size(), 1u) << t.error;
  EXPECT_EQ(t.responses[0].body, "2\r\nok");
  EXPECT_FALSE(t.responses[0].keep_alive);
}

TEST(HttpResponseParser, NoBodyFor1xx204304AndHead) {
  http_response_parser p;
  p.expect_no_body();  // answers a HEAD; the interim 100 does not use this up
  p.feed(
      "HTTP/1.1 100 Continue\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
      "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n" +
      content_length);
  std::vector<int> statuses;
  std::vector<std::string> bodies;
  while (p.next() == parse_result::complete) {
    statuses.push_back(p.response().status);
    bodies.push_back(p.response().body);
  }
  EXPECT_EQ(statuses, (std::vector<int>{100, 200, 304, 200}));
  EXPECT_EQ(bodies, (std::vector<std::string>{"", "", "", "hello"}));
}

TEST(HttpResponseParser, SwitchingProtocolsEndsHttp) {
  const auto t = parse("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n\x01\x02 not http");
  ASSERT_EQ(t.responses.size(), 1u) << t.error;
  EXPECT_EQ(t.responses[0].status, 101);
  EXPECT_FALSE(t.responses[0].keep_alive);
  EXPECT_EQ(t.last, parse_result::closed);
}

TEST(HttpResponseParser, EndOfStreamMidResponseIsAnError) {
  const std::string wire = content_length + chunked;
  for (std::size_t cut = 1; cut < wire.size(); ++cut) {
    if (cut == content_length.size()) continue;  // a boundary: a clean close
    const auto t = parse(std::string_view(wire).substr(0, cut), true);
    EXPECT_EQ(t.last, parse_result::error) << "cut at " << cut;
    EXPECT_NE(t.error.find("closed"), std::string::npos) << t.error;
  }
  const auto clean = parse(wire, true);
  EXPECT_EQ(clean.responses.size(), 2u);
  EXPECT_EQ(clean.last, parse_result::closed);
}

TEST(HttpResponseParser, BareLineFeedsAreAccepted) {
  const auto t = parse("HTTP/1.1 200 OK\nContent-Length: 2\nX-A: a\n\nok");
  ASSERT_EQ(t.responses.size(), 1u) << t.error;
  EXPECT_EQ(t.responses[0].header("X-A"), "a");
  EXPECT_EQ(t.responses[0].body, "ok");
}

TEST(HttpResponseParser, LimitsBoundWhatAPeerCanMakeUsBuffer) {
  const parser_options small{.max_head_bytes = 64, .max_body_bytes = 8};
  const auto long_head = parse("HTTP/1.1 200 OK\r\nX-Long: " + std::string(100, 'x'), false, small);
  EXPECT_EQ(long_head.last, parse_result::error) << "no line end in sight";
  EXPECT_NE(long_head.error.find("too large"), std::string::npos) << long_head.error;
  std::string lines = "HTTP/1.1 200 OK\r\n";
  for (int i = 0; i < 4; ++i) lines += "X-Header-" + std::to_string(i) + ": 1\r\n";
  const auto many_lines = parse(lines, false, small);
  EXPECT_EQ(many_lines.last, parse_result::error) << "every line is short, the head is not";
  const auto long_body = parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", false, small);
  EXPECT_EQ(long_body.last, parse_result::error);
  const auto long_chunks = parse(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n4\r\n", false, small);
  EXPECT_EQ(long_chunks.last, parse_result::error);
  const auto long_stream = parse("HTTP/1.1 200 OK\r\n\r\n123456789", false, small);
  EXPECT_EQ(long_stream.last, parse_result::error);
  const auto fits = parse("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n12345678", false, small);
  ASSERT_EQ(fits.responses.size(), 1u) << fits.error;
}

TEST(HttpResponseParser, SkippedBodiesKeepTheFraming) {
  const auto t = parse(content_length + chunked + content_length, false, {.keep_body = false});
  ASSERT_EQ(t.responses.size(), 3u) << t.error;
  for (const auto& r : t.responses) EXPECT_EQ(r.body, "");
  EXPECT_EQ(t.responses[1].status, 201);
}

TEST(HttpResponseParser, TokensAndCaseHelpers) {
  EXPECT_TRUE(iequals("Content-Length", "content-LENGTH"));
  EXPECT_FALSE(iequals("Content-Length", "Content-Lengt"));
  EXPECT_TRUE(has_token("keep-alive, Upgrade", "upgrade"));
  EXPECT_TRUE(has_token(" close ", "close"));
  EXPECT_FALSE(has_token("closed", "close"));
  EXPECT_FALSE(has_token("", "close"));
}

}  // namespace
}  // namespace qos::wire

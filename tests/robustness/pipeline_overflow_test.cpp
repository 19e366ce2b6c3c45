// A client that pipelines more than the server holds behind the request in flight (1 MiB,
// connection_options::max_pipelined_bytes) gets that request's answer, labelled as the
// connection's last (`Connection: close`), and then the close - not a response that promises
// a kept-alive connection the server is about to end.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

#include "robustness/raw_client.hpp"
#include "robustness/robust_server.hpp"
#include "support/wire/http_response_parser.hpp"

namespace qos::test {
namespace {

using namespace std::chrono_literals;

std::string connection_header(const wire::parsed_response& r) {
  const auto v = r.header("Connection");
  return v ? std::string(*v) : std::string("(none)");
}

// The handler of the request in flight sleeps 500 ms: the 1.5 MiB behind it arrive, and
// overflow what the server holds, long before it answers.
// The connection layer labels the response when its head is serialized, so the overflow that
// came while the handler ran turns it into `Connection: Close`.
TEST(pipeline_overflow_test, the_answer_before_the_overflow_close_says_close) {
  auto srv = start_robust_server({.guarded_work = 500ms});
  raw_client c(srv->port());
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

  EXPECT_TRUE(r.closed) << "the socket stayed open";
  ASSERT_GE(r.responses.size(), 1u) << r.error;
  EXPECT_LT(static_cast<int>(r.responses.size()), sent);
  for (std::size_t i = 0; i < r.responses.size(); ++i) {
    EXPECT_EQ(r.responses[i].status, 200) << i;
    EXPECT_EQ(r.responses[i].body, std::to_string(i)) << "responses out of order";
  }
  // Every answer but the last keeps the connection; the last one says it ends, and nothing
  // follows it but the close.
  for (std::size_t i = 0; i + 1 < r.responses.size(); ++i) {
    EXPECT_TRUE(r.responses[i].keep_alive) << i << ": " << connection_header(r.responses[i]);
  }
  const auto& last = r.responses.back();
  EXPECT_TRUE(wire::iequals(connection_header(last), "close"))
      << "response " << r.responses.size() - 1 << " says Connection: " << connection_header(last);
  EXPECT_FALSE(last.keep_alive);
  EXPECT_TRUE(srv->shutdown());
}

}  // namespace
}  // namespace qos::test

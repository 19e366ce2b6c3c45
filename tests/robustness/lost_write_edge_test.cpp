// Pistache defect 16: its transport handles an edge-triggered event as readable or writable,
// never both, so the write edge of an event that is both is lost and the connection layer's
// zero-length write marker never comes back. The real event cannot be made on demand; the
// connection layer's test seam (connection_options::drop_marker) loses the completion the same
// way, and the connection must still get every response, go on or close, within a bound far
// shorter than the timeouts that would otherwise end it, with the overdue marker counted.
#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include <gtest/gtest.h>
#include <pistache/router.h>

#include "qos/http/connection.hpp"
#include "qos/http/gate.hpp"
#include "qos/http/listener.hpp"
#include "raw_client.hpp"
#include "robust_server.hpp"

namespace qos::test {
namespace {

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// /plain/:id behind the connection layer, whose first write marker completion is lost. The
// timeouts that would end a stuck connection are 30 s; the sweep runs every 250 ms.
struct lossy_service {
  lossy_service() {
    rest::Routes::Get(router, "/plain/:id",
                      gate::plain([](const rest::Request& req, http::ResponseWriter& w) {
                        w.send(http::Code::Ok, req.param(":id").as<std::string>());
                      }));
    connection_options o;
    o.send_timeout = 30s;
    o.linger_timeout = 30s;
    o.max_unsent_responses = 4;
    o.drop_marker = [lost = lost] { return lost->fetch_add(1) == 0; };
    handler = connection_handler_for(router, o);
    listener_options lo;
    lo.reactor_threads = 1;
    server = std::make_unique<listener>(handler, lo);
    server->start();
  }
  ~lossy_service() { server->shutdown(); }

  std::shared_ptr<std::atomic<int>> lost = std::make_shared<std::atomic<int>>(0);
  rest::Router router;
  std::shared_ptr<connection_handler> handler;
  std::unique_ptr<listener> server;
};

// Far below the 30 s timeouts, well above the two sweep periods the workaround needs.
constexpr auto bound = 5s;

// Ten pipelined requests: the fourth response starts a drain (max_unsent_responses) whose
// marker completion is lost. Without another marker the other six wait for send_timeout.
TEST(lost_write_edge, a_draining_connection_whose_marker_was_lost_gets_every_response) {
  lossy_service svc;
  raw_client c(svc.server->port());
  ASSERT_TRUE(c.connected());
  std::string batch;
  for (int i = 0; i < 10; ++i) batch += get("/plain/" + std::to_string(i));
  const auto began = steady::now();
  ASSERT_TRUE(c.send(batch));
  const auto r = c.read(10, bound);
  ASSERT_EQ(r.responses.size(), 10u) << r.error << (r.closed ? " (closed)" : "");
  EXPECT_LT(steady::now() - began, bound);
  for (std::size_t i = 0; i < r.responses.size(); ++i) {
    EXPECT_EQ(r.responses[i].status, 200) << i;
    EXPECT_EQ(r.responses[i].body, std::to_string(i)) << "responses out of order";
    EXPECT_TRUE(r.responses[i].keep_alive) << i;
  }
  EXPECT_FALSE(r.closed);
  EXPECT_GE(svc.lost->load(), 2) << "the lost marker was never followed by another";
  EXPECT_GE(svc.handler->overdue_markers(), 1u);

  // The connection goes on, and ends when asked.
  ASSERT_TRUE(c.send(get("/plain/last", "Connection: close\r\n")));
  const auto end = c.read_until_closed(bound);
  ASSERT_EQ(end.responses.size(), 1u) << end.error;
  EXPECT_EQ(end.responses[0].body, "last");
  EXPECT_TRUE(end.closed);
}

// The marker behind a connection's last response is lost: the FIN that follows it would wait
// for the linger timeout (and a teardown) without another marker.
TEST(lost_write_edge, a_closing_connection_whose_marker_was_lost_is_closed) {
  lossy_service svc;
  raw_client c(svc.server->port());
  ASSERT_TRUE(c.connected());
  const auto began = steady::now();
  ASSERT_TRUE(c.send(get("/plain/7", "Connection: close\r\n")));
  const auto r = c.read_until_closed(bound);
  ASSERT_EQ(r.responses.size(), 1u) << r.error;
  EXPECT_EQ(r.responses[0].body, "7");
  EXPECT_FALSE(r.responses[0].keep_alive);
  EXPECT_TRUE(r.closed) << "no close within " << bound.count() << " s";
  EXPECT_LT(steady::now() - began, bound);
  EXPECT_GE(svc.handler->overdue_markers(), 1u);
}

}  // namespace
}  // namespace qos::test

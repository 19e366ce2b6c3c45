// Pistache 0.0.5, defect 18: a response larger than its socket can take, to a client that does
// not read it, keeps the reactor thread in a busy loop (each retry copies the rest of the
// response) until the client reads: every other connection on that reactor waits meanwhile.
// qos::listener's watchdog cuts such a connection once its reactor has made no progress for
// listener_options::write_stall (`server.write_stall` for qos::server). One reactor thread
// here, so that both clients share it. Real sockets on 127.0.0.1, bounded waits, no speed
// asserted.
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include <gtest/gtest.h>
#include <pistache/router.h>

#include "qos/http/connection.hpp"
#include "qos/http/gate.hpp"
#include "qos/http/listener.hpp"
#include "qos/http/server.hpp"
#include "raw_client.hpp"
#include "support/eventually.hpp"

namespace qos::test {
namespace {

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;
using namespace std::chrono_literals;

std::string get(const std::string& target) {
  return "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
}

TEST(write_stall, a_client_that_reads_nothing_of_a_large_answer_is_cut_and_the_reactor_goes_on) {
  rest::Router router;
  rest::Routes::Get(router, "/plain/:id",
                    gate::plain([](const rest::Request& req, http::ResponseWriter& w) {
                      w.send(http::Code::Ok, req.param(":id").as<std::string>());
                    }));
  rest::Routes::Get(router, "/big", gate::plain([](const rest::Request&, http::ResponseWriter& w) {
                      w.send(http::Code::Ok, std::string(32 << 20, 'x'));  // beyond any buffer
                    }));
  listener_options options;
  options.address = "127.0.0.1";
  options.port = 0;
  options.reactor_threads = 1;
  options.write_stall = 300ms;
  listener server(connection_handler_for(router), options);
  server.start();

  raw_client stuck(server.port(), /*receive_buffer=*/4096);
  ASSERT_TRUE(stuck.connected());
  ASSERT_TRUE(stuck.send(get("/big")));
  raw_client other(server.port());
  ASSERT_TRUE(other.connected());
  ASSERT_TRUE(other.send(get("/plain/7")));
  const auto r = other.read(1, 20s);
  ASSERT_EQ(r.responses.size(), 1u) << "the reactor never came back";
  EXPECT_EQ(r.responses[0].status, 200);
  EXPECT_EQ(r.responses[0].body, "7");
  EXPECT_EQ(server.stalled_writes_cut(), 1u);
  EXPECT_TRUE(stuck.read_until_closed(20s).closed);
}

// qos::server takes write_stall from `server:`. With 0 no watchdog runs: the reactor waits for
// the client that does not read (what config/qos.yaml warns of), where the default (1 s) would
// have cut it well within the wait below.
TEST(write_stall, a_server_configured_with_write_stall_0_leaves_the_reactor_to_the_client) {
  std::atomic<bool> answering_big{false};
  server srv(
      config::load_config_string("server: {port: 0, reactor_threads: 1, write_stall: 0}\n"
                                 "groups: [{name: db, max_concurrent: 1}]\n"
                                 "routes: [{name: r, group: db}]\n"));
  rest::Routes::Get(srv.router(), "/plain/:id",
                    gate::plain([](const rest::Request& req, http::ResponseWriter& w) {
                      w.send(http::Code::Ok, req.param(":id").as<std::string>());
                    }));
  rest::Routes::Get(srv.router(), "/big",
                    gate::plain([&](const rest::Request&, http::ResponseWriter& w) {
                      answering_big = true;
                      w.send(http::Code::Ok, std::string(32 << 20, 'x'));
                    }));
  srv.start();

  std::optional<raw_client> stuck(std::in_place, srv.port(), /*receive_buffer=*/4096);
  ASSERT_TRUE(stuck->connected());
  ASSERT_TRUE(stuck->send(get("/big")));
  // The reactor answers /big, and so enters the loop, before the other client connects.
  ASSERT_TRUE(eventually([&] { return answering_big.load(); }, 20s));
  raw_client other(srv.port());
  ASSERT_TRUE(other.connected());
  ASSERT_TRUE(other.send(get("/plain/7")));
  // Over twice the default write_stall and its probe period.
  EXPECT_TRUE(other.read(1, 2500ms).responses.empty()) << "a watchdog cut the stalled client";
  EXPECT_EQ(srv.listener().stalled_writes_cut(), 0u);

  stuck.reset();  // unread bytes: the close resets the connection, and the send fails
  const auto r = other.read(1, 20s);
  ASSERT_EQ(r.responses.size(), 1u) << "the reactor never came back";
  EXPECT_EQ(r.responses[0].body, "7");
  EXPECT_TRUE(srv.shutdown());
}

}  // namespace
}  // namespace qos::test

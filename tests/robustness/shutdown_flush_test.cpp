// qos::listener::flush(): responses answered from threads other than the reactor's (as the
// gate's fibers answer) are queued in Pistache's transport and written by its reactor later;
// stopping the reactor in between drops them. flush() before shutdown() writes them out. Real
// sockets on 127.0.0.1, bounded waits, no speed asserted.
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <pistache/router.h>

#include "qos/http/connection.hpp"
#include "qos/http/listener.hpp"
#include "raw_client.hpp"

namespace qos::test {
namespace {

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// GET /held/:id keeps its writer; answer_all() answers every kept one from the calling thread.
struct holding_service {
  holding_service() {
    rest::Routes::Get(router, "/held/:id",
                      [this](const rest::Request& req, http::ResponseWriter w) {
                        std::lock_guard lock(mutex);
                        held.emplace_back(req.param(":id").as<std::string>(), std::move(w));
                        return rest::Route::Result::Ok;
                      });
    listener_options options;
    options.address = "127.0.0.1";
    options.port = 0;
    options.reactor_threads = 2;
    server = std::make_unique<listener>(connection_handler_for(router), options);
    server->start();
  }
  std::size_t held_count() {
    std::lock_guard lock(mutex);
    return held.size();
  }
  void answer_all() {
    std::vector<std::pair<std::string, http::ResponseWriter>> taken;
    {
      std::lock_guard lock(mutex);
      taken.swap(held);
    }
    for (auto& [id, w] : taken) w.send(http::Code::Ok, id);
  }

  rest::Router router;
  std::mutex mutex;
  std::vector<std::pair<std::string, http::ResponseWriter>> held;
  std::unique_ptr<listener> server;
};

std::string get(const std::string& target) {
  return "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
}

TEST(shutdown_flush, responses_queued_from_other_threads_reach_their_clients_before_the_stop) {
  constexpr int n = 64;
  for (int round = 0; round < 3; ++round) {
    holding_service svc;
    std::vector<std::unique_ptr<raw_client>> clients;
    for (int i = 0; i < n; ++i) {
      clients.push_back(std::make_unique<raw_client>(svc.server->port()));
      ASSERT_TRUE(clients.back()->connected());
      ASSERT_TRUE(clients.back()->send(get("/held/" + std::to_string(i))));
    }
    const auto until = steady::now() + 10s;
    while (svc.held_count() < static_cast<std::size_t>(n) && steady::now() < until) {
      std::this_thread::sleep_for(2ms);
    }
    ASSERT_EQ(svc.held_count(), static_cast<std::size_t>(n));

    svc.answer_all();
    EXPECT_TRUE(svc.server->flush(steady::now() + 5s));
    svc.server->shutdown();

    int answered = 0;
    for (int i = 0; i < n; ++i) {
      const auto r = clients[i]->read(1, 2s);
      if (r.responses.size() == 1 && r.responses[0].status == 200 &&
          r.responses[0].body == std::to_string(i)) {
        ++answered;
      }
    }
    EXPECT_EQ(answered, n) << "round " << round;
  }
}

// A client that reads nothing keeps its response unwritten: flush() says so at its bound
// instead of waiting for it, and the stop goes on.
TEST(shutdown_flush, a_client_that_reads_nothing_holds_the_flush_only_until_its_bound) {
  holding_service svc;
  raw_client reader(svc.server->port(), /*receive_buffer=*/4096);
  ASSERT_TRUE(reader.connected());
  ASSERT_TRUE(reader.send(get("/held/big")));
  const auto until = steady::now() + 10s;
  while (svc.held_count() < 1 && steady::now() < until) std::this_thread::sleep_for(2ms);
  ASSERT_EQ(svc.held_count(), 1u);
  {
    std::lock_guard lock(svc.mutex);
    // Far more than the socket buffers of both ends hold.
    svc.held[0].first = std::string(8 << 20, 'x');
  }
  svc.answer_all();
  const auto began = steady::now();
  EXPECT_FALSE(svc.server->flush(began + 300ms));
  EXPECT_GE(steady::now() - began, 300ms);
  svc.server->shutdown();
}

}  // namespace
}  // namespace qos::test

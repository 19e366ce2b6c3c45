// Disconnect storms against a real server whose guarded group (limit 2) is full: hundreds of
// clients parked in its queue, and the two being served, vanish at once, half with a reset
// (SO_LINGER 0) and half with a FIN. Afterwards every permit and queue place is back (in use 0,
// nobody waiting, two permits free at once and a fresh request served), every socket is given
// back, and the counters add up: arrivals = the sum of the outcomes, with the two that were
// running `admitted` and every parked one `client_gone` when the storm comes while the handlers
// are held; the sum alone where the timing of the closes decides the outcome.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <boost/fiber/operations.hpp>

#include "robustness/raw_client.hpp"
#include "robustness/robust_server.hpp"
#include "support/eventually.hpp"

namespace qos::test {
namespace {

using namespace std::chrono_literals;
namespace http = Pistache::Http;
namespace rest = Pistache::Rest;

// A client socket the test closes the way it chooses.
class storm_client {
 public:
  explicit storm_client(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~storm_client() { close_with_fin(); }
  storm_client(const storm_client&) = delete;
  storm_client& operator=(const storm_client&) = delete;

  bool send(const std::string& bytes) {
    return fd_ >= 0 && ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
                           static_cast<ssize_t>(bytes.size());
  }
  // Reads until a response head and body of `body` have arrived (bounded); true when seen.
  bool read_body(const std::string& body, std::chrono::milliseconds limit) {
    std::string got;
    const auto until = std::chrono::steady_clock::now() + limit;
    while (got.find("\r\n\r\n" + body) == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                            until - std::chrono::steady_clock::now())
                            .count();
      pollfd p{fd_, POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return false;
      got.append(buf, static_cast<std::size_t>(n));
    }
    return true;
  }
  // close() with SO_LINGER {on, 0}: the kernel sends RST and drops what is unsent.
  void close_with_reset() {
    if (fd_ < 0) return;
    const linger abort{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
    ::close(fd_);
    fd_ = -1;
  }
  // A plain close(): FIN, as nothing unread is left in the socket.
  void close_with_fin() {
    if (fd_ < 0) return;
    ::close(fd_);
    fd_ = -1;
  }
  bool connected() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// The robustness suite's config (group "db", limit 2, queue 10,000, route "guarded" waiting up
// to 20 s) with /guarded/:id held by the test: its handler records that it runs, waits until the
// test opens the gate, sleeps `work` and answers its id; /plain/:id answers at once.
class disconnect_storm_test : public ::testing::Test {
 protected:
  void start(std::chrono::milliseconds work, bool open) {
    open_ = open;
    srv_ = std::make_unique<server>(robust_config({}));
    auto& router = srv_->router();
    rest::Routes::Get(router, "/plain/:id",
                      gate::plain([](const rest::Request& req, http::ResponseWriter& w) {
                        w.send(http::Code::Ok, req.param(":id").as<std::string>());
                      }));
    rest::Routes::Get(router, "/guarded/:id",
                      srv_->gate().guard("guarded", [this, work](const rest::Request& req,
                                                                 http::ResponseWriter& w) {
                        const auto id = req.param(":id").as<std::string>();
                        {
                          std::lock_guard lk(running_mutex_);
                          running_.insert(id);
                        }
                        // Fiber-friendly wait: the executor's other fibers (the queue's) go on
                        // meanwhile.
                        while (!open_.load(std::memory_order_acquire))
                          boost::this_fiber::sleep_for(1ms);
                        if (work > 0ms) boost::this_fiber::sleep_for(work);
                        w.send(http::Code::Ok, id);
                      }));
    srv_->start();
    port_ = srv_->port();
    baseline_fds_ = open_fds();
  }
  void TearDown() override {
    open_ = true;
    if (srv_) {
      EXPECT_TRUE(srv_->shutdown());
    }
  }

  limit_group& group() { return *srv_->admission().find_group("db"); }
  const metrics_registry::route_series& counters() { return *srv_->metrics().find("guarded"); }

  // Sum over every outcome of the guarded route.
  std::uint64_t answered() {
    std::uint64_t sum = 0;
    for (const auto& row : outcome_table) sum += counters().count(row.value);
    return sum;
  }
  std::set<std::string> running() {
    std::lock_guard lk(running_mutex_);
    return running_;
  }

  // Everything a storm must leave as it found it: the group's permits and queue places, the
  // sockets, and counters in which every arrival has exactly one outcome.
  void expect_settled() {
    EXPECT_TRUE(eventually([&] { return answered() == counters().arrivals(); }, 20s))
        << answered() << " answered of " << counters().arrivals() << " arrived";
    EXPECT_TRUE(eventually(
        [&] {
          const auto s = group().stats();
          return s.in_use == 0 && s.waiting == 0 && s.reserved == 0;
        },
        10s));
    const auto s = group().stats();
    EXPECT_EQ(s.in_use, 0u);
    EXPECT_EQ(s.waiting, 0u);
    EXPECT_EQ(s.reserved, 0u);
    EXPECT_TRUE(eventually([&] { return open_fds() <= baseline_fds_; }, 10s))
        << open_fds() << " descriptors open, " << baseline_fds_ << " before the storm";
    EXPECT_EQ(answered(), counters().arrivals());

    // Both permits are free now: taken at once, without a queue place.
    {
      auto first = group().limiter().try_admit();
      auto second = group().limiter().try_admit();
      EXPECT_EQ(first.kind, fiber_limiter::admit_kind::granted);
      EXPECT_EQ(second.kind, fiber_limiter::admit_kind::granted);
    }
    // And a fresh request is served (the gate is open by now).
    open_ = true;
    const auto admitted = counters().count(outcome::admitted);
    raw_client c(port_);
    ASSERT_TRUE(c.send(get("/guarded/fresh")));
    const auto r = c.read(1);
    ASSERT_EQ(r.statuses(), std::vector<int>{200}) << r.error;
    EXPECT_EQ(r.responses[0].body, "fresh");
    EXPECT_TRUE(eventually([&] { return counters().count(outcome::admitted) == admitted + 1; }));
    EXPECT_EQ(answered(), counters().arrivals());
  }

  std::unique_ptr<server> srv_;
  std::uint16_t port_ = 0;
  int baseline_fds_ = 0;
  std::atomic<bool> open_{false};
  std::mutex running_mutex_;
  std::set<std::string> running_;  // ids whose handler started
};

TEST_F(disconnect_storm_test, parked_and_running_clients_vanishing_give_every_permit_back) {
  constexpr int clients = 400;
  start(0ms, false);
  std::vector<std::unique_ptr<storm_client>> c;
  for (int i = 0; i < clients; ++i) {
    c.push_back(std::make_unique<storm_client>(port_));
    ASSERT_TRUE(c.back()->connected()) << i;
    ASSERT_TRUE(c.back()->send(get("/guarded/" + std::to_string(i)))) << i;
  }
  // Two run (held), the rest wait in the group's queue.
  ASSERT_TRUE(eventually([&] {
    const auto s = group().stats();
    return s.in_use == 2 && s.waiting == clients - 2 && running().size() == 2;
  })) << group().stats().in_use
      << " in use, " << group().stats().waiting << " waiting";
  ASSERT_EQ(counters().arrivals(), static_cast<std::uint64_t>(clients));

  // The storm: one running client resets, the other closes; the parked ones alternate.
  const auto held = running();
  bool reset_next = true;
  for (const auto& id : held) {
    auto& client = *c[static_cast<std::size_t>(std::stoi(id))];
    reset_next ? client.close_with_reset() : client.close_with_fin();
    reset_next = !reset_next;
  }
  for (int i = 0; i < clients; ++i) {
    if (i % 2 == 0) {
      c[static_cast<std::size_t>(i)]->close_with_reset();
    } else {
      c[static_cast<std::size_t>(i)]->close_with_fin();
    }
  }
  // The server has seen every close (it gave every socket back) before a permit moves: each
  // parked request learns, when its turn comes, that nobody waits for it any more.
  ASSERT_TRUE(eventually([&] { return open_fds() <= baseline_fds_; }, 10s))
      << open_fds() << " descriptors open, " << baseline_fds_ << " before the storm";
  EXPECT_EQ(group().stats().in_use, 2u);
  EXPECT_EQ(group().stats().waiting, static_cast<std::size_t>(clients - 2));
  open_ = true;

  expect_settled();
  // Exact: the two running handlers finished (their answer went nowhere), every parked
  // request ended client_gone without running, and nothing else happened. (+1: the fresh one.)
  EXPECT_EQ(counters().arrivals(), static_cast<std::uint64_t>(clients + 1));
  EXPECT_EQ(counters().count(outcome::admitted), 2u + 1u);
  EXPECT_EQ(counters().count(outcome::client_gone), static_cast<std::uint64_t>(clients - 2));
  EXPECT_EQ(running().size(), 2u + 1u) << "a parked request of a gone client ran its handler";
  for (const auto& row : outcome_table) {
    if (row.value != outcome::admitted && row.value != outcome::client_gone) {
      EXPECT_EQ(counters().count(row.value), 0u) << row.name;
    }
  }
}

TEST_F(disconnect_storm_test, clients_leaving_at_any_moment_leave_counters_that_add_up) {
  // The gate is open and each handler takes 2 ms: clients leave before their request is read,
  // while it waits, while it runs and after its answer. Which outcome each gets depends on
  // that timing; that each arrival gets exactly one, and that nothing is held after, does not.
  constexpr int rounds = 3;
  constexpr int clients = 200;
  start(2ms, true);
  std::uint64_t sent = 0;
  int read_back = 0;
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::unique_ptr<storm_client>> c;
    for (int i = 0; i < clients; ++i) {
      c.push_back(std::make_unique<storm_client>(port_));
      ASSERT_TRUE(c.back()->connected());
      if (c.back()->send(get("/guarded/" + std::to_string(round * clients + i)))) ++sent;
      // Every fourth leaves at once, before the server may have read its request.
      if (i % 4 == 0) (i % 8 == 0) ? c.back()->close_with_reset() : c.back()->close_with_fin();
    }
    // A few wait for their answer, then everyone else leaves, half of them with a reset.
    for (int i = 1; i < clients; i += 10) {
      if (c[static_cast<std::size_t>(i)]->read_body(std::to_string(round * clients + i), 10s)) {
        ++read_back;
      }
    }
    for (int i = 0; i < clients; ++i) {
      if (i % 2 == 0) {
        c[static_cast<std::size_t>(i)]->close_with_reset();
      } else {
        c[static_cast<std::size_t>(i)]->close_with_fin();
      }
    }
  }
  expect_settled();
  std::printf("%llu requests sent, %llu arrived: %llu admitted, %llu client_gone\n",
              static_cast<unsigned long long>(sent),
              static_cast<unsigned long long>(counters().arrivals()),
              static_cast<unsigned long long>(counters().count(outcome::admitted)),
              static_cast<unsigned long long>(counters().count(outcome::client_gone)));
  // A request reset away before the server read it never arrived; every other did. (The
  // fresh request of expect_settled() is in the counters too.)
  EXPECT_LE(counters().arrivals(), sent + 1);
  EXPECT_GE(counters().count(outcome::admitted), static_cast<std::uint64_t>(read_back) + 1);
  for (const auto& row : outcome_table) {
    if (row.value != outcome::admitted && row.value != outcome::client_gone) {
      EXPECT_EQ(counters().count(row.value), 0u) << row.name;
    }
  }
}

}  // namespace
}  // namespace qos::test

// A closed-loop run at C = 5,000 against a real server: 5,000 keep-alive connections on
// 127.0.0.1, each sending its requests one after the other (one in eight guarded, on the group
// of limit 2 whose handler sleeps 1 ms; the rest unguarded), read with the shared incremental
// response parser. Every request sent is answered exactly once, with its own body, no
// connection is closed by the server, and the server's counters of the guarded route agree
// with the client's. Bounded: a fixed number of requests per connection and a deadline.
// QOS_CLOSED_LOOP_CLIENTS and QOS_CLOSED_LOOP_REQUESTS change C and the requests per connection
// (defaults 5,000 and 8, what CI runs).
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "robustness/robust_server.hpp"
#include "support/eventually.hpp"
#include "support/wire/http_response_parser.hpp"

namespace qos::test {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

std::size_t from_env(const char* name, std::size_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return static_cast<std::size_t>(std::strtoull(v, nullptr, 10));
}

// The soft descriptor limit raised to the hard one: C clients and C server sockets in one
// process. Returns the soft limit now.
rlim_t raise_fd_limit() {
  rlimit l{};
  if (::getrlimit(RLIMIT_NOFILE, &l) != 0) return 0;
  if (l.rlim_cur < l.rlim_max) {
    l.rlim_cur = l.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &l);
    ::getrlimit(RLIMIT_NOFILE, &l);
  }
  return l.rlim_cur;
}

// Request j of connection i: guarded one time in eight, spread over the connections.
bool guarded(std::size_t i, std::size_t j) {
  return (i + j) % 8 == 0;
}
std::string id_of(std::size_t i, std::size_t j) {
  return std::to_string(i) + "-" + std::to_string(j);
}

struct connection {
  int fd = -1;
  std::size_t index = 0;
  bool connecting = true;
  std::size_t sent = 0;      // requests written completely
  std::size_t answered = 0;  // complete responses read
  std::size_t guarded_sent = 0;
  std::string out;  // bytes of the request being written
  std::size_t out_off = 0;
  wire::http_response_parser parser;
  bool closed_by_server = false;
  std::string error;  // the first thing that went wrong on it
};

struct client_totals {
  std::size_t sent = 0, answered = 0, guarded_sent = 0;
  std::size_t closed_by_server = 0, connect_failed = 0, wrong = 0, unfinished = 0;
  std::string first_error;
};

// One client thread: connections [first, last) on an epoll of its own, opened at most
// `max_connecting` at a time (a burst of SYNs beyond the listen queue would only be retried
// after a second), each sending `per_connection` requests, a new one as soon as the last is
// answered. Stops when every connection is done, or at `until`.
class loop_client {
 public:
  loop_client(std::uint16_t port, std::size_t first, std::size_t last, std::size_t per_connection,
              steady::time_point until)
      : port_(port), first_(first), last_(last), per_(per_connection), until_(until) {}

  client_totals run() {
    ep_ = ::epoll_create1(EPOLL_CLOEXEC);
    conns_.resize(last_ - first_);
    std::size_t next = 0, connecting = 0, finished = 0;
    std::vector<epoll_event> events(512);
    while (finished < conns_.size() && steady::now() < until_) {
      while (next < conns_.size() && connecting < max_connecting) {
        if (open(conns_[next], first_ + next)) {
          ++connecting;
        } else {
          ++finished;  // counted as connect_failed
        }
        ++next;
      }
      const int n = ::epoll_wait(ep_, events.data(), static_cast<int>(events.size()), 100);
      for (int e = 0; e < n; ++e) {
        auto& c = conns_[events[e].data.u64];
        const bool was_done = done(c);
        if (c.connecting) {
          if (!(events[e].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) continue;
          --connecting;
          c.connecting = false;
          int err = 0;
          socklen_t len = sizeof err;
          ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
          if (err != 0) {
            fail(c, "connect: " + std::to_string(err));
            ++finished;
            continue;
          }
          send_next(c);
        } else {
          if (events[e].events & EPOLLOUT) flush(c);
          if (events[e].events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) receive(c);
        }
        if (!was_done && done(c)) ++finished;
      }
    }
    return totals();
  }

  // After the run: every finished connection is still open (nothing to read, no end of
  // stream), i.e. the server kept it alive. Returns how many were found closed.
  std::size_t closed_now() {
    std::size_t closed = 0;
    for (auto& c : conns_) {
      if (c.fd < 0 || !c.error.empty()) continue;
      char b;
      const ssize_t n = ::recv(c.fd, &b, 1, MSG_DONTWAIT | MSG_PEEK);
      if (!(n < 0 && errno == EAGAIN)) ++closed;
    }
    return closed;
  }

  ~loop_client() {
    for (auto& c : conns_) {
      if (c.fd >= 0) ::close(c.fd);
    }
    if (ep_ >= 0) ::close(ep_);
  }

 private:
  static constexpr std::size_t max_connecting = 128;

  bool done(const connection& c) const { return !c.error.empty() || c.answered == per_; }

  void fail(connection& c, std::string why) {
    if (c.error.empty()) c.error = std::move(why);
  }

  bool open(connection& c, std::size_t index) {
    c.index = index;
    c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      fail(c, "socket: " + std::to_string(errno));
      return false;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port_);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 &&
        errno != EINPROGRESS) {
      fail(c, "connect: " + std::to_string(errno));
      return false;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
    ev.data.u64 = &c - conns_.data();
    ::epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev);
    return true;
  }

  void watch_output(connection& c, bool on) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u);
    ev.data.u64 = &c - conns_.data();
    ::epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  void send_next(connection& c) {
    const std::size_t j = c.sent;
    c.out = get((guarded(c.index, j) ? "/guarded/" : "/plain/") + id_of(c.index, j));
    c.out_off = 0;
    flush(c);
  }

  void flush(connection& c) {
    while (c.out_off < c.out.size()) {
      const ssize_t n =
          ::send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) {
        watch_output(c, true);
        return;
      }
      if (n <= 0) {
        fail(c, "send: " + std::to_string(errno));
        return;
      }
      c.out_off += static_cast<std::size_t>(n);
    }
    if (!c.out.empty()) {
      ++c.sent;
      if (guarded(c.index, c.sent - 1)) ++c.guarded_sent;
      c.out.clear();
    }
    watch_output(c, false);
  }

  void receive(connection& c) {
    char buf[16384];
    for (;;) {
      const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      if (n <= 0) {
        // End of stream or reset: the server closed a keep-alive connection.
        c.closed_by_server = true;
        c.parser.feed_eof();
        drain(c);
        fail(c, n == 0 ? "closed by the server" : "reset: " + std::to_string(errno));
        ::epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
        return;
      }
      c.parser.feed(std::string_view(buf, static_cast<std::size_t>(n)));
      if (!drain(c)) return;
    }
  }

  // Takes every complete response; sends the next request after each. False on error.
  bool drain(connection& c) {
    for (;;) {
      const auto r = c.parser.next();
      if (r == wire::parse_result::incomplete || r == wire::parse_result::closed) return true;
      if (r == wire::parse_result::error) {
        fail(c, "parse: " + c.parser.error());
        return false;
      }
      const auto& resp = c.parser.response();
      const std::size_t j = c.answered++;
      if (c.answered > c.sent) {
        fail(c, "a response to no request");
        return false;
      }
      if (resp.status != 200 || resp.body != id_of(c.index, j) || !resp.keep_alive) {
        fail(c, "request " + id_of(c.index, j) + ": status " + std::to_string(resp.status) +
                    ", body '" + resp.body.substr(0, 40) + "'" +
                    (resp.keep_alive ? "" : ", not kept alive"));
        ++wrong_;
        return false;
      }
      if (c.answered < per_) send_next(c);
    }
  }

  client_totals totals() const {
    client_totals t;
    for (const auto& c : conns_) {
      t.sent += c.sent;
      t.answered += c.answered;
      t.guarded_sent += c.guarded_sent;
      if (c.closed_by_server) ++t.closed_by_server;
      if (c.error.rfind("connect", 0) == 0 || c.error.rfind("socket", 0) == 0) ++t.connect_failed;
      if (c.error.empty() && c.answered != per_) ++t.unfinished;
      if (!c.error.empty() && t.first_error.empty()) {
        t.first_error = "connection " + std::to_string(c.index) + ": " + c.error;
      }
    }
    t.wrong = wrong_;
    return t;
  }

  const std::uint16_t port_;
  const std::size_t first_, last_, per_;
  const steady::time_point until_;
  int ep_ = -1;
  std::vector<connection> conns_;
  std::size_t wrong_ = 0;
};

TEST(closed_loop_test, five_thousand_keep_alive_clients_get_one_answer_per_request) {
  const std::size_t clients = from_env("QOS_CLOSED_LOOP_CLIENTS", 5000);
  const std::size_t per_connection = from_env("QOS_CLOSED_LOOP_REQUESTS", 8);
  ASSERT_GT(clients, 0u);
  ASSERT_GT(per_connection, 0u);
  // Each client socket and its server side, plus what the process already holds.
  const rlim_t limit = raise_fd_limit();
  ASSERT_GE(limit, 2 * clients + 256) << "the descriptor limit is too low for C = " << clients;

  auto srv = start_robust_server({.guarded_work = 1ms});
  const std::uint16_t port = srv->port();
  const auto* guarded_route = srv->metrics().find("guarded");
  ASSERT_NE(guarded_route, nullptr);

  // Two client threads, half the connections each; a deadline far beyond the expected run (a
  // few seconds; more under sanitizers), so that a lost answer fails the test instead of
  // hanging it.
  const auto until = steady::now() + 60s;
  std::vector<std::unique_ptr<loop_client>> loops;
  loops.push_back(std::make_unique<loop_client>(port, 0, clients / 2, per_connection, until));
  loops.push_back(std::make_unique<loop_client>(port, clients / 2, clients, per_connection, until));
  std::vector<client_totals> results(loops.size());
  {
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < loops.size(); ++t) {
      threads.emplace_back([&, t] { results[t] = loops[t]->run(); });
    }
    for (auto& t : threads) t.join();
  }
  client_totals all;
  std::size_t closed_after = 0;
  for (std::size_t t = 0; t < loops.size(); ++t) {
    const auto& r = results[t];
    all.sent += r.sent;
    all.answered += r.answered;
    all.guarded_sent += r.guarded_sent;
    all.closed_by_server += r.closed_by_server;
    all.connect_failed += r.connect_failed;
    all.wrong += r.wrong;
    all.unfinished += r.unfinished;
    if (all.first_error.empty()) all.first_error = r.first_error;
    closed_after += loops[t]->closed_now();
  }

  EXPECT_EQ(all.connect_failed, 0u) << all.first_error;
  EXPECT_EQ(all.closed_by_server, 0u) << all.first_error;
  EXPECT_EQ(all.wrong, 0u) << all.first_error;
  EXPECT_EQ(all.unfinished, 0u) << "connections still waiting at the deadline";
  EXPECT_EQ(all.sent, clients * per_connection) << all.first_error;
  EXPECT_EQ(all.answered, all.sent) << all.first_error;
  EXPECT_EQ(closed_after, 0u) << "connections closed by the server after their last answer";

  // The server's side: every guarded request the clients sent arrived and was admitted,
  // nothing else happened to one, and nothing is held any more.
  // (A client may read its answer a moment before the server counts the outcome.)
  const auto outcomes = [&] {
    std::uint64_t sum = 0;
    for (const auto& row : outcome_table) sum += guarded_route->count(row.value);
    return sum;
  };
  EXPECT_TRUE(eventually([&] { return outcomes() == guarded_route->arrivals(); }));
  EXPECT_EQ(guarded_route->arrivals(), all.guarded_sent);
  EXPECT_EQ(guarded_route->count(outcome::admitted), all.guarded_sent);
  EXPECT_EQ(outcomes(), guarded_route->arrivals());
  const auto s = srv->admission().find_group("db")->stats();
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.waiting, 0u);

  loops.clear();  // the clients close; then the server stops
  EXPECT_TRUE(srv->shutdown());
}

}  // namespace
}  // namespace qos::test

// Requests that wait in the server while the test does something else (a reload, a drain, a
// signal): each on a connection of its own, written at once and answered later. collect() reads
// exactly one response per connection with poll() (no thread per connection), all within a
// deadline, then listens a little longer so that a second response on any connection is
// counted: "every request got exactly one answer" is then answered == sent and extra == 0.
// Also connect_errno(), to tell a closed listener (ECONNREFUSED) from an open one.
// Loopback only. Not thread-safe: one batch per thread.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/wire/http_response_parser.hpp"

namespace qos::test {

inline sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// 0 when a TCP connection to 127.0.0.1:port is established (it is closed at once), else the
// errno of the failure (ECONNREFUSED once nothing listens there).
inline int connect_errno(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  const sockaddr_in addr = loopback(port);
  const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int err = rc == 0 ? 0 : errno;
  ::close(fd);
  return err;
}

class parked_batch {
 public:
  struct answer {
    int status = 0;       // 0: no complete response
    std::string outcome;  // X-QoS-Outcome, if any
    std::string body;
  };

  parked_batch() = default;
  parked_batch(const parked_batch&) = delete;
  parked_batch& operator=(const parked_batch&) = delete;
  ~parked_batch() {
    for (const int fd : fds_) {
      if (fd >= 0) ::close(fd);
    }
  }

  // Opens `n` connections to 127.0.0.1:port and writes one keep-alive GET `target` on each.
  // Returns how many were written (failures are counted in failed() and kept in error()).
  int send(std::uint16_t port, int n, const std::string& target) {
    const std::string request =
        "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n";
    const sockaddr_in addr = loopback(port);
    int sent = 0;
    for (int i = 0; i < n; ++i) {
      // A loopback accept queue may hold as few as 129 connections (somaxconn 128), and a SYN
      // that finds it full is retried only a second later: give the server time to accept.
      if (i % 64 == 63) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
          ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
              static_cast<ssize_t>(request.size())) {
        note("connect/send: " + std::to_string(errno));
        if (fd >= 0) ::close(fd);
        ++failed_;
        continue;
      }
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      fds_.push_back(fd);
      parsers_.emplace_back();
      answers_.emplace_back();
      ++sent;
    }
    return sent;
  }

  // Reads until every connection written has its response or `limit` passes, then `quiet`
  // more: any byte after a connection's response counts in extra(). A connection the server
  // closes after answering is fine; one closed before is noted in error().
  void collect(std::chrono::milliseconds limit,
               std::chrono::milliseconds quiet = std::chrono::milliseconds(50)) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until &&
           round(std::chrono::milliseconds(50), false)) {
    }
    const auto quiet_until = std::chrono::steady_clock::now() + quiet;
    while (std::chrono::steady_clock::now() < quiet_until &&
           round(std::chrono::milliseconds(10), true)) {
    }
  }

  int sent() const noexcept { return static_cast<int>(answers_.size()); }
  int failed() const noexcept { return failed_; }
  int extra() const noexcept { return extra_; }
  const std::string& error() const noexcept { return error_; }
  const std::vector<answer>& answers() const noexcept { return answers_; }
  int answered() const {
    return count([](const answer& a) { return a.status != 0; });
  }
  int with_status(int status) const {
    return count([status](const answer& a) { return a.status == status; });
  }
  // 503 with X-QoS-Outcome: shutdown, the drain's answer.
  int shutdown_fallbacks() const {
    return count([](const answer& a) { return a.status == 503 && a.outcome == "shutdown"; });
  }
  // Neither a 2xx nor the drain's fallback (nor nothing).
  int unexpected() const {
    return count([](const answer& a) {
      const bool ok = a.status >= 200 && a.status < 300;
      const bool shed = a.status == 503 && a.outcome == "shutdown";
      return !ok && !shed;
    });
  }

 private:
  template <class Pred>
  int count(Pred pred) const {
    int n = 0;
    for (const auto& a : answers_) n += pred(a) ? 1 : 0;
    return n;
  }

  void note(const std::string& what) {
    if (error_.empty()) error_ = what;
  }

  // One poll over the connections still of interest; false when there are none.
  bool round(std::chrono::milliseconds wait, bool after) {
    std::vector<pollfd> polled;
    std::vector<std::size_t> which;
    for (std::size_t i = 0; i < fds_.size(); ++i) {
      if (fds_[i] >= 0 && (after || answers_[i].status == 0)) {
        polled.push_back({fds_[i], POLLIN, 0});
        which.push_back(i);
      }
    }
    if (polled.empty()) return false;
    if (::poll(polled.data(), polled.size(), static_cast<int>(wait.count())) <= 0) return true;
    char buf[4096];
    for (std::size_t k = 0; k < polled.size(); ++k) {
      if (polled[k].revents == 0) continue;
      const std::size_t i = which[k];
      const ssize_t got = ::recv(fds_[i], buf, sizeof buf, 0);
      if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
      if (got <= 0) {
        if (answers_[i].status == 0) note("closed before a response");
        ::close(fds_[i]);
        fds_[i] = -1;
        continue;
      }
      if (after || answers_[i].status != 0) {
        ++extra_;
        continue;
      }
      parsers_[i].feed(std::string_view(buf, static_cast<std::size_t>(got)));
      const auto r = parsers_[i].next();
      if (r == wire::parse_result::complete) {
        auto& resp = parsers_[i].response();
        answers_[i].status = resp.status;
        answers_[i].outcome = std::string(resp.header("X-QoS-Outcome").value_or(""));
        answers_[i].body = resp.body;
        if (parsers_[i].mid_response()) ++extra_;  // bytes of a second response came along
      } else if (r == wire::parse_result::error) {
        note(parsers_[i].error());
      }
    }
    return true;
  }

  std::vector<int> fds_;
  std::vector<wire::http_response_parser> parsers_;
  std::vector<answer> answers_;
  int failed_ = 0;
  int extra_ = 0;
  std::string error_;
};

}  // namespace qos::test

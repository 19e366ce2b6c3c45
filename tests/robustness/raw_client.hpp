// A client that sends exactly the bytes a test gives it (garbage, half a header, a hundred
// pipelined requests) to 127.0.0.1 and reads back responses and the server's close. Every wait
// is bounded by a deadline; nothing asserts speed. Not thread-safe: one per thread.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "support/wire/http_response_parser.hpp"

namespace qos::test {

struct raw_result {
  std::vector<wire::parsed_response> responses;  // final responses, in order
  std::vector<int> interim;                      // 1xx statuses seen
  bool closed = false;                           // the server closed (FIN or reset)
  std::string error;                             // the parser failed; says why

  std::vector<int> statuses() const {
    std::vector<int> s;
    for (const auto& r : responses) s.push_back(r.status);
    return s;
  }
};

class raw_client {
 public:
  using clock = std::chrono::steady_clock;

  // `receive_buffer`: when set, SO_RCVBUF before connecting (a client that reads slowly).
  explicit raw_client(std::uint16_t port, int receive_buffer = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ >= 0 && receive_buffer > 0) {
      ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~raw_client() {
    if (fd_ >= 0) ::close(fd_);
  }
  raw_client(const raw_client&) = delete;
  raw_client& operator=(const raw_client&) = delete;

  bool connected() const { return fd_ >= 0; }

  // Sends every byte (bounded by `limit`); false when the server closed or reset first.
  bool send(std::string_view bytes, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    const auto until = clock::now() + limit;
    while (!bytes.empty()) {
      if (!wait(POLLOUT, until)) return false;
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        return false;
      }
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // The next response is to HEAD: it has no body.
  void expect_head() { parser_.expect_no_body(); }

  // Reads until `n` final responses arrived, the server closed, or `limit` passed.
  raw_result read(std::size_t n, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    return read_impl(n, false, limit);
  }
  // Reads every response until the server closes, or `limit` passes (closed is then false).
  raw_result read_until_closed(std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    return read_impl(SIZE_MAX, true, limit);
  }

 private:
  bool wait(short events, clock::time_point until) {
    for (;;) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now()).count();
      if (left <= 0) return false;
      pollfd p{fd_, events, 0};
      const int r = ::poll(&p, 1, static_cast<int>(left));
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) return false;
    }
  }

  raw_result read_impl(std::size_t n, bool to_close, std::chrono::milliseconds limit) {
    raw_result out;
    const auto until = clock::now() + limit;
    auto drain = [&] {
      for (;;) {
        const auto r = parser_.next();
        if (r == wire::parse_result::complete) {
          auto& resp = parser_.response();
          if (resp.status >= 100 && resp.status < 200) {
            out.interim.push_back(resp.status);
          } else {
            out.responses.push_back(std::move(resp));
          }
        } else if (r == wire::parse_result::error) {
          out.error = parser_.error();
          return;
        } else {
          return;
        }
      }
    };
    drain();
    while (out.error.empty() && (to_close || out.responses.size() < n)) {
      if (!wait(POLLIN, until)) return out;
      char buf[16384];
      const ssize_t got = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (got <= 0) {
        out.closed = true;
        parser_.feed_eof();
        drain();
        return out;
      }
      parser_.feed(std::string_view(buf, static_cast<std::size_t>(got)));
      drain();
    }
    return out;
  }

  int fd_ = -1;
  wire::http_response_parser parser_;
};

}  // namespace qos::test

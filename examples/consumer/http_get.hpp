// A tiny HTTP/1.1 client for the smoke test: one GET per connection to 127.0.0.1 over a plain
// socket, every read and write bounded by a timeout. Enough for the answers this service gives
// (a Content-Length body, or a body up to the close); not a general client. Reentrant.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>

namespace consumer {

struct reply {
  int status = 0;
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;

  std::string header(std::string name) const {
    std::ranges::transform(name, name.begin(), [](unsigned char c) { return std::tolower(c); });
    const auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

namespace detail {

// Closes the socket however the request ends.
struct socket_fd {
  int fd;
  explicit socket_fd(int f) : fd(f) {}
  socket_fd(const socket_fd&) = delete;
  socket_fd& operator=(const socket_fd&) = delete;
  ~socket_fd() {
    if (fd >= 0) ::close(fd);
  }
};

[[noreturn]] inline void fail(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

inline std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  const auto e = s.find_last_not_of(" \t\r");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

}  // namespace detail

// GETs `path` from 127.0.0.1:port with `Connection: close`. Throws std::runtime_error when the
// connection fails, a read or write takes longer than `timeout`, or the answer is malformed.
inline reply http_get(std::uint16_t port, const std::string& path,
                      std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  detail::socket_fd s(::socket(AF_INET, SOCK_STREAM, 0));
  if (s.fd < 0) detail::fail("socket");
  const timeval tv{.tv_sec = static_cast<time_t>(timeout.count() / 1000),
                   .tv_usec = static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
  ::setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(s.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(s.fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    detail::fail("connect to 127.0.0.1:" + std::to_string(port));
  }

  const std::string request =
      "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  for (std::size_t sent = 0; sent < request.size();) {
    const auto n = ::send(s.fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) detail::fail("send GET " + path);
    sent += static_cast<std::size_t>(n);
  }

  // Reads until the head is complete, then until Content-Length bytes of body (or the close).
  std::string in;
  std::size_t head_end = std::string::npos;
  std::size_t body_size = std::string::npos;
  reply r;
  for (char buf[4096];;) {
    if (head_end != std::string::npos && body_size != std::string::npos &&
        in.size() >= head_end + body_size) {
      break;
    }
    const auto n = ::recv(s.fd, buf, sizeof buf, 0);
    if (n < 0) detail::fail("read the answer to GET " + path);
    if (n == 0) break;
    in.append(buf, static_cast<std::size_t>(n));
    if (head_end != std::string::npos) continue;
    const auto blank = in.find("\r\n\r\n");
    if (blank == std::string::npos) continue;
    head_end = blank + 4;
    // "HTTP/1.1 200 OK", then "Name: value" lines.
    const auto line_end = in.find("\r\n");
    const auto status_line = in.substr(0, line_end);
    if (status_line.rfind("HTTP/1.", 0) != 0 || status_line.size() < 12) {
      throw std::runtime_error("GET " + path + ": not an HTTP answer: " + status_line);
    }
    r.status = std::stoi(status_line.substr(9, 3));
    for (auto at = line_end + 2; at < blank;) {
      const auto next = in.find("\r\n", at);
      const auto line = in.substr(at, next - at);
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        std::ranges::transform(name, name.begin(), [](unsigned char c) { return std::tolower(c); });
        r.headers[name] = detail::trim(line.substr(colon + 1));
      }
      at = next + 2;
    }
    if (const auto length = r.header("content-length"); !length.empty()) {
      body_size = std::stoul(length);
    }
  }
  if (head_end == std::string::npos) {
    throw std::runtime_error("GET " + path + ": the connection closed before an answer");
  }
  r.body = in.substr(head_end);
  if (body_size != std::string::npos && r.body.size() < body_size) {
    throw std::runtime_error("GET " + path + ": the body ends early");
  }
  return r;
}

}  // namespace consumer

#include "support/http_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace qos::test {
namespace {

using steady = std::chrono::steady_clock;

std::optional<std::string> find_header(const header_list& headers, std::string_view name) {
  for (const auto& [key, value] : headers)
    if (wire::iequals(key, name)) return value;
  return std::nullopt;
}

std::string errno_message(std::string_view what, int err) {
  return std::string(what) + ": " + std::strerror(err);
}

}  // namespace

std::optional<std::string> http_response::header(std::string_view name) const {
  return find_header(headers, name);
}

http_connection::http_connection(uint16_t port, std::chrono::milliseconds timeout)
    : port_(port), timeout_(timeout) {}

http_connection::~http_connection() {
  close();
}

http_connection::http_connection(http_connection&& other) noexcept
    : port_(other.port_),
      timeout_(other.timeout_),
      fd_(std::exchange(other.fd_, -1)),
      error_(std::move(other.error_)),
      parser_(std::move(other.parser_)) {}

http_connection& http_connection::operator=(http_connection&& other) noexcept {
  if (this != &other) {
    close();
    port_ = other.port_;
    timeout_ = other.timeout_;
    fd_ = std::exchange(other.fd_, -1);
    error_ = std::move(other.error_);
    parser_ = std::move(other.parser_);
  }
  return *this;
}

bool http_connection::connect() {
  error_.clear();
  return connect_until(steady::now() + timeout_);
}

void http_connection::close(bool reset) {
  if (fd_ < 0) return;
  if (reset) {
    linger lg{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  // Not retried on EINTR: on Linux the descriptor is released even when close() is interrupted.
  ::close(fd_);
  fd_ = -1;
  parser_.reset();
}

bool http_connection::fail(std::string why) {
  error_ = std::move(why);
  close();
  return false;
}

bool http_connection::wait_for(short events, deadline_t deadline) {
  for (;;) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - steady::now());
    if (left.count() <= 0) {
      return fail(events & POLLOUT ? "timeout while connecting or sending"
                                   : "timeout while waiting for the response");
    }
    pollfd pfd{fd_, events, 0};
    int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (r > 0) return true;  // errors and hang-ups surface from the following send/recv
    if (r < 0 && errno != EINTR) return fail(errno_message("poll", errno));
  }
}

bool http_connection::connect_until(deadline_t deadline) {
  if (fd_ >= 0) return true;
  parser_.reset();
  if (port_ == 0) return fail("connect: port 0");
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return fail(errno_message("socket", errno));
  // Requests are small writes; Nagle would add delays that look like server latency.
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port_);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);  // never anything else, by design
  if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) return true;
  // A non-blocking connect interrupted by a signal still proceeds asynchronously, like EINPROGRESS.
  if (errno != EINPROGRESS && errno != EINTR) return fail(errno_message("connect", errno));
  if (!wait_for(POLLOUT, deadline)) return fail("connect: timeout");
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) return fail(errno_message("connect", err));
  return true;
}

bool http_connection::peer_closed_idle() {
  if (fd_ < 0 || parser_.mid_response()) return false;
  pollfd pfd{fd_, POLLIN, 0};
  if (::poll(&pfd, 1, 0) <= 0) return false;
  char c;
  ssize_t n = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

bool http_connection::send_all(std::string_view bytes, deadline_t deadline) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_for(POLLOUT, deadline)) return false;
    } else if (n < 0 && errno != EINTR) {
      error_ = errno_message("send", errno);  // left open: the server may have answered already
      return false;
    }
  }
  return true;
}

// One read into the parser; the end of stream is news for it too. False (failed) on timeout or
// error.
bool http_connection::read_more(deadline_t deadline) {
  char chunk[16384];
  for (;;) {
    if (!wait_for(POLLIN, deadline)) return false;
    ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n > 0) {
      parser_.feed(std::string_view(chunk, static_cast<std::size_t>(n)));
      return true;
    }
    if (n == 0) {
      parser_.feed_eof();
      return true;
    }
    if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
      return fail(errno_message("recv", errno));
  }
}

bool http_connection::read_response(const http_request& req, deadline_t deadline,
                                    http_response& resp) {
  if (wire::iequals(req.method, "HEAD")) parser_.expect_no_body();
  for (;;) {
    switch (parser_.next()) {
      case wire::parse_result::incomplete:
        if (!read_more(deadline)) return false;
        continue;
      case wire::parse_result::closed:
        return fail("connection closed by peer before the response was complete");
      case wire::parse_result::error:
        return fail(parser_.error());
      case wire::parse_result::complete:
        break;
    }
    auto& r = parser_.response();
    if (r.status < 200 && r.status != 101) continue;  // interim (100 Continue) precede the answer
    resp = http_response{};
    resp.status = r.status;
    resp.reason = std::move(r.reason);
    resp.headers = std::move(r.headers);
    resp.body = std::move(r.body);
    const auto asked = find_header(req.headers, "Connection");
    if (!r.keep_alive || (asked && wire::has_token(*asked, "close"))) close();
    return true;
  }
}

http_response http_connection::read_response(const std::string& method) {
  error_.clear();
  http_request req;
  req.method = method;
  http_response resp;
  if (fd_ < 0) {
    resp.error = "not connected";
    return resp;
  }
  if (!read_response(req, steady::now() + timeout_, resp)) {
    http_response failed;
    failed.error = error_;
    return failed;
  }
  return resp;
}

http_response http_connection::request(const http_request& req) {
  error_.clear();
  const auto deadline = steady::now() + timeout_;
  auto failed = [this] {
    http_response r;
    r.error = error_;
    return r;
  };
  // Only a close that is visible before sending is healed; once bytes are out, a lost
  // connection is reported, since silently resending could hide server bugs.
  if (peer_closed_idle()) close();
  if (!connect_until(deadline)) return failed();

  std::string wire = req.method + " " + req.target + " HTTP/1.1\r\n";
  bool has_host = false, has_connection = false, has_length = false;
  for (const auto& [key, value] : req.headers) {
    wire += key + ": " + value + "\r\n";
    has_host = has_host || wire::iequals(key, "Host");
    has_connection = has_connection || wire::iequals(key, "Connection");
    has_length = has_length || wire::iequals(key, "Content-Length") ||
                 wire::iequals(key, "Transfer-Encoding");
  }
  if (!has_host) wire += "Host: 127.0.0.1\r\n";
  if (!has_connection) wire += "Connection: keep-alive\r\n";
  bool body_method = req.method == "POST" || req.method == "PUT" || req.method == "PATCH";
  if (!has_length && (body_method || !req.body.empty()))
    wire += "Content-Length: " + std::to_string(req.body.size()) + "\r\n";
  wire += "\r\n";
  wire += req.body;

  http_response resp;
  if (!send_all(wire, deadline)) {
    // A server may reject early and close before reading everything; its answer is still useful.
    std::string send_error = error_;
    if (is_open() && read_response(req, deadline, resp)) {
      close();
      error_.clear();
      return resp;
    }
    fail(send_error);
    return failed();
  }
  if (!read_response(req, deadline, resp)) return failed();
  return resp;
}

void http_connection::send_raw(std::string_view bytes) {
  error_.clear();
  const auto deadline = steady::now() + timeout_;
  if (connect_until(deadline) && !send_all(bytes, deadline)) fail(error_);
}

http_response http_get(uint16_t port, std::string target, header_list headers,
                       std::chrono::milliseconds timeout) {
  http_connection conn(port, timeout);
  http_request req;
  req.target = std::move(target);
  req.headers = std::move(headers);
  return conn.request(req);
}

}  // namespace qos::test

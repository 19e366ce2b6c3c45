#include "support/http_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

namespace qos::test {
namespace {

using steady = std::chrono::steady_clock;

// A broken server must fail the test, not exhaust the test runner's memory.
constexpr std::size_t max_buffered_bytes = std::size_t{64} << 20;

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Connection and Transfer-Encoding are comma-separated token lists, e.g. "keep-alive, Upgrade".
bool has_token(const std::optional<std::string>& value, std::string_view token) {
  if (!value) return false;
  std::string_view rest = *value;
  while (!rest.empty()) {
    auto comma = rest.find(',');
    if (iequals(trim(rest.substr(0, comma)), token)) return true;
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
  }
  return false;
}

std::optional<std::string> find_header(const header_list& headers, std::string_view name) {
  for (const auto& [key, value] : headers)
    if (iequals(key, name)) return value;
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
      buffer_(std::move(other.buffer_)) {}

http_connection& http_connection::operator=(http_connection&& other) noexcept {
  if (this != &other) {
    close();
    port_ = other.port_;
    timeout_ = other.timeout_;
    fd_ = std::exchange(other.fd_, -1);
    error_ = std::move(other.error_);
    buffer_ = std::move(other.buffer_);
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
  buffer_.clear();
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
  buffer_.clear();
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
  if (fd_ < 0 || !buffer_.empty()) return false;
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

int http_connection::read_some(deadline_t deadline) {
  char chunk[16384];
  for (;;) {
    if (!wait_for(POLLIN, deadline)) return -1;
    ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n > 0) {
      if (buffer_.size() + static_cast<std::size_t>(n) > max_buffered_bytes) {
        fail("response too large");
        return -1;
      }
      buffer_.append(chunk, static_cast<std::size_t>(n));
      return static_cast<int>(n);
    }
    if (n == 0) return 0;
    if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
      fail(errno_message("recv", errno));
      return -1;
    }
  }
}

bool http_connection::read_until(std::string_view delim, deadline_t deadline, std::size_t& pos) {
  std::size_t from = 0;
  while ((pos = buffer_.find(delim, from)) == std::string::npos) {
    from = buffer_.size() >= delim.size() ? buffer_.size() - delim.size() + 1 : 0;
    int n = read_some(deadline);
    if (n == 0) return fail("connection closed by peer before the response was complete");
    if (n < 0) return false;
  }
  return true;
}

bool http_connection::read_exact(std::size_t n, deadline_t deadline, std::string& out) {
  while (buffer_.size() < n) {
    int r = read_some(deadline);
    if (r == 0) return fail("connection closed by peer before the response was complete");
    if (r < 0) return false;
  }
  out.append(buffer_, 0, n);
  buffer_.erase(0, n);
  return true;
}

bool http_connection::read_chunked(deadline_t deadline, std::string& out) {
  for (;;) {
    std::size_t pos = 0;
    if (!read_until("\r\n", deadline, pos)) return false;
    std::string_view line(buffer_.data(), pos);
    line = trim(line.substr(0, line.find(';')));  // chunk extensions carry nothing we need
    std::size_t size = 0;
    auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), size, 16);
    if (ec != std::errc{} || end != line.data() + line.size() || line.empty())
      return fail("malformed chunk size");
    buffer_.erase(0, pos + 2);
    if (size == 0) break;
    if (size > max_buffered_bytes) return fail("response too large");
    std::string crlf;
    if (!read_exact(size, deadline, out) || !read_exact(2, deadline, crlf)) return false;
    if (crlf != "\r\n") return fail("malformed chunk terminator");
  }
  // Trailer fields are consumed so the next keep-alive response starts at the right byte.
  for (;;) {
    std::size_t pos = 0;
    if (!read_until("\r\n", deadline, pos)) return false;
    buffer_.erase(0, pos + 2);
    if (pos == 0) return true;
  }
}

bool http_connection::read_response(const http_request& req, deadline_t deadline,
                                    http_response& resp) {
  std::string version;
  do {  // interim 1xx responses (e.g. 100 Continue) precede the real one
    resp = http_response{};
    std::size_t end = 0;
    if (!read_until("\r\n\r\n", deadline, end)) return false;
    std::string head = buffer_.substr(0, end);
    buffer_.erase(0, end + 4);
    head += "\r\n";
    std::string_view rest = head;
    auto eol = rest.find("\r\n");
    std::string_view status_line = rest.substr(0, eol);
    rest.remove_prefix(eol + 2);
    if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." || status_line[8] != ' ' ||
        (status_line.size() > 12 && status_line[12] != ' '))
      return fail("malformed status line: " + std::string(status_line));
    version = status_line.substr(0, 8);
    auto [ptr, ec] = std::from_chars(status_line.data() + 9, status_line.data() + 12, resp.status);
    if (ec != std::errc{} || ptr != status_line.data() + 12 || resp.status < 100)
      return fail("malformed status line: " + std::string(status_line));
    if (status_line.size() > 13) resp.reason = status_line.substr(13);
    while (!rest.empty()) {
      eol = rest.find("\r\n");
      std::string_view line = rest.substr(0, eol);
      rest.remove_prefix(eol + 2);
      auto colon = line.find(':');
      if (colon == std::string_view::npos || colon == 0)
        return fail("malformed header line: " + std::string(line));
      resp.headers.emplace_back(line.substr(0, colon), trim(line.substr(colon + 1)));
    }
  } while (resp.status < 200 && resp.status != 101);

  bool until_close = false;
  if (iequals(req.method, "HEAD") || resp.status < 200 || resp.status == 204 ||
      resp.status == 304) {
    // No body by definition, whatever the length headers say.
  } else if (has_token(resp.header("Transfer-Encoding"), "chunked")) {
    if (!read_chunked(deadline, resp.body)) return false;
  } else if (auto length = resp.header("Content-Length")) {
    std::size_t n = 0;
    auto [ptr, ec] = std::from_chars(length->data(), length->data() + length->size(), n);
    if (ec != std::errc{} || ptr != length->data() + length->size() || length->empty())
      return fail("malformed Content-Length: " + *length);
    if (n > max_buffered_bytes) return fail("response too large");
    if (!read_exact(n, deadline, resp.body)) return false;
  } else {
    until_close = true;
    int n = 0;
    while ((n = read_some(deadline)) > 0) {
    }
    if (n < 0) return false;
    resp.body = std::move(buffer_);
  }

  auto conn = resp.header("Connection");
  bool closing = until_close || resp.status == 101 || has_token(conn, "close") ||
                 has_token(find_header(req.headers, "Connection"), "close") ||
                 (version == "HTTP/1.0" && !has_token(conn, "keep-alive"));
  if (closing) close();
  return true;
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
    has_host = has_host || iequals(key, "Host");
    has_connection = has_connection || iequals(key, "Connection");
    has_length = has_length || iequals(key, "Content-Length") || iequals(key, "Transfer-Encoding");
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

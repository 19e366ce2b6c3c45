// Blocking HTTP/1.1 client for integration tests, over raw POSIX sockets. It talks only to
// 127.0.0.1 so a test can never reach out of the machine, and every blocking step is bounded by a
// poll() deadline so a misbehaving server fails a test instead of hanging it.
// Thread-safety: an http_connection is not thread-safe; use one per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "support/wire/http_response_parser.hpp"

namespace qos::test {

using header_list = std::vector<std::pair<std::string, std::string>>;

struct http_response {
  int status = 0;  // 0 if no response (error/timeout)
  std::string reason;
  header_list headers;  // in wire order
  std::string body;
  std::string error;  // non-empty when the request failed (connect, timeout, closed)

  std::optional<std::string> header(std::string_view name) const;  // case-insensitive, first match
  bool ok() const { return error.empty() && status != 0; }
};

struct http_request {
  std::string method = "GET";
  std::string target = "/";
  header_list headers;
  std::string body;
};

// One keep-alive TCP connection to 127.0.0.1:port.
class http_connection {
 public:
  explicit http_connection(uint16_t port,
                           std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~http_connection();
  http_connection(http_connection&& other) noexcept;
  http_connection& operator=(http_connection&& other) noexcept;
  http_connection(const http_connection&) = delete;
  http_connection& operator=(const http_connection&) = delete;

  // Returns false on failure; error() says why. A no-op when already open.
  bool connect();
  // Connects lazily (and reconnects if the server already closed an idle keep-alive connection
  // before anything was sent). Adds "Host: 127.0.0.1", "Connection: keep-alive" and, when there is
  // a body or the method usually carries one, "Content-Length" unless the caller gave them. The
  // timeout bounds the whole exchange. The connection is closed after a failure, after a
  // "Connection: close" exchange and after a body delimited by end of stream.
  http_response request(const http_request& req);
  // Reads one response to a request sent with send_raw (`method` tells whether a body follows).
  http_response read_response(const std::string& method = "GET");
  // Sends bytes as-is (connecting lazily) without reading anything; error() reports a failure.
  void send_raw(std::string_view bytes);
  // Abrupt close; with reset the kernel sends RST (SO_LINGER 0) instead of FIN.
  void close(bool reset = false);
  bool is_open() const { return fd_ >= 0; }
  const std::string& error() const { return error_; }

 private:
  using deadline_t = std::chrono::steady_clock::time_point;

  bool connect_until(deadline_t deadline);
  bool peer_closed_idle();
  bool wait_for(short events, deadline_t deadline);
  bool send_all(std::string_view bytes, deadline_t deadline);
  bool read_more(deadline_t deadline);
  bool read_response(const http_request& req, deadline_t deadline, http_response& resp);
  bool fail(std::string why);

  uint16_t port_;
  std::chrono::milliseconds timeout_;
  int fd_ = -1;
  std::string error_;
  // Received bytes not yet returned as a response; they survive across keep-alive requests.
  wire::http_response_parser parser_;
};

// One-shot convenience: new connection, one request, close.
http_response http_get(uint16_t port, std::string target, header_list headers = {},
                       std::chrono::milliseconds timeout = std::chrono::seconds(10));

}  // namespace qos::test

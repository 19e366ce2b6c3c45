// Self-test of the integration-test HTTP client against scripted raw-socket servers, so the client
// is trusted before it is used to judge the real server.
#include "support/http_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace qos::test {
namespace {

using namespace std::chrono_literals;

// Listens on 127.0.0.1 and runs `handler` for each of up to `connections` accepted connections,
// one after another. Every server-side wait is bounded so a broken client cannot hang the suite.
class test_server {
 public:
  explicit test_server(std::function<void(int)> handler, int connections = 1, int backlog = 16)
      : handler_(std::move(handler)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        ::listen(listen_fd_, backlog) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "test_server: cannot listen";
      return;
    }
    port_ = ntohs(addr.sin_port);
    if (connections > 0) thread_ = std::thread([this, connections] { run(connections); });
  }
  ~test_server() {
    stop_ = true;
    wait();
    ::close(listen_fd_);
  }
  uint16_t port() const { return port_; }
  // Joins the server thread; afterwards everything the handlers captured is safe to read.
  void wait() {
    if (thread_.joinable()) thread_.join();
  }
  int accepted() const { return accepted_; }

 private:
  void run(int connections) {
    auto give_up = std::chrono::steady_clock::now() + 10s;
    while (accepted_ < connections && !stop_ && std::chrono::steady_clock::now() < give_up) {
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (::poll(&pfd, 1, 20) <= 0) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      ++accepted_;
      timeval tv{10, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      handler_(fd);
      ::close(fd);
    }
  }

  std::function<void(int)> handler_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

// Reads one request (head plus Content-Length body); empty on EOF or error.
std::string read_request(int fd) {
  std::string data;
  char buf[4096];
  std::size_t head_end;
  while ((head_end = data.find("\r\n\r\n")) == std::string::npos) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return {};
    data.append(buf, static_cast<std::size_t>(n));
  }
  std::size_t body = 0;
  if (auto pos = data.find("Content-Length: "); pos != std::string::npos && pos < head_end)
    body = std::stoul(data.substr(pos + 16));
  while (data.size() < head_end + 4 + body) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return {};
    data.append(buf, static_cast<std::size_t>(n));
  }
  return data;
}

void write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Waits for the client to close, so the server never closes first unless a test says so.
void drain_until_eof(int fd) {
  char buf[4096];
  while (::recv(fd, buf, sizeof buf, 0) > 0) {
  }
}

// Sends in small pieces with pauses so the client sees partial reads mid-line.
void write_fragmented(int fd, std::string_view bytes, std::size_t piece) {
  for (std::size_t i = 0; i < bytes.size(); i += piece) {
    write_all(fd, bytes.substr(i, piece));
    std::this_thread::sleep_for(1ms);
  }
}

TEST(HttpClient, ParsesContentLengthResponseAndSendsDefaultHeaders) {
  std::string seen;
  test_server server([&](int fd) {
    seen = read_request(fd);
    write_all(fd,
              "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-First: 1\r\nX-Second:  two \r\n\r\nhello");
    drain_until_eof(fd);
  });
  http_response r = http_get(server.port(), "/path?q=1", {{"X-Req", "v"}});
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.reason, "OK");
  EXPECT_EQ(r.body, "hello");
  ASSERT_EQ(r.headers.size(), 3u);
  EXPECT_EQ(r.headers[1], (std::pair<std::string, std::string>{"X-First", "1"}));
  EXPECT_EQ(r.headers[2].second, "two");
  server.wait();
  EXPECT_EQ(seen.rfind("GET /path?q=1 HTTP/1.1\r\n", 0), 0u) << seen;
  EXPECT_NE(seen.find("\r\nX-Req: v\r\n"), std::string::npos) << seen;
  EXPECT_NE(seen.find("\r\nHost: 127.0.0.1\r\n"), std::string::npos) << seen;
  EXPECT_NE(seen.find("\r\nConnection: keep-alive\r\n"), std::string::npos) << seen;
}

TEST(HttpClient, KeepAliveReusesOneConnectionAcrossRequestsAndMoves) {
  std::vector<std::string> seen;
  test_server server([&](int fd) {
    seen.push_back(read_request(fd));
    write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none");
    seen.push_back(read_request(fd));
    write_fragmented(fd, "HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\ntwo", 3);
    drain_until_eof(fd);
  });
  http_connection first(server.port());
  http_response r1 = first.request({});
  ASSERT_TRUE(r1.ok()) << r1.error;
  EXPECT_EQ(r1.body, "one");
  EXPECT_TRUE(first.is_open());

  http_connection conn = std::move(first);
  EXPECT_FALSE(first.is_open());
  http_request req;
  req.target = "/two";
  http_response r2 = conn.request(req);
  ASSERT_TRUE(r2.ok()) << r2.error;
  EXPECT_EQ(r2.status, 201);
  EXPECT_EQ(r2.reason, "Created");
  EXPECT_EQ(r2.body, "two");
  EXPECT_TRUE(conn.is_open());
  conn.close();
  server.wait();
  EXPECT_EQ(server.accepted(), 1);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].rfind("GET /two HTTP/1.1\r\n", 0), 0u) << seen[1];
}

TEST(HttpClient, HeaderLookupIsCaseInsensitiveFirstMatch) {
  test_server server([](int fd) {
    read_request(fd);
    write_all(fd,
              "HTTP/1.1 200 OK\r\ncontent-TYPE: text/plain\r\nX-Dup: a\r\nx-dup: b\r\n"
              "Content-Length: 0\r\n\r\n");
    drain_until_eof(fd);
  });
  http_response r = http_get(server.port(), "/");
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(r.header("Content-Type"), "text/plain");
  EXPECT_EQ(r.header("CONTENT-TYPE"), "text/plain");
  EXPECT_EQ(r.header("X-DUP"), "a");
  EXPECT_EQ(r.header("X-Missing"), std::nullopt);
  EXPECT_TRUE(r.body.empty());
}

TEST(HttpClient, DecodesChunkedBodyAndKeepsFramingForNextRequest) {
  test_server server([](int fd) {
    read_request(fd);
    write_fragmented(
        fd,
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        "4\r\nWiki\r\n5;ext=1\r\npedia\r\nA\r\n in chunks\r\n0\r\nX-Trailer: t\r\n\r\n",
        7);
    read_request(fd);
    write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext");
    drain_until_eof(fd);
  });
  http_connection conn(server.port());
  http_response r1 = conn.request({});
  ASSERT_TRUE(r1.ok()) << r1.error;
  EXPECT_EQ(r1.body, "Wikipedia in chunks");
  http_response r2 = conn.request({});
  ASSERT_TRUE(r2.ok()) << r2.error;
  EXPECT_EQ(r2.body, "next");
  conn.close();
  server.wait();
  EXPECT_EQ(server.accepted(), 1);
}

TEST(HttpClient, NoBodyForHeadAnd204) {
  test_server server([](int fd) {
    read_request(fd);
    write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    read_request(fd);
    write_all(fd, "HTTP/1.1 204 No Content\r\n\r\n");
    read_request(fd);
    write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    drain_until_eof(fd);
  });
  http_connection conn(server.port());
  http_request head;
  head.method = "HEAD";
  http_response r1 = conn.request(head);
  ASSERT_TRUE(r1.ok()) << r1.error;
  EXPECT_EQ(r1.header("Content-Length"), "5");
  EXPECT_TRUE(r1.body.empty());
  http_response r2 = conn.request({});
  ASSERT_TRUE(r2.ok()) << r2.error;
  EXPECT_EQ(r2.status, 204);
  http_response r3 = conn.request({});
  ASSERT_TRUE(r3.ok()) << r3.error;
  EXPECT_EQ(r3.body, "ok");
}

TEST(HttpClient, PostSendsContentLengthAndSkipsInterimResponse) {
  std::string seen;
  test_server server([&](int fd) {
    seen = read_request(fd);
    write_all(fd, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    drain_until_eof(fd);
  });
  http_connection conn(server.port());
  http_request req;
  req.method = "POST";
  req.body = "abc";
  http_response r = conn.request(req);
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(r.status, 201);
  conn.close();
  server.wait();
  EXPECT_NE(seen.find("\r\nContent-Length: 3\r\n\r\nabc"), std::string::npos) << seen;
}

TEST(HttpClient, ConnectionCloseResponseClosesAndNextRequestReconnects) {
  test_server server(
      [](int fd) {
        read_request(fd);
        write_all(fd,
                  "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                  "Content-Length: 4\r\n\r\nbusy");
      },
      2);
  http_connection conn(server.port());
  http_response r1 = conn.request({});
  ASSERT_TRUE(r1.ok()) << r1.error;
  EXPECT_EQ(r1.status, 503);
  EXPECT_EQ(r1.body, "busy");
  EXPECT_FALSE(conn.is_open());
  http_response r2 = conn.request({});
  ASSERT_TRUE(r2.ok()) << r2.error;
  EXPECT_EQ(r2.body, "busy");
  server.wait();
  EXPECT_EQ(server.accepted(), 2);
}

TEST(HttpClient, BodyWithoutLengthRunsUntilClose) {
  test_server server([](int fd) {
    read_request(fd);
    write_fragmented(fd, "HTTP/1.1 200 OK\r\n\r\nstreamed body", 5);
  });
  http_connection conn(server.port());
  http_response r = conn.request({});
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(r.body, "streamed body");
  EXPECT_FALSE(conn.is_open());
}

TEST(HttpClient, PeerClosingMidBodyIsAnError) {
  test_server server([](int fd) {
    read_request(fd);
    write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
  });
  http_connection conn(server.port());
  http_response r = conn.request({});
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.error.find("closed"), std::string::npos) << r.error;
  EXPECT_EQ(conn.error(), r.error);
  EXPECT_FALSE(conn.is_open());
}

TEST(HttpClient, ConnectRefusedFails) {
  // Bound but not listening: the port stays ours, and connecting to it is refused.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  http_connection conn(ntohs(addr.sin_port));
  EXPECT_FALSE(conn.connect());
  EXPECT_NE(conn.error().find("connect"), std::string::npos) << conn.error();
  EXPECT_FALSE(conn.is_open());
  http_response r = http_get(ntohs(addr.sin_port), "/");
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status, 0);
  EXPECT_FALSE(r.error.empty());
  ::close(fd);
}

TEST(HttpClient, ConnectTimesOutWhenAcceptQueueIsFull) {
  // Linux drops SYNs while a listener's accept queue is full, so a connect stays pending.
  test_server server([](int) {}, 0, 0);
  std::vector<http_connection> held;
  std::string error;
  for (int i = 0; i < 16 && error.empty(); ++i) {
    http_connection conn(server.port(), 200ms);
    if (!conn.connect()) error = conn.error();
    held.push_back(std::move(conn));
  }
  EXPECT_NE(error.find("timeout"), std::string::npos) << "no connect timed out: " << error;
}

TEST(HttpClient, ResponseTimeoutWhenServerStalls) {
  test_server server(
      [](int fd) {
        read_request(fd);
        if (read_request(fd).empty()) return;  // first client: no answer at all
        write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        drain_until_eof(fd);
      },
      2);
  http_connection silent(server.port(), 200ms);
  http_response r1 = silent.request({});
  EXPECT_EQ(r1.status, 0);
  EXPECT_NE(r1.error.find("timeout"), std::string::npos) << r1.error;
  EXPECT_FALSE(silent.is_open());

  // Second connection: the server reads two requests, then stalls mid-body.
  http_connection partial(server.port(), 200ms);
  partial.send_raw("GET /warmup HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  http_response r2 = partial.request({});
  EXPECT_EQ(r2.status, 0);
  EXPECT_NE(r2.error.find("timeout"), std::string::npos) << r2.error;
  EXPECT_FALSE(partial.is_open());
}

TEST(HttpClient, SendRawThenResetLeavesRequestWithServer) {
  std::string seen;
  test_server server([&](int fd) {
    seen = read_request(fd);
    drain_until_eof(fd);
  });
  http_connection conn(server.port());
  conn.send_raw("GET /gone HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  EXPECT_TRUE(conn.error().empty()) << conn.error();
  EXPECT_TRUE(conn.is_open());
  conn.close(true);
  EXPECT_FALSE(conn.is_open());
  server.wait();
  EXPECT_EQ(seen.rfind("GET /gone HTTP/1.1\r\n", 0), 0u) << seen;
}

}  // namespace
}  // namespace qos::test

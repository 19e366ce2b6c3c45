// loadgen: the closed-loop HTTP/1.1 load client of the qos benchmarks (bench/run.sh).
//
// Why not only wrk: wrk's latency histogram mixes 2xx and 503 answers, its Lua hooks cannot
// see per-request latency, and it does not count requests that never get an answer. This client
// keeps C keep-alive connections busy (each sends its next request when the previous answer
// arrived), records the latency of every answer by status class, and accounts for every request
// it wrote: answered, timed out (closed after --timeout), failed (connection error) or still
// unanswered when it stops.
//
// Timeline: connect and load for -d seconds (the window; rates use answers completed in it),
// then stop sending and wait up to --drain seconds for the requests still out (their answers
// count in the latency and status figures, not in the rates), then close everything.
// ok_rps counts the 2xx completed in the whole window; ok_rps_steady only those completed after
// --skip seconds (default min(1 s, d/4)), leaving out the start-up (connects, first service).
// The oks_* and s503s_* latencies leave out the first request of every socket and everything sent
// before --skip: a flash crowd of new connections overflows the listen backlog, and the kernel's
// SYN/data retransmissions (1 s, 200 ms) then show in the latency of the first requests on those
// connections, not in the server's own timing.
// --ramp S opens connection i at i/C * S seconds instead of all at once (first requests spread
// over S, as independent clients would arrive; closed-loop clients that start together stay in
// synchronised waves).
// Latency = from the first byte of the request written to the last byte of the answer read
// (like wrk; time spent connecting is not included). The s503sx class is the same 503s measured
// to the kernel's receive timestamp of the answer's last segment (SO_TIMESTAMPNS; on loopback
// taken as the server's send passes it to the receiving socket): without the time this client
// takes to come round to reading it, which on a machine whose cores it shares with the server
// is part of the first figure.
//
// Requests are GET without a body unless --method / --body / --body-size say otherwise (a body
// gets Content-Length and --content-type, application/json by default). --unique-idempotency-key
// adds "Idempotency-Key: lg-<nonce>-<thread>-<n>", a new key on every request (the nonce is drawn
// per run, so a second run does not replay the first one's keys). 201 and 202 are counted apart
// (s201, s202) besides s2xx: an accept route answers 202, its synchronous twin 201.
//
// Only 127.0.0.1 / localhost targets are accepted. Every loop is bounded by the clock.
//
// Output: one line "LOADGEN key=value ..." on stdout (run.sh parses it), a short human summary
// on stderr, and with --cdf FILE the latency quantiles per status class.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/wire/http_response_parser.hpp"

namespace {

namespace wire = qos::wire;
using steady = std::chrono::steady_clock;

std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(steady::now().time_since_epoch())
      .count();
}

std::int64_t us_of(const timespec& ts) {
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

// Kernel receive timestamps are CLOCK_REALTIME; latencies are on the steady clock. The offset is
// taken again at every turn of a thread's loop, so a slewed or stepped wall clock moves no
// latency by more than one turn's worth.
std::int64_t realtime_minus_steady_us() {
  timespec rt{}, mono{};
  clock_gettime(CLOCK_REALTIME, &rt);
  clock_gettime(CLOCK_MONOTONIC, &mono);
  return us_of(rt) - us_of(mono);
}

struct options {
  std::string url;
  std::string host = "127.0.0.1";
  int port = 0;
  std::string path = "/";
  int conns = 10;
  int threads = 1;
  double duration_s = 10;
  double timeout_s = 10;
  double drain_s = 2.5;
  double skip_s = -1;     // steady-state rate ignores answers before this; -1: min(1, d/4)
  int reqs_per_conn = 0;  // 0: unlimited; 1: one request, then hold the connection idle
  double ramp_s = 0;      // open connection i at i/C * ramp_s instead of all at once
  std::vector<std::string> headers;
  std::string method = "GET";
  std::string body;
  bool has_body = false;  // --body or --body-size given (an empty body still gets a length)
  std::string content_type = "application/json";
  bool unique_idempotency_key = false;
  std::vector<int> pids;
  std::string cdf_file;
  std::string raw_file;  // every answer: "sent_ms latency_ms status" (sent_ms from the start)
  std::string label;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(
      stderr,
      "loadgen: %s\n"
      "usage: loadgen --url http://127.0.0.1:PORT/PATH [-c CONNS] [-t THREADS] "
      "[-d SECONDS]\n"
      "               [--timeout S] [--drain S] [--reqs-per-conn K] [-H 'Name: value']...\n"
      "               [--method M] [--body TEXT | --body-size BYTES] [--content-type T]\n"
      "               [--unique-idempotency-key]\n"
      "               [--pid PID]... [--cdf FILE] [--raw FILE] [--label TEXT]\n",
      why);
  std::exit(2);
}

// --url http://HOST:PORT/PATH with HOST 127.0.0.1 or localhost only: sets port and path.
void parse_url(options& o) {
  const std::string scheme = "http://";
  if (o.url.rfind(scheme, 0) != 0) usage("--url must start with http://");
  std::string rest = o.url.substr(scheme.size());
  const auto slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  o.path = slash == std::string::npos ? "/" : rest.substr(slash);
  const auto colon = hostport.rfind(':');
  if (colon == std::string::npos) usage("--url needs an explicit port");
  const std::string host = hostport.substr(0, colon);
  if (host != "127.0.0.1" && host != "localhost") usage("only 127.0.0.1/localhost targets");
  o.port = std::stoi(hostport.substr(colon + 1));
  if (o.port <= 0 || o.port > 65535) usage("bad port");
}

// --body-size N: a JSON object of exactly N bytes (N >= 10), {"pad":"xxx...x"}.
std::string padded_json_body(long n) {
  const std::string open = "{\"pad\":\"", close = "\"}";
  if (n < static_cast<long>(open.size() + close.size()) || n > (64L << 20)) {
    usage("--body-size out of range [10, 64 MiB]");
  }
  return open + std::string(static_cast<std::size_t>(n) - open.size() - close.size(), 'x') + close;
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage((a + " needs a value").c_str());
      return argv[++i];
    };
    if (a == "--url")
      o.url = val();
    else if (a == "-c")
      o.conns = std::stoi(val());
    else if (a == "-t")
      o.threads = std::stoi(val());
    else if (a == "-d")
      o.duration_s = std::stod(val());
    else if (a == "--timeout")
      o.timeout_s = std::stod(val());
    else if (a == "--drain")
      o.drain_s = std::stod(val());
    else if (a == "--skip")
      o.skip_s = std::stod(val());
    else if (a == "--reqs-per-conn")
      o.reqs_per_conn = std::stoi(val());
    else if (a == "--ramp")
      o.ramp_s = std::stod(val());
    else if (a == "-H")
      o.headers.push_back(val());
    else if (a == "--method")
      o.method = val();
    else if (a == "--body") {
      o.body = val();
      o.has_body = true;
    } else if (a == "--body-size") {
      o.body = padded_json_body(std::stol(val()));
      o.has_body = true;
    } else if (a == "--content-type")
      o.content_type = val();
    else if (a == "--unique-idempotency-key")
      o.unique_idempotency_key = true;
    else if (a == "--pid")
      o.pids.push_back(std::stoi(val()));
    else if (a == "--cdf")
      o.cdf_file = val();
    else if (a == "--raw")
      o.raw_file = val();
    else if (a == "--label")
      o.label = val();
    else
      usage(("unknown argument " + a).c_str());
  }
  parse_url(o);
  if (o.conns < 1 || o.conns > 100000) usage("-c out of range");
  if (o.threads < 1) o.threads = 1;
  if (o.threads > o.conns) o.threads = o.conns;
  if (o.duration_s <= 0 || o.duration_s > 3600) usage("-d out of range (0, 3600]");
  if (o.timeout_s <= 0 || o.timeout_s > 3600) usage("--timeout out of range");
  if (o.drain_s < 0 || o.drain_s > 600) usage("--drain out of range");
  if (o.ramp_s < 0 || o.ramp_s >= o.duration_s) usage("--ramp out of range [0, -d)");
  if (o.skip_s < 0) o.skip_s = std::min(1.0, o.duration_s / 4);
  if (o.skip_s >= o.duration_s) usage("--skip must be shorter than -d");
  if (o.method.empty() ||
      o.method.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ") != std::string::npos) {
    usage("--method: an upper-case token such as GET or POST");
  }
  return o;
}

// Counters and latencies of one thread (merged at the end; no sharing while running).
struct stats {
  std::uint64_t sent = 0, answered = 0, answered_in_window = 0;
  std::uint64_t s2xx = 0, s503 = 0, s5xx_other = 0, s4xx = 0, s_other = 0;
  std::uint64_t s201 = 0, s202 = 0, s429 = 0;  // also counted in s2xx / s4xx
  std::uint64_t ok_in_window = 0, s503_in_window = 0;
  std::uint64_t ok_steady = 0;        // 2xx completed in [start + skip, window end]
  std::uint64_t timeouts = 0;         // no answer within --timeout: connection closed
  std::uint64_t err_connect = 0;      // connect failed or did not complete within --timeout
  std::uint64_t err_lost = 0;         // connection reset/closed with a request out
  std::uint64_t err_parse = 0;        // unparseable answer
  std::uint64_t unanswered = 0;       // still out at the end of the drain
  std::uint64_t reconnects = 0;       // server closed a connection (Connection: close, idle)
  std::uint64_t outcome_timeout = 0;  // X-QoS-Outcome: timeout
  std::uint64_t outcome_queue_full = 0;
  std::uint64_t outcome_other = 0;
  std::uint64_t retry_after = 0;                            // answers carrying Retry-After
  std::vector<std::uint32_t> lat2xx, lat503, latother;      // microseconds
  std::vector<std::uint32_t> lat2xx_steady, lat503_steady;  // requests sent after --skip
  std::vector<std::uint32_t> lat503_steady_rx;  // the same 503s, to their kernel receive time
  struct sample {
    std::uint32_t sent_us, lat_us;
    std::uint16_t status;
  };
  std::vector<sample> raw;  // only with --raw

  void merge(const stats& s) {
    sent += s.sent;
    answered += s.answered;
    answered_in_window += s.answered_in_window;
    s2xx += s.s2xx;
    s503 += s.s503;
    s5xx_other += s.s5xx_other;
    s4xx += s.s4xx;
    s_other += s.s_other;
    s201 += s.s201;
    s202 += s.s202;
    s429 += s.s429;
    ok_in_window += s.ok_in_window;
    s503_in_window += s.s503_in_window;
    ok_steady += s.ok_steady;
    timeouts += s.timeouts;
    err_connect += s.err_connect;
    err_lost += s.err_lost;
    err_parse += s.err_parse;
    unanswered += s.unanswered;
    reconnects += s.reconnects;
    outcome_timeout += s.outcome_timeout;
    outcome_queue_full += s.outcome_queue_full;
    outcome_other += s.outcome_other;
    retry_after += s.retry_after;
    lat2xx.insert(lat2xx.end(), s.lat2xx.begin(), s.lat2xx.end());
    lat503.insert(lat503.end(), s.lat503.begin(), s.lat503.end());
    latother.insert(latother.end(), s.latother.begin(), s.latother.end());
    lat2xx_steady.insert(lat2xx_steady.end(), s.lat2xx_steady.begin(), s.lat2xx_steady.end());
    lat503_steady.insert(lat503_steady.end(), s.lat503_steady.begin(), s.lat503_steady.end());
    lat503_steady_rx.insert(lat503_steady_rx.end(), s.lat503_steady_rx.begin(),
                            s.lat503_steady_rx.end());
    raw.insert(raw.end(), s.raw.begin(), s.raw.end());
  }
};

enum class phase : int { run = 0, drain = 1, stop = 2 };
std::atomic<int> g_phase{0};
std::atomic<int> g_open{0};                  // connections established now
std::atomic<int> g_open_max{0};              // most established at once
std::atomic<std::int64_t> g_outstanding{0};  // requests written and not yet settled
std::int64_t g_start_us = 0, g_window_end_us = 0, g_steady_start_us = 0;

void note_open(int delta) {
  const int n = g_open.fetch_add(delta, std::memory_order_relaxed) + delta;
  int seen = g_open_max.load(std::memory_order_relaxed);
  while (n > seen && !g_open_max.compare_exchange_weak(seen, n, std::memory_order_relaxed)) {
  }
}

struct conn {
  int fd = -1;
  bool connecting = false;
  bool outstanding = false;  // a request was written (in part or whole) and not answered
  bool want_write = false;   // EPOLLOUT registered
  std::size_t out_off = 0;
  std::int64_t t_sent = 0;  // first byte written
  std::int64_t t_rx = 0;    // kernel receive time of the last bytes read (steady clock; 0: none)
  std::int64_t t_connect = 0;
  std::int64_t retry_at = 0;  // reconnect not before (after a failed connect)
  int done = 0;               // answers on this logical connection (for --reqs-per-conn)
  int sock_answers = 0;       // answers on this socket (0: the request out is its first)
  std::string req;            // --unique-idempotency-key: this request's own text
  // Bodies are skipped: the benchmarks count answers, they do not read them.
  wire::http_response_parser in{wire::parser_options{.keep_body = false}};
};

// The request every connection sends: head (request line, Host, the -H headers) and tail
// (body headers, blank line, body), split so that a per-request Idempotency-Key fits between.
struct request_text {
  std::string head, tail, full;
  std::string key_prefix;  // "lg-<nonce>-" with --unique-idempotency-key
};

class worker {
 public:
  // Thread t of T: with --ramp, its j-th connection opens at (j*T + t) / C of the ramp, so the
  // threads share the ramp evenly.
  worker(const options& o, int nconns, int t, const request_text& request, sockaddr_in addr)
      : o_(o), rq_(request), addr_(addr), conns_(static_cast<std::size_t>(nconns)), thread_(t) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    timeout_us_ = static_cast<std::int64_t>(o.timeout_s * 1e6);
  }
  ~worker() {
    for (auto& c : conns_) close_conn(c);
    if (ep_ >= 0) ::close(ep_);
  }
  stats& result() { return st_; }

  void run() {
    // A ramp spreads the first requests: C clients that start in the same millisecond stay in
    // step (each sends its next request when the previous answer arrives), a synchronised wave.
    const auto ramp_us = static_cast<std::int64_t>(o_.ramp_s * 1e6);
    const std::int64_t ramp_end = g_start_us + ramp_us;
    for (std::size_t j = 0; j < conns_.size(); ++j) {
      if (ramp_us == 0) {
        open_conn(conns_[j]);
      } else {
        const auto i = static_cast<std::int64_t>(j) * o_.threads + thread_;
        conns_[j].retry_at = g_start_us + i * ramp_us / o_.conns;
      }
    }
    std::vector<epoll_event> evs(1024);
    std::int64_t last_scan = 0;
    for (;;) {
      const int ph = g_phase.load(std::memory_order_acquire);
      if (ph == static_cast<int>(phase::stop)) break;
      if (ph == static_cast<int>(phase::drain) && outstanding() == 0) {
        // nothing left to wait for; idle until the main thread stops us
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
      const bool ramping = now_us() < ramp_end;
      const int n = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), ramping ? 1 : 20);
      rt_offset_us_ = realtime_minus_steady_us();
      for (int i = 0; i < n; ++i) {
        auto& c = conns_[evs[i].data.u64];
        if (c.fd < 0) continue;
        handle(c, evs[i].events);
      }
      const auto t = now_us();
      if (t - last_scan > (ramping ? 1000 : 20000)) {
        last_scan = t;
        scan(t);
      }
    }
    // Whatever is still out has no answer.
    for (auto& c : conns_) {
      if (c.outstanding) ++st_.unanswered;
      c.outstanding = false;
    }
  }

 private:
  std::size_t outstanding() const {
    std::size_t n = 0;
    for (const auto& c : conns_) n += c.outstanding ? 1 : 0;
    return n;
  }

  void settle(conn& c) {
    c.outstanding = false;
    g_outstanding.fetch_sub(1, std::memory_order_relaxed);
  }

  bool running() const { return g_phase.load(std::memory_order_relaxed) == 0; }

  void ctl(conn& c, int op, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = static_cast<std::uint64_t>(&c - conns_.data());
    epoll_ctl(ep_, op, c.fd, &ev);
  }

  void open_conn(conn& c) {
    c = conn{};
    if (!running()) return;
    c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      ++st_.err_connect;
      c.retry_at = now_us() + 100000;
      return;
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c.fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    c.t_connect = now_us();
    const int r = ::connect(c.fd, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_);
    if (r == 0) {
      note_open(1);
      ctl(c, EPOLL_CTL_ADD, EPOLLIN | EPOLLRDHUP);
      start_request(c);
    } else if (errno == EINPROGRESS) {
      c.connecting = true;
      c.want_write = true;
      ctl(c, EPOLL_CTL_ADD, EPOLLOUT | EPOLLIN | EPOLLRDHUP);
    } else {
      ++st_.err_connect;
      ::close(c.fd);
      c.fd = -1;
      c.retry_at = now_us() + 100000;
    }
  }

  void close_conn(conn& c) {
    if (c.fd >= 0) {
      if (!c.connecting) note_open(-1);
      ::close(c.fd);
    }
    c.fd = -1;
    c.connecting = false;
  }

  void reopen(conn& c) {
    close_conn(c);
    open_conn(c);
  }

  void start_request(conn& c) {
    if (!running()) return;
    if (o_.reqs_per_conn > 0 && c.done >= o_.reqs_per_conn) return;  // hold it idle
    c.out_off = 0;
    c.outstanding = true;
    g_outstanding.fetch_add(1, std::memory_order_relaxed);
    if (o_.unique_idempotency_key) {
      c.req = rq_.head;
      c.req += "Idempotency-Key: " + rq_.key_prefix + std::to_string(thread_) + "-" +
               std::to_string(++keys_) + "\r\n";
      c.req += rq_.tail;
    }
    c.t_sent = now_us();
    ++st_.sent;
    write_some(c);
  }

  const std::string& request_of(const conn& c) const {
    return o_.unique_idempotency_key ? c.req : rq_.full;
  }

  void write_some(conn& c) {
    const std::string& request = request_of(c);
    while (c.out_off < request.size()) {
      const ssize_t w =
          ::send(c.fd, request.data() + c.out_off, request.size() - c.out_off, MSG_NOSIGNAL);
      if (w > 0) {
        c.out_off += static_cast<std::size_t>(w);
      } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!c.want_write) {
          c.want_write = true;
          ctl(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
        }
        return;
      } else {
        lost(c);
        return;
      }
    }
    if (c.want_write) {
      c.want_write = false;
      ctl(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP);
    }
  }

  // The connection failed with a request out: that request is lost.
  void lost(conn& c) {
    if (c.outstanding) {
      ++st_.err_lost;
      settle(c);
    }
    reopen(c);
  }

  void handle(conn& c, std::uint32_t events) {
    if (c.connecting) {
      if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
          ++st_.err_connect;
          ::close(c.fd);
          c.fd = -1;
          c.connecting = false;
          c.retry_at = now_us() + 100000;
          return;
        }
        c.connecting = false;
        c.want_write = false;
        note_open(1);
        ctl(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP);
        start_request(c);
      }
      return;
    }
    if ((events & EPOLLOUT) && c.outstanding && c.out_off < request_of(c).size()) write_some(c);
    if (c.fd < 0) return;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_some(c);
  }

  void read_some(conn& c) {
    char buf[16384];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(timespec))];
    for (int rounds = 0; rounds < 64; ++rounds) {
      iovec iov{buf, sizeof buf};
      msghdr m{};
      m.msg_iov = &iov;
      m.msg_iovlen = 1;
      m.msg_control = control;
      m.msg_controllen = sizeof control;
      const ssize_t r = ::recvmsg(c.fd, &m, 0);
      if (r > 0) {
        c.t_rx = 0;
        for (cmsghdr* h = CMSG_FIRSTHDR(&m); h != nullptr; h = CMSG_NXTHDR(&m, h)) {
          if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_TIMESTAMPNS) {
            timespec ts{};
            std::memcpy(&ts, CMSG_DATA(h), sizeof ts);
            c.t_rx = us_of(ts) - rt_offset_us_;
          }
        }
        c.in.feed(std::string_view(buf, static_cast<std::size_t>(r)));
        if (!consume(c)) return;
        if (static_cast<std::size_t>(r) < sizeof buf) return;
        continue;
      }
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      // End of stream or error: it completes an answer whose body runs to the end of stream.
      if (c.outstanding && c.in.mid_response()) {
        c.in.feed_eof();
        if (c.in.next() == wire::parse_result::complete) {
          record(c, c.in.response());
          settle(c);
        }
      }
      if (c.outstanding) {
        lost(c);
      } else {
        ++st_.reconnects;
        reopen(c);
        if (c.fd >= 0) start_request(c);
      }
      return;
    }
  }

  // Takes the complete answers out of c.in. Returns false if the connection was replaced.
  bool consume(conn& c) {
    for (;;) {
      const auto r = c.in.next();
      if (r == wire::parse_result::incomplete || r == wire::parse_result::closed) return true;
      if (r == wire::parse_result::error || !c.outstanding) {
        ++st_.err_parse;
        lost(c);
        if (c.fd >= 0) start_request(c);
        return false;
      }
      const bool close = !c.in.response().keep_alive;
      record(c, c.in.response());
      settle(c);
      ++c.done;
      if (close) {
        ++st_.reconnects;
        const int done = c.done;
        reopen(c);
        c.done = done;
        if (c.fd >= 0 && !c.connecting) start_request(c);
        return false;
      }
      start_request(c);
      if (c.fd < 0) return false;
    }
  }

  void record(conn& c, const wire::parsed_response& p) {
    const auto t = now_us();
    const auto lat = static_cast<std::uint32_t>(std::min<std::int64_t>(t - c.t_sent, UINT32_MAX));
    const bool in_window = t <= g_window_end_us;
    // "steady": not the first request of its socket (connection set-up is not in it) and sent
    // after --skip
    const bool steady = c.sock_answers > 0 && c.t_sent >= g_steady_start_us;
    ++c.sock_answers;
    ++st_.answered;
    if (in_window) ++st_.answered_in_window;
    if (p.status >= 200 && p.status < 300) {
      ++st_.s2xx;
      if (p.status == 201) ++st_.s201;
      if (p.status == 202) ++st_.s202;
      if (in_window) ++st_.ok_in_window;
      if (in_window && t >= g_steady_start_us) ++st_.ok_steady;
      st_.lat2xx.push_back(lat);
      if (steady) st_.lat2xx_steady.push_back(lat);
    } else if (p.status == 503) {
      ++st_.s503;
      if (in_window) ++st_.s503_in_window;
      st_.lat503.push_back(lat);
      if (steady) {
        st_.lat503_steady.push_back(lat);
        // Clamped into [0, lat]: the two clocks are read a few µs apart.
        const std::int64_t rx = c.t_rx > 0 ? std::clamp(c.t_rx - c.t_sent, std::int64_t{0},
                                                        static_cast<std::int64_t>(lat))
                                           : lat;
        st_.lat503_steady_rx.push_back(static_cast<std::uint32_t>(rx));
      }
    } else {
      if (p.status >= 500)
        ++st_.s5xx_other;
      else if (p.status >= 400)
        ++st_.s4xx;
      else
        ++st_.s_other;
      if (p.status == 429) ++st_.s429;
      st_.latother.push_back(lat);
    }
    const auto outcome = p.header("x-qos-outcome");
    if (outcome && !outcome->empty()) {
      if (*outcome == "timeout")
        ++st_.outcome_timeout;
      else if (*outcome == "queue_full")
        ++st_.outcome_queue_full;
      else
        ++st_.outcome_other;
    }
    if (p.header("retry-after")) ++st_.retry_after;
    if (!o_.raw_file.empty()) {
      st_.raw.push_back({static_cast<std::uint32_t>(c.t_sent - g_start_us), lat,
                         static_cast<std::uint16_t>(p.status)});
    }
  }

  void scan(std::int64_t t) {
    for (auto& c : conns_) {
      if (c.fd < 0) {
        if (running() && t >= c.retry_at) {
          const int done = c.done;
          open_conn(c);
          c.done = done;
        }
        continue;
      }
      if (c.connecting && t - c.t_connect > timeout_us_) {
        ++st_.err_connect;
        close_conn(c);
        c.retry_at = t;
        continue;
      }
      if (c.outstanding && t - c.t_sent > timeout_us_) {
        ++st_.timeouts;
        settle(c);
        reopen(c);
      }
    }
  }

  const options& o_;
  const request_text& rq_;
  std::uint64_t keys_ = 0;  // Idempotency-Keys this thread made
  sockaddr_in addr_;
  std::vector<conn> conns_;
  int ep_ = -1;
  std::int64_t timeout_us_ = 0;
  int thread_ = 0;
  std::int64_t rt_offset_us_ = realtime_minus_steady_us();
  stats st_;
};

struct proc_sample {
  long rss_kib = 0, hwm_kib = 0, threads = 0;
  bool ok = false;
};

proc_sample read_proc(const std::vector<int>& pids) {
  proc_sample s;
  for (int pid : pids) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    if (!f) continue;
    s.ok = true;
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("VmRSS:", 0) == 0)
        s.rss_kib += std::atol(line.c_str() + 6);
      else if (line.rfind("VmHWM:", 0) == 0)
        s.hwm_kib += std::atol(line.c_str() + 6);
      else if (line.rfind("Threads:", 0) == 0)
        s.threads += std::atol(line.c_str() + 8);
    }
  }
  return s;
}

double pct(std::vector<std::uint32_t>& v, double q) {  // nearest rank, in ms
  if (v.empty()) return -1;
  std::size_t idx = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
  if (idx == 0) idx = 1;
  if (idx > v.size()) idx = v.size();
  return v[idx - 1] / 1000.0;
}

double mean_ms(const std::vector<std::uint32_t>& v) {
  if (v.empty()) return -1;
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size()) / 1000.0;
}

std::string fmt_ms(double v) {
  if (v < 0) return "";
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

// Each connection needs one descriptor; raises the soft limit as far as the hard one allows.
// False (after saying why) when that is still too few for `conns`.
bool raise_fd_limit(int conns) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur != RLIM_INFINITY && static_cast<rlim_t>(conns) + 64 > rl.rlim_cur) {
    std::fprintf(stderr, "loadgen: -c %d needs more open files than the limit %llu\n", conns,
                 static_cast<unsigned long long>(rl.rlim_cur));
    return false;
  }
  return true;
}

// The one request every connection sends, again and again (with --unique-idempotency-key, each
// time with a new key).
request_text make_request(const options& o) {
  request_text r;
  r.head = o.method + " " + o.path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(o.port) +
           "\r\nConnection: keep-alive\r\n";
  for (const auto& h : o.headers) r.head += h + "\r\n";
  // A POST without a body still says so: some servers wait for a body otherwise.
  if (o.has_body || o.method == "POST" || o.method == "PUT" || o.method == "PATCH") {
    if (!o.body.empty()) r.tail += "Content-Type: " + o.content_type + "\r\n";
    r.tail += "Content-Length: " + std::to_string(o.body.size()) + "\r\n";
  }
  r.tail += "\r\n" + o.body;
  r.full = r.head + r.tail;
  if (o.unique_idempotency_key) {
    std::random_device rd;
    char nonce[17];
    std::snprintf(nonce, sizeof nonce, "%08x%08x", rd(), rd());
    r.key_prefix = std::string("lg-") + nonce + "-";
  }
  return r;
}

// The connections split over the threads, the first ones taking one more when C % T != 0.
std::vector<std::unique_ptr<worker>> make_workers(const options& o, const request_text& request) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(o.port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::vector<std::unique_ptr<worker>> workers;
  for (int t = 0; t < o.threads; ++t) {
    const int n = o.conns / o.threads + (t < o.conns % o.threads ? 1 : 0);
    workers.push_back(std::make_unique<worker>(o, n, t, request, addr));
  }
  return workers;
}

// What the main thread saw of the run: the servers' /proc, the connections, the drain.
struct window_report {
  proc_sample at_end;
  long rss_max = 0, thr_max = 0;
  int open_at_end = 0;
  double drained_s = 0;
};

// Runs the workers through the window and the drain, sampling the servers' /proc meanwhile;
// returns once every worker thread has stopped.
window_report run_window(const options& o, std::vector<std::unique_ptr<worker>>& workers) {
  std::vector<std::thread> threads;
  for (auto& w : workers) threads.emplace_back([&w] { w->run(); });

  window_report r;
  while (now_us() < g_window_end_us) {
    const auto s = read_proc(o.pids);
    r.rss_max = std::max(r.rss_max, s.rss_kib);
    r.thr_max = std::max(r.thr_max, s.threads);
    r.at_end = s;
    const auto left = g_window_end_us - now_us();
    std::this_thread::sleep_for(
        std::chrono::microseconds(std::clamp<std::int64_t>(left, 0, 200000)));
  }
  r.at_end = read_proc(o.pids);
  r.rss_max = std::max(r.rss_max, r.at_end.rss_kib);
  r.thr_max = std::max(r.thr_max, r.at_end.threads);
  r.open_at_end = g_open.load();
  g_phase.store(static_cast<int>(phase::drain), std::memory_order_release);
  // Wait for the requests still out, at most --drain seconds.
  const auto drain_end = now_us() + static_cast<std::int64_t>(o.drain_s * 1e6);
  while (now_us() < drain_end && g_outstanding.load(std::memory_order_acquire) > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  r.drained_s = (now_us() - g_window_end_us) / 1e6;
  g_phase.store(static_cast<int>(phase::stop), std::memory_order_release);
  for (auto& t : threads) t.join();
  return r;
}

// --raw: every answer, in the order the requests were sent.
void write_raw(const std::string& file, std::vector<stats::sample>& raw) {
  std::sort(raw.begin(), raw.end(),
            [](const auto& a, const auto& b) { return a.sent_us < b.sent_us; });
  std::ofstream f(file);
  f << "# sent_ms latency_ms status\n";
  for (const auto& r : raw)
    f << r.sent_us / 1000.0 << ' ' << r.lat_us / 1000.0 << ' ' << r.status << '\n';
}

// A latency class of the report: its name in the LOADGEN keys and the cdf, its sorted samples.
struct latency_class {
  const char* name;
  std::vector<std::uint32_t>* v;
};

// Sorts the latencies and names the classes, in report order; `all_classes` receives 2xx, 503
// and the others together.
std::array<latency_class, 6> latency_classes(stats& all, std::vector<std::uint32_t>& all_classes) {
  std::sort(all.lat2xx.begin(), all.lat2xx.end());
  std::sort(all.lat503.begin(), all.lat503.end());
  std::sort(all.latother.begin(), all.latother.end());
  std::sort(all.lat2xx_steady.begin(), all.lat2xx_steady.end());
  std::sort(all.lat503_steady.begin(), all.lat503_steady.end());
  std::sort(all.lat503_steady_rx.begin(), all.lat503_steady_rx.end());
  all_classes.reserve(all.lat2xx.size() + all.lat503.size() + all.latother.size());
  all_classes.insert(all_classes.end(), all.lat2xx.begin(), all.lat2xx.end());
  all_classes.insert(all_classes.end(), all.lat503.begin(), all.lat503.end());
  all_classes.insert(all_classes.end(), all.latother.begin(), all.latother.end());
  std::sort(all_classes.begin(), all_classes.end());
  return {{{"ok", &all.lat2xx},
           {"s503", &all.lat503},
           {"all", &all_classes},
           {"oks", &all.lat2xx_steady},
           {"s503s", &all.lat503_steady},
           {"s503sx", &all.lat503_steady_rx}}};
}

// The "LOADGEN key=value ..." line bench/run.sh parses (its keys and their order are its API).
void print_loadgen_line(const options& o, const stats& all, const window_report& w,
                        const proc_sample& before, const std::array<latency_class, 6>& classes) {
  const double d = o.duration_s;
  std::ostringstream out;
  out << "LOADGEN";
  auto kv = [&out](const char* k, const auto& v) { out << ' ' << k << '=' << v; };
  kv("conns", o.conns);
  kv("threads", o.threads);
  kv("duration_s", d);
  kv("drained_s", fmt_ms(w.drained_s));  // two decimals, seconds
  kv("sent", all.sent);
  kv("answered", all.answered);
  kv("answered_in_window", all.answered_in_window);
  kv("rps", fmt_ms(all.answered_in_window / d));
  kv("ok_rps", fmt_ms(all.ok_in_window / d));
  kv("ok_in_window", all.ok_in_window);
  kv("skip_s", o.skip_s);
  kv("ok_rps_steady", fmt_ms(all.ok_steady / (d - o.skip_s)));
  kv("s503_in_window", all.s503_in_window);
  kv("s2xx", all.s2xx);
  kv("s503", all.s503);
  kv("s5xx_other", all.s5xx_other);
  kv("s4xx", all.s4xx);
  kv("s_other", all.s_other);
  kv("timeouts", all.timeouts);
  kv("err_connect", all.err_connect);
  kv("err_lost", all.err_lost);
  kv("err_parse", all.err_parse);
  kv("unanswered", all.unanswered);
  kv("reconnects", all.reconnects);
  kv("outcome_timeout", all.outcome_timeout);
  kv("outcome_queue_full", all.outcome_queue_full);
  kv("outcome_other", all.outcome_other);
  kv("retry_after", all.retry_after);
  kv("open_max", g_open_max.load());
  kv("open_at_end", w.open_at_end);
  kv("s503_steady", all.lat503_steady.size());
  for (const auto& c : classes) {
    const std::string n = c.name;
    kv((n + "_p50_ms").c_str(), fmt_ms(pct(*c.v, 0.50)));
    kv((n + "_p90_ms").c_str(), fmt_ms(pct(*c.v, 0.90)));
    kv((n + "_p99_ms").c_str(), fmt_ms(pct(*c.v, 0.99)));
    kv((n + "_p999_ms").c_str(), fmt_ms(pct(*c.v, 0.999)));
    kv((n + "_max_ms").c_str(), fmt_ms(c.v->empty() ? -1 : c.v->back() / 1000.0));
    kv((n + "_min_ms").c_str(), fmt_ms(c.v->empty() ? -1 : c.v->front() / 1000.0));
  }
  if (!o.pids.empty()) {
    kv("srv_rss_before_kib", before.rss_kib);
    kv("srv_rss_end_kib", w.at_end.rss_kib);
    kv("srv_rss_max_kib", w.rss_max);
    kv("srv_hwm_kib", w.at_end.hwm_kib);
    kv("srv_threads_max", w.thr_max);
    kv("srv_threads_end", w.at_end.threads);
    kv("srv_alive", w.at_end.ok ? 1 : 0);
  }
  // Added later, so at the end: the keys above keep their places.
  kv("s201", all.s201);
  kv("s202", all.s202);
  kv("s429", all.s429);
  kv("ok_mean_ms", fmt_ms(mean_ms(*classes[0].v)));
  kv("all_mean_ms", fmt_ms(mean_ms(*classes[2].v)));
  std::printf("%s\n", out.str().c_str());
  std::fflush(stdout);
}

// The one-line human summary on stderr.
void print_summary(const options& o, stats& all) {
  const double d = o.duration_s;
  std::fprintf(
      stderr,
      "loadgen%s%s: c=%d %.1fs: sent %llu, answered %llu (2xx %llu, 503 %llu, other %llu), "
      "timeouts %llu, lost %llu, connect errors %llu, unanswered %llu; 2xx/s %.1f; "
      "2xx p50/p99 %s/%s ms\n",
      o.label.empty() ? "" : " ", o.label.c_str(), o.conns, d,
      static_cast<unsigned long long>(all.sent), static_cast<unsigned long long>(all.answered),
      static_cast<unsigned long long>(all.s2xx), static_cast<unsigned long long>(all.s503),
      static_cast<unsigned long long>(all.s5xx_other + all.s4xx + all.s_other),
      static_cast<unsigned long long>(all.timeouts), static_cast<unsigned long long>(all.err_lost),
      static_cast<unsigned long long>(all.err_connect),
      static_cast<unsigned long long>(all.unanswered), all.ok_in_window / d,
      fmt_ms(pct(all.lat2xx, 0.5)).c_str(), fmt_ms(pct(all.lat2xx, 0.99)).c_str());
}

// --cdf: "class quantile latency_ms", 1000 steps plus the extreme tail, for gnuplot.
void write_cdf(const std::string& file, const std::array<latency_class, 6>& classes) {
  std::ofstream f(file);
  f << "# class quantile latency_ms (n per class in the header below)\n";
  for (const auto& c : classes) f << "# " << c.name << " n=" << c.v->size() << "\n";
  for (const auto& c : classes) {
    if (c.v->empty() || std::string(c.name) == "oks" || std::string(c.name) == "s503s") continue;
    for (int i = 1; i <= 1000; ++i)
      f << c.name << ' ' << i / 1000.0 << ' ' << pct(*c.v, i / 1000.0) << '\n';
    f << "\n\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  const options o = parse(argc, argv);
  if (!raise_fd_limit(o.conns)) return 3;
  const request_text request = make_request(o);

  const proc_sample before = read_proc(o.pids);
  g_start_us = now_us();
  g_window_end_us = g_start_us + static_cast<std::int64_t>(o.duration_s * 1e6);
  g_steady_start_us = g_start_us + static_cast<std::int64_t>(o.skip_s * 1e6);
  auto workers = make_workers(o, request);
  const window_report w = run_window(o, workers);

  stats all;
  for (const auto& wk : workers) all.merge(wk->result());
  if (!o.raw_file.empty()) write_raw(o.raw_file, all.raw);
  workers.clear();  // closes every connection

  std::vector<std::uint32_t> all_classes;
  const auto classes = latency_classes(all, all_classes);
  print_loadgen_line(o, all, w, before, classes);
  print_summary(o, all);
  if (!o.cdf_file.empty()) write_cdf(o.cdf_file, classes);
  return 0;
}

// stepgen: the OPEN-LOOP HTTP/1.1 load generator of the step-overload benchmark
// (bench/step/run.sh, issue 4 "Bench").
//
// wrk and bench/loadgen are closed loop: a slow server slows the client down, so an overload
// never builds up the way it does when independent users keep arriving. stepgen sends requests
// at scheduled instants that follow a profile of phases (`--phase 5s@128 --phase 10s@800 ...`:
// duration @ requests per second), whatever the server does:
//   - a pool of keep-alive connections, one request in flight per connection (no pipelining);
//     the most recently freed idle connection is reused first; when none is idle a new one is
//     opened, up to --max-conns; beyond that the request is a "client-side drop";
//   - a request gets --timeout (default 10 s) from the moment it is handed to a connection;
//     then that connection is closed and the request counts as a timeout;
//   - latency is measured from the SCHEDULED send time (no coordinated omission): a request the
//     client itself sent late, or that waited for a new connection, carries that delay.
//
// Single thread, one epoll loop, timers from the schedule (epoll_pwait2, ns resolution).
// Only 127.0.0.1 / localhost targets are accepted. The run is bounded: it stops scheduling at
// the end of the profile, waits for the requests still out (at most --timeout + 1 s), then
// closes everything; SIGINT/SIGTERM stop the schedule early and still write the reports.
//
// Outputs:
//   --csv FILE      one row per --bucket (100 ms) of wall time from the schedule start: sent,
//                   completions by class, fallbacks by X-QoS-Outcome, p50/p99/max latency of
//                   the 2xx completed in that bucket, requests in flight at its end;
//   --summary FILE  one row per phase, one "drain" (after the profile's end, until the last
//                   answer) and one "all". A phase row covers the phase's wall-clock window:
//                   offered/sent by scheduled send time, everything else by completion time
//                   (what the server delivered during the window): goodput (2xx/s), p50/p99/max
//                   of those 2xx, useful goodput (those answered within --useful, 1 s, of their
//                   SCHEDULED send, per s), fallback counts by outcome, timeouts, errors, send
//                   lag, recovery time;
//   --raw FILE      one row per request (scheduled, sent, done in ms from the start, status,
//                   outcome);
//   stdout          a human summary.
//
// Recovery time (after a phase whose rate is lower than the one before, i.e. the step end):
// the baseline is the p99 of the 2xx completed in phase 0 (its first min(1 s, d/4) left out);
// recovery_s = time from the start of the phase to the first bucket from which the per-bucket
// 2xx p99 stays <= --recovery-factor (1.2) x baseline, with at least one 2xx per bucket, for
// --recovery-hold (1 s) or until the phase ends. recovery_first_s: the first such bucket alone.
//
// Build: the CMake target stepgen (bench/CMakeLists.txt): libc/libstdc++ and the response parser
// of tests/support/wire, no qos library.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "support/wire/http_response_parser.hpp"

namespace {

namespace wire = qos::wire;
using i64 = std::int64_t;
constexpr i64 ms_ns = 1'000'000;
constexpr i64 s_ns = 1'000'000'000;

i64 now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<i64>(ts.tv_sec) * s_ns + ts.tv_nsec;
}

volatile sig_atomic_t g_stop = 0;
void on_signal(int) {
  g_stop = 1;
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(
      stderr,
      "stepgen: %s\n"
      "usage: stepgen --url http://127.0.0.1:PORT/PATH --phase DUR@RPS [--phase ...]\n"
      "         [--max-conns N (4000)] [--preconnect N (0)] [--header 'Name: value']...\n"
      "         [--timeout 10s] [--useful 1s] [--bucket 100ms] [--arrivals uniform|poisson]\n"
      "         [--seed N] [--recovery-factor 1.2] [--recovery-hold 1s] [--label TEXT]\n"
      "         [--csv FILE] [--summary FILE] [--raw FILE]\n"
      "  DUR: 5s, 500ms, 1.5s (a bare number is seconds); RPS: requests per second >= 0\n",
      why.c_str());
  std::exit(why == "help" ? 0 : 2);
}

// "5s", "500ms", "1.5s", "2" (seconds) -> ns
i64 parse_duration(const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  const std::string unit = end ? std::string(end) : "";
  double mult = 1e9;
  if (unit.empty() || unit == "s")
    mult = 1e9;
  else if (unit == "ms")
    mult = 1e6;
  else if (unit == "us")
    mult = 1e3;
  else if (unit == "m")
    mult = 60e9;
  else
    usage("bad duration '" + s + "'");
  if (!(v >= 0) || end == s.c_str()) usage("bad duration '" + s + "'");
  return static_cast<i64>(std::llround(v * mult));
}

struct phase {
  i64 dur_ns = 0;
  double rps = 0;
  i64 start_ns = 0;  // from the schedule start
};

struct options {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string path = "/";
  std::vector<phase> phases;
  int max_conns = 4000;
  int preconnect = 0;
  std::vector<std::string> headers;
  i64 timeout_ns = 10 * s_ns;
  i64 useful_ns = 1 * s_ns;
  i64 bucket_ns = 100 * ms_ns;
  bool poisson = false;
  std::uint64_t seed = 1;
  double recovery_factor = 1.2;
  i64 recovery_hold_ns = 1 * s_ns;
  std::string label = "run";
  std::string csv_file, summary_file, raw_file;
};

// --phase DUR@RPS; its start is set once all phases are known.
phase parse_phase(const std::string& p) {
  const auto at = p.find('@');
  if (at == std::string::npos) usage("--phase wants DUR@RPS, got '" + p + "'");
  phase ph;
  ph.dur_ns = parse_duration(p.substr(0, at));
  char* end = nullptr;
  ph.rps = std::strtod(p.c_str() + at + 1, &end);
  if (*end != '\0' || !(ph.rps >= 0) || ph.rps > 1e6) usage("bad rate in '" + p + "'");
  if (ph.dur_ns <= 0 || ph.dur_ns > 3600 * s_ns) usage("phase duration out of range");
  return ph;
}

// --url http://HOST:PORT/PATH with HOST 127.0.0.1 or localhost only: sets port and path.
void parse_url(const std::string& url, options& o) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) usage("--url must start with http://");
  const std::string rest = url.substr(scheme.size());
  const auto slash = rest.find('/');
  const std::string hostport = rest.substr(0, slash);
  o.path = slash == std::string::npos ? "/" : rest.substr(slash);
  const auto colon = hostport.rfind(':');
  if (colon == std::string::npos) usage("--url needs an explicit port");
  const std::string host = hostport.substr(0, colon);
  if (host != "127.0.0.1" && host != "localhost") usage("only 127.0.0.1/localhost targets");
  o.port = std::stoi(hostport.substr(colon + 1));
  if (o.port <= 0 || o.port > 65535) usage("bad port");
}

options parse(int argc, char** argv) {
  options o;
  std::string url;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--url")
      url = val();
    else if (a == "--phase")
      o.phases.push_back(parse_phase(val()));
    else if (a == "--max-conns")
      o.max_conns = std::stoi(val());
    else if (a == "--preconnect")
      o.preconnect = std::stoi(val());
    else if (a == "--header" || a == "-H")
      o.headers.push_back(val());
    else if (a == "--timeout")
      o.timeout_ns = parse_duration(val());
    else if (a == "--useful")
      o.useful_ns = parse_duration(val());
    else if (a == "--bucket")
      o.bucket_ns = parse_duration(val());
    else if (a == "--arrivals") {
      const std::string v = val();
      if (v == "poisson")
        o.poisson = true;
      else if (v == "uniform")
        o.poisson = false;
      else
        usage("--arrivals: uniform or poisson");
    } else if (a == "--seed")
      o.seed = std::stoull(val());
    else if (a == "--recovery-factor")
      o.recovery_factor = std::stod(val());
    else if (a == "--recovery-hold")
      o.recovery_hold_ns = parse_duration(val());
    else if (a == "--label")
      o.label = val();
    else if (a == "--csv")
      o.csv_file = val();
    else if (a == "--summary")
      o.summary_file = val();
    else if (a == "--raw")
      o.raw_file = val();
    else if (a == "-h" || a == "--help")
      usage("help");
    else
      usage("unknown argument " + a);
  }
  parse_url(url, o);
  if (o.phases.empty()) usage("at least one --phase");
  if (o.max_conns < 1 || o.max_conns > 60000) usage("--max-conns out of range");
  if (o.preconnect < 0 || o.preconnect > o.max_conns)
    usage("--preconnect must be in [0, max-conns]");
  if (o.timeout_ns <= 0 || o.timeout_ns > 600 * s_ns) usage("--timeout out of range");
  if (o.bucket_ns < ms_ns) usage("--bucket must be >= 1ms");
  i64 t = 0;
  for (auto& p : o.phases) {
    p.start_ns = t;
    t += p.dur_ns;
  }
  if (t > 3600 * s_ns) usage("profile longer than 1 h");
  return o;
}

// ---- requests ---------------------------------------------------------------------------------

// X-QoS-Outcome values (qos/outcome.hpp), index 0 = header absent.
constexpr std::array<std::string_view, 12> outcome_names = {
    "-",        "admitted", "queue_full", "timeout",  "client_gone",       "shutdown",
    "rejected", "error",    "shed",       "deadline", "predicted_timeout", "exec_timeout"};
constexpr int outcome_unknown = static_cast<int>(outcome_names.size());  // another value
constexpr int outcome_slots = outcome_unknown + 1;

enum class result : std::uint8_t {
  pending,     // not finished (still out at the hard stop)
  answered,    // a complete HTTP response: see status
  drop,        // client-side drop: no connection available (max-conns)
  timeout,     // no answer within --timeout: connection closed
  conn_error,  // connect failed
  lost,        // the connection broke with the request out (reset, closed, unparseable)
  not_sent,    // stopped by a signal before its scheduled time
};

struct request {
  i64 sched = 0;  // scheduled send, ns from the schedule start
  i64 sent = -1;  // first byte written
  i64 done = -1;  // answer complete / timeout / error
  std::uint16_t status = 0;
  std::uint8_t outcome = 0;
  result res = result::pending;
  std::uint16_t phase = 0;
  bool retried = false;
};

// ---- connections ------------------------------------------------------------------------------

enum class cstate : std::uint8_t { free, connecting, idle, busy };

struct conn {
  int fd = -1;
  std::uint32_t gen = 0;
  cstate st = cstate::free;
  int req = -1;           // request out on it (busy / connecting)
  bool reused = false;    // has answered a request before (a stale keep-alive may fail)
  bool want_out = false;  // EPOLLOUT registered
  std::size_t out_off = 0;
  // Bodies are skipped: the benchmark counts answers, it does not read them.
  wire::http_response_parser in{wire::parser_options{.keep_body = false}};
};

struct counters {
  std::uint64_t opened = 0, connect_fail = 0, server_closed_idle = 0, server_close_hdr = 0;
  std::uint64_t retries = 0, extra_bytes = 0, parse_errors = 0;
  int open_now = 0, open_max = 0;
  std::map<std::string, int> unknown_outcomes;
};

class client {
 public:
  explicit client(const options& o) : o_(o) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) {
      std::perror("epoll_create1");
      std::exit(1);
    }
    addr_.sin_family = AF_INET;
    addr_.sin_port = htons(static_cast<std::uint16_t>(o.port));
    addr_.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    req_text_ = "GET " + o.path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(o.port) +
                "\r\nUser-Agent: stepgen\r\nAccept: */*\r\nConnection: keep-alive\r\n";
    for (const auto& h : o.headers) req_text_ += h + "\r\n";
    req_text_ += "\r\n";
    conns_.reserve(static_cast<std::size_t>(o.max_conns));
  }

  std::vector<request> reqs;
  counters c;
  i64 t0 = 0;          // absolute ns (CLOCK_MONOTONIC) of the schedule start
  double t0_unix = 0;  // the same instant in CLOCK_REALTIME seconds (to align other samples)

  // Opens n connections and waits (at most 10 s) until they are established; they become idle.
  void preconnect(int n) {
    for (int i = 0; i < n; ++i) {
      if (open_conn(-1) < 0) break;
    }
    const i64 end = now_ns() + 10 * s_ns;
    while (connecting_ > 0 && now_ns() < end && !g_stop) poll_once(end);
  }

  void build_schedule() {
    std::mt19937_64 rng(o_.seed);
    for (std::size_t p = 0; p < o_.phases.size(); ++p) {
      const auto& ph = o_.phases[p];
      if (ph.rps <= 0) continue;
      if (o_.poisson) {
        std::exponential_distribution<double> gap(ph.rps);
        double t = gap(rng);
        while (t * 1e9 < static_cast<double>(ph.dur_ns)) {
          add_request(ph.start_ns + static_cast<i64>(t * 1e9), p);
          t += gap(rng);
        }
      } else {
        const auto n =
            static_cast<i64>(std::floor(static_cast<double>(ph.dur_ns) / 1e9 * ph.rps + 1e-9));
        for (i64 k = 0; k < n; ++k) {
          add_request(
              ph.start_ns + static_cast<i64>(std::llround(static_cast<double>(k) * 1e9 / ph.rps)),
              p);
        }
      }
    }
  }

  void run() {
    const i64 total = o_.phases.back().start_ns + o_.phases.back().dur_ns;
    t0 = now_ns() + 100 * ms_ns;
    timespec rt{};
    clock_gettime(CLOCK_REALTIME, &rt);
    t0_unix = static_cast<double>(rt.tv_sec) + static_cast<double>(rt.tv_nsec) / 1e9 +
              static_cast<double>(t0 - now_ns()) / 1e9;
    i64 hard_end = t0 + total + o_.timeout_ns + s_ns;
    bool stopping = false;
    std::size_t next = 0;
    for (;;) {
      const i64 now = now_ns();
      if (g_stop) {
        for (; next < reqs.size(); ++next) reqs[next].res = result::not_sent;
      }
      while (next < reqs.size() && t0 + reqs[next].sched <= now)
        dispatch(static_cast<int>(next++), now);
      expire(now);
      if (next == reqs.size() && outstanding_ == 0) break;
      if (now >= hard_end) break;
      if (g_stop && !stopping) {  // stop early: give the requests out 2 s more
        stopping = true;
        if (hard_end > now + 2 * s_ns) hard_end = now + 2 * s_ns;
      }
      i64 wake = hard_end;
      if (next < reqs.size()) wake = std::min(wake, t0 + reqs[next].sched);
      if (!timeouts_.empty()) wake = std::min(wake, timeouts_.front().at);
      poll_once(wake);
    }
    // Anything still out: the hard stop (should not happen: timeouts come first).
    for (auto& cn : conns_) {
      if (cn.st != cstate::free) close_conn(cn);
    }
  }

 private:
  struct pending_timeout {
    i64 at;
    int conn;
    std::uint32_t gen;
    int req;
  };

  const options& o_;
  int ep_ = -1;
  sockaddr_in addr_{};
  std::string req_text_;
  std::vector<conn> conns_;
  std::vector<int> free_slots_;
  std::vector<int> idle_;  // stack: most recently freed last
  std::deque<pending_timeout> timeouts_;
  int connecting_ = 0;
  std::size_t outstanding_ = 0;  // requests on a connection (connecting or busy)

  void add_request(i64 sched, std::size_t p) {
    request r;
    r.sched = sched;
    r.phase = static_cast<std::uint16_t>(p);
    reqs.push_back(r);
  }

  static std::uint64_t key(int idx, std::uint32_t gen) {
    return (static_cast<std::uint64_t>(gen) << 32) | static_cast<std::uint32_t>(idx);
  }

  void arm(conn& cn, int idx, bool out) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (out ? EPOLLOUT : 0u);
    ev.data.u64 = key(idx, cn.gen);
    epoll_ctl(ep_, EPOLL_CTL_MOD, cn.fd, &ev);
    cn.want_out = out;
  }

  // Opens a connection; `req` >= 0 is sent once it is established. Returns the slot or -1.
  int open_conn(int req) {
    if (c.open_now >= o_.max_conns) return -1;
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      ++c.connect_fail;
      return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const int rc = connect(fd, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_);
    if (rc < 0 && errno != EINPROGRESS) {
      ::close(fd);
      ++c.connect_fail;
      return -1;
    }
    int idx;
    if (!free_slots_.empty()) {
      idx = free_slots_.back();
      free_slots_.pop_back();
    } else {
      idx = static_cast<int>(conns_.size());
      conns_.emplace_back();
    }
    conn& cn = conns_[static_cast<std::size_t>(idx)];
    ++cn.gen;
    cn.fd = fd;
    cn.st = cstate::connecting;
    cn.req = req;
    cn.reused = false;
    cn.out_off = 0;
    cn.in.reset();
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
    ev.data.u64 = key(idx, cn.gen);
    cn.want_out = true;
    epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
    ++connecting_;
    ++c.opened;
    c.open_now++;
    c.open_max = std::max(c.open_max, c.open_now);
    if (req >= 0) ++outstanding_;
    return idx;
  }

  void close_conn(conn& cn) {
    if (cn.st == cstate::free) return;
    if (cn.st == cstate::connecting) --connecting_;
    if (cn.req >= 0) --outstanding_;
    ::close(cn.fd);
    cn.fd = -1;
    cn.st = cstate::free;
    cn.req = -1;
    cn.in.reset();
    ++cn.gen;
    --c.open_now;
    free_slots_.push_back(static_cast<int>(&cn - conns_.data()));
  }

  void finish(int ri, result res, i64 now) {
    auto& r = reqs[static_cast<std::size_t>(ri)];
    r.res = res;
    r.done = now - t0;
  }

  void dispatch(int ri, i64 now) {
    while (!idle_.empty()) {
      const int idx = idle_.back();
      idle_.pop_back();
      conn& cn = conns_[static_cast<std::size_t>(idx)];
      if (cn.st != cstate::idle) continue;  // closed meanwhile
      cn.st = cstate::busy;
      cn.req = ri;
      ++outstanding_;
      timeouts_.push_back({now + o_.timeout_ns, idx, cn.gen, ri});
      start_write(cn, idx, now);
      return;
    }
    if (c.open_now >= o_.max_conns) {
      finish(ri, result::drop, now);
      return;
    }
    const int idx = open_conn(ri);
    if (idx < 0) {
      finish(ri, result::conn_error, now);
      return;
    }
    timeouts_.push_back({now + o_.timeout_ns, idx, conns_[static_cast<std::size_t>(idx)].gen, ri});
  }

  // The parser of cn holds nothing here: a connection becomes idle only after a whole answer with
  // nothing behind it, and one that receives bytes while idle is closed.
  void start_write(conn& cn, int idx, i64 now) {
    cn.out_off = 0;
    reqs[static_cast<std::size_t>(cn.req)].sent = now - t0;
    write_some(cn, idx);
  }

  void write_some(conn& cn, int idx) {
    while (cn.out_off < req_text_.size()) {
      const ssize_t n =
          ::send(cn.fd, req_text_.data() + cn.out_off, req_text_.size() - cn.out_off, MSG_NOSIGNAL);
      if (n > 0) {
        cn.out_off += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!cn.want_out) arm(cn, idx, true);
        return;
      }
      broken(cn, now_ns(), true);
      return;
    }
    if (cn.want_out) arm(cn, idx, false);
  }

  // The connection failed with a request out. A keep-alive connection the server closed while
  // it was idle fails on first use: the request is sent again once, on another connection.
  void broken(conn& cn, i64 now, bool may_be_stale = false) {
    const int ri = cn.req;
    const bool stale = may_be_stale && cn.reused && !cn.in.mid_response();
    close_conn(cn);
    if (ri < 0) return;
    auto& r = reqs[static_cast<std::size_t>(ri)];
    if (stale && !r.retried) {
      r.retried = true;
      ++c.retries;
      dispatch(ri, now);
      return;
    }
    finish(ri, result::lost, now);
  }

  void expire(i64 now) {
    while (!timeouts_.empty() && timeouts_.front().at <= now) {
      const auto t = timeouts_.front();
      timeouts_.pop_front();
      conn& cn = conns_[static_cast<std::size_t>(t.conn)];
      if (cn.gen != t.gen || cn.req != t.req) continue;  // answered or closed already
      if (cn.st != cstate::busy && cn.st != cstate::connecting) continue;
      close_conn(cn);
      finish(t.req, result::timeout, now);
    }
  }

  void poll_once(i64 wake_abs) {
    std::array<epoll_event, 256> evs;
    i64 left = wake_abs - now_ns();
    if (left < 0) left = 0;
    timespec ts{static_cast<time_t>(left / s_ns), static_cast<long>(left % s_ns)};
    int n = epoll_pwait2(ep_, evs.data(), static_cast<int>(evs.size()), &ts, nullptr);
    if (n < 0 && errno == ENOSYS) {
      n = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()),
                     static_cast<int>((left + ms_ns - 1) / ms_ns));
    }
    if (n <= 0) return;
    for (int i = 0; i < n; ++i) {
      const int idx = static_cast<int>(evs[static_cast<std::size_t>(i)].data.u64 & 0xffffffffu);
      const auto gen = static_cast<std::uint32_t>(evs[static_cast<std::size_t>(i)].data.u64 >> 32);
      conn& cn = conns_[static_cast<std::size_t>(idx)];
      if (cn.gen != gen || cn.st == cstate::free) continue;
      on_event(cn, idx, evs[static_cast<std::size_t>(i)].events);
    }
  }

  void on_event(conn& cn, int idx, std::uint32_t events) {
    const i64 now = now_ns();
    if (cn.st == cstate::connecting) {
      if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(cn.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
        const int ri = cn.req;
        close_conn(cn);
        ++c.connect_fail;
        if (ri >= 0) finish(ri, result::conn_error, now);
        return;
      }
      --connecting_;
      if (cn.req >= 0) {
        cn.st = cstate::busy;
        start_write(cn, idx, now);
      } else {
        cn.st = cstate::idle;
        arm(cn, idx, false);
        idle_.push_back(idx);
      }
      return;
    }
    if ((events & EPOLLOUT) && cn.st == cstate::busy && cn.out_off < req_text_.size()) {
      write_some(cn, idx);
      if (cn.st == cstate::free) return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_some(cn, idx, now);
  }

  void read_some(conn& cn, int idx, i64 now) {
    char buf[16384];
    bool eof = false;
    for (;;) {
      const ssize_t n = ::recv(cn.fd, buf, sizeof buf, 0);
      if (n > 0) {
        cn.in.feed(std::string_view(buf, static_cast<std::size_t>(n)));
        if (static_cast<std::size_t>(n) < sizeof buf) break;
        continue;
      }
      if (n == 0) {
        eof = true;
        break;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      eof = true;  // reset
      break;
    }
    if (cn.st == cstate::idle) {
      if (eof || cn.in.mid_response()) {
        // Closed by the server while idle (or unsolicited bytes): drop it from the pool.
        if (cn.in.mid_response()) ++c.extra_bytes;
        ++c.server_closed_idle;
        close_conn(cn);
      }
      return;
    }
    if (cn.st != cstate::busy) return;
    parse(cn, idx, now, eof);
  }

  // The X-QoS-Outcome of an answer as an index of outcome_names: 0 without the header,
  // outcome_unknown (and a note of the value) for a value not in the list.
  int outcome_of(const wire::parsed_response& resp) {
    const auto value = resp.header("x-qos-outcome");
    if (!value) return 0;
    for (std::size_t k = 1; k < outcome_names.size(); ++k) {
      if (*value == outcome_names[k]) return static_cast<int>(k);
    }
    if (c.unknown_outcomes.size() < 20) c.unknown_outcomes[std::string(*value)]++;
    return outcome_unknown;
  }

  // Takes the answer to the request out on cn from the bytes read so far; `eof`: the server
  // closed (or reset) the connection after them.
  void parse(conn& cn, int idx, i64 now, bool eof) {
    auto res = cn.in.next();
    if (res == wire::parse_result::error) {  // malformed or too large: the framing is lost
      ++c.parse_errors;
      broken(cn, now);
      return;
    }
    if (res == wire::parse_result::incomplete && eof) {
      cn.in.feed_eof();  // ends a body delimited by the end of stream, or cuts the answer short
      res = cn.in.next();
    }
    if (res != wire::parse_result::complete) {
      // Closed before any byte of the answer (maybe a stale keep-alive) or in the middle of it.
      if (eof) broken(cn, now, true);
      return;
    }
    const auto& resp = cn.in.response();
    const int ri = cn.req;
    auto& r = reqs[static_cast<std::size_t>(ri)];
    r.status = static_cast<std::uint16_t>(resp.status);
    r.outcome = static_cast<std::uint8_t>(outcome_of(resp));
    finish(ri, result::answered, now);
    cn.req = -1;
    --outstanding_;
    cn.reused = true;
    bool close_after = !resp.keep_alive;
    if (cn.in.mid_response()) {
      ++c.extra_bytes;  // bytes we did not ask for (no pipelining here)
      close_after = true;
    }
    if (close_after || eof) {
      if (close_after && !eof) ++c.server_close_hdr;
      close_conn(cn);
      return;
    }
    cn.st = cstate::idle;
    idle_.push_back(idx);
  }
};

// ---- statistics -------------------------------------------------------------------------------

double pct(std::vector<i64>& v, double p) {  // nearest rank, ms; v is sorted here
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  std::size_t k = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  if (k < 1) k = 1;
  if (k > v.size()) k = v.size();
  return static_cast<double>(v[k - 1]) / 1e6;
}

std::string fmt(double v, int prec = 1) {
  if (std::isnan(v)) return "";
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

struct agg {
  std::uint64_t offered = 0, sent = 0, drops = 0, s2xx = 0, s503 = 0, s4xx = 0, s5xx_other = 0,
                other_status = 0, timeouts = 0, conn_errors = 0, lost = 0, pending = 0,
                not_sent = 0, useful = 0;
  std::array<std::uint64_t, outcome_slots> fb{};  // fallbacks (non-2xx answers) by outcome
  std::uint64_t anom_2xx_with_outcome = 0, anom_fallback_without_outcome = 0,
                anom_unknown_outcome = 0;
  std::vector<i64> lat2xx, latfb, lag;

  // What was scheduled in this window (by scheduled send time).
  void add_offered(const request& r) {
    ++offered;
    if (r.sent >= 0) {
      ++sent;
      lag.push_back(r.sent - r.sched);
    }
    if (r.res == result::pending) ++pending;
    if (r.res == result::not_sent) ++not_sent;
  }

  // What ended in this window (by completion time): answers, drops, timeouts, errors.
  void add_done(const request& r, i64 useful_ns) {
    switch (r.res) {
      case result::answered: {
        const i64 lat = r.done - r.sched;
        if (r.status >= 200 && r.status < 300) {
          ++s2xx;
          lat2xx.push_back(lat);
          if (lat <= useful_ns) ++useful;
          if (r.outcome != 0 && r.outcome != 1) ++anom_2xx_with_outcome;
        } else {
          if (r.status == 503)
            ++s503;
          else if (r.status >= 400 && r.status < 500)
            ++s4xx;
          else if (r.status >= 500)
            ++s5xx_other;
          else
            ++other_status;
          ++fb[r.outcome];
          latfb.push_back(lat);
          if (r.outcome == 0) ++anom_fallback_without_outcome;
        }
        if (r.outcome == outcome_unknown) ++anom_unknown_outcome;
        break;
      }
      case result::drop:
        ++drops;
        break;
      case result::timeout:
        ++timeouts;
        break;
      case result::conn_error:
        ++conn_errors;
        break;
      case result::lost:
        ++lost;
        break;
      default:
        break;
    }
  }
};

// ---- report ----------------------------------------------------------------------------------

// The phase whose wall-clock window holds t (ns from the schedule start), -1 after the profile.
int phase_of_time(const options& o, i64 t) {
  for (std::size_t p = 0; p < o.phases.size(); ++p) {
    if (t >= o.phases[p].start_ns && t < o.phases[p].start_ns + o.phases[p].dur_ns)
      return static_cast<int>(p);
  }
  return -1;
}

// One --bucket of wall time from the schedule start.
struct bucket {
  std::uint64_t offered = 0, sent = 0, drops = 0, done = 0, s2xx = 0, s503 = 0, other = 0,
                timeouts = 0, errors = 0, useful = 0;
  std::array<std::uint64_t, outcome_slots> fb{};
  std::vector<i64> lat;
  long inflight = 0;                       // sent and not finished at the bucket's end
  double p50 = NAN, p99 = NAN, max = NAN;  // of the 2xx completed in it, ms
};

// Everything the outputs show, computed once from the finished requests: the buckets, the
// phase rows and the recovery after the step.
class report {
 public:
  report(const options& o, const std::vector<request>& reqs)
      : o_(o),
        reqs_(reqs),
        np_(o.phases.size()),
        total_ns_(o.phases.back().start_ns + o.phases.back().dur_ns) {
    last_ = total_ns_;
    for (const auto& r : reqs_) last_ = std::max(last_, r.done);
    nb_ = static_cast<std::size_t>((last_ + o_.bucket_ns - 1) / o_.bucket_ns) + 1;
    fill_buckets();
    fill_rows();
    base_p99_ = baseline_p99();
    find_recovery();
  }

  void write_buckets(const std::string& file);
  void write_summary(const std::string& file);
  void write_raw(const std::string& file);
  void print(const client& cl, int pre_open);

 private:
  void fill_buckets();
  void fill_rows();
  double baseline_p99();
  void find_recovery();

  std::string phase_name(std::size_t p) const {
    if (p == np_) return std::string("drain");
    if (p == np_ + 1) return std::string("all");
    return std::to_string(p);
  }
  double row_start(std::size_t p) const {
    return p < np_    ? static_cast<double>(o_.phases[p].start_ns) / 1e9
           : p == np_ ? static_cast<double>(total_ns_) / 1e9
                      : 0.0;
  }
  double row_dur(std::size_t p) const {
    return p < np_ ? static_cast<double>(o_.phases[p].dur_ns) / 1e9
                   : static_cast<double>(p == np_ ? last_ - total_ns_ : last_) / 1e9;
  }
  static double per_s(double n, double dur) { return dur > 0 ? n / dur : NAN; }
  std::size_t bucket_of(i64 t) const {
    return std::min(nb_ - 1, static_cast<std::size_t>(std::max<i64>(0, t) / o_.bucket_ns));
  }
  std::string summary_header() const;
  std::string summary_row(std::size_t p);

  const options& o_;
  const std::vector<request>& reqs_;
  std::size_t np_;      // phases
  i64 total_ns_;        // the profile's end
  i64 last_ = 0;        // the last request's end, at least total_ns_
  std::size_t nb_ = 0;  // buckets
  std::vector<bucket> buckets_;
  // Rows 0..np-1: the phases' wall-clock windows; np: "drain" (after the profile's end);
  // np+1: "all". Offered/sent/lag by scheduled send time, everything else by completion time.
  std::vector<agg> rows_;
  double base_p99_ = NAN;
  std::vector<double> recovery_, recovery_first_;
  std::vector<bool> recovery_applies_;
};

void report::fill_buckets() {
  buckets_.assign(nb_, bucket{});
  std::vector<long> delta(nb_ + 1, 0);
  for (const auto& r : reqs_) {
    buckets_[bucket_of(r.sched)].offered++;
    if (r.sent >= 0) {
      buckets_[bucket_of(r.sent)].sent++;
      delta[bucket_of(r.sent)]++;
      if (r.done >= 0) delta[bucket_of(r.done)]--;
    }
    if (r.res == result::drop) {
      buckets_[bucket_of(r.done)].drops++;
      continue;
    }
    if (r.done < 0) continue;
    auto& b = buckets_[bucket_of(r.done)];
    switch (r.res) {
      case result::answered:
        ++b.done;
        if (r.status >= 200 && r.status < 300) {
          ++b.s2xx;
          b.lat.push_back(r.done - r.sched);
          if (r.done - r.sched <= o_.useful_ns) ++b.useful;
        } else {
          if (r.status == 503)
            ++b.s503;
          else
            ++b.other;
          ++b.fb[r.outcome];
        }
        break;
      case result::timeout:
        ++b.timeouts;
        break;
      case result::conn_error:
      case result::lost:
        ++b.errors;
        break;
      default:
        break;
    }
  }
  long run = 0;
  for (std::size_t i = 0; i < nb_; ++i) {
    run += delta[i];
    buckets_[i].inflight = run;
  }
  for (auto& b : buckets_) {
    if (b.lat.empty()) continue;
    b.p50 = pct(b.lat, 50);
    b.p99 = pct(b.lat, 99);
    b.max = static_cast<double>(b.lat.back()) / 1e6;
  }
}

void report::fill_rows() {
  rows_.assign(np_ + 2, agg{});
  for (const auto& r : reqs_) {
    rows_[r.phase].add_offered(r);
    rows_[np_ + 1].add_offered(r);
    if (r.done < 0) continue;
    const int w = phase_of_time(o_, r.done);
    rows_[w < 0 ? np_ : static_cast<std::size_t>(w)].add_done(r, o_.useful_ns);
    rows_[np_ + 1].add_done(r, o_.useful_ns);
  }
  for (auto& a : rows_) {  // sorted once: max = back()
    std::sort(a.lat2xx.begin(), a.lat2xx.end());
    std::sort(a.latfb.begin(), a.latfb.end());
    std::sort(a.lag.begin(), a.lag.end());
  }
}

// The p99 of the 2xx completed during phase 0, its first min(1 s, d/4) left out.
double report::baseline_p99() {
  const auto& p0 = o_.phases[0];
  const i64 skip = std::min<i64>(s_ns, p0.dur_ns / 4);
  std::vector<i64> v;
  for (const auto& r : reqs_) {
    if (r.res == result::answered && r.status >= 200 && r.status < 300 &&
        r.done >= p0.start_ns + skip && r.done < p0.start_ns + p0.dur_ns)
      v.push_back(r.done - r.sched);
  }
  return pct(v, 99);
}

// After a phase slower than the one before: the first bucket from which the 2xx p99 stays within
// --recovery-factor of the baseline for --recovery-hold (or to the phase's end).
void report::find_recovery() {
  recovery_.assign(np_, NAN);
  recovery_first_.assign(np_, NAN);
  recovery_applies_.assign(np_, false);
  const auto hold = static_cast<std::size_t>(std::max<i64>(1, o_.recovery_hold_ns / o_.bucket_ns));
  for (std::size_t p = 1; p < np_; ++p) {
    if (!(o_.phases[p].rps < o_.phases[p - 1].rps) || std::isnan(base_p99_)) continue;
    recovery_applies_[p] = true;
    const double thr = o_.recovery_factor * base_p99_;
    const std::size_t b0 =
        static_cast<std::size_t>((o_.phases[p].start_ns + o_.bucket_ns - 1) / o_.bucket_ns);
    const std::size_t bend = std::min(
        nb_,
        static_cast<std::size_t>((o_.phases[p].start_ns + o_.phases[p].dur_ns) / o_.bucket_ns));
    auto good = [&](std::size_t i) { return !buckets_[i].lat.empty() && buckets_[i].p99 <= thr; };
    for (std::size_t b = b0; b < bend; ++b) {
      if (std::isnan(recovery_first_[p]) && good(b))
        recovery_first_[p] = static_cast<double>(b - b0) * static_cast<double>(o_.bucket_ns) / 1e9;
      bool ok = true;
      for (std::size_t j = b; j < std::min(bend, b + hold); ++j) ok = ok && good(j);
      if (ok) {
        recovery_[p] = static_cast<double>(b - b0) * static_cast<double>(o_.bucket_ns) / 1e9;
        break;
      }
    }
  }
}

// --csv: one row per bucket.
void report::write_buckets(const std::string& file) {
  FILE* f = std::fopen(file.c_str(), "w");
  if (f == nullptr) {
    std::perror(file.c_str());
    return;
  }
  std::fprintf(f,
               "label,t_s,phase,offered_rps,sent,drops,done,s2xx,s503,other,timeouts,errors,useful,"
               "ok_rps,useful_rps,p50_ms,p99_ms,max_ms,inflight");
  for (int k = 1; k < outcome_slots; ++k) {
    std::fprintf(f, ",fb_%s",
                 k == outcome_unknown
                     ? "unknown"
                     : std::string(outcome_names[static_cast<std::size_t>(k)]).c_str());
  }
  std::fprintf(f, ",fb_none\n");
  const double bs = static_cast<double>(o_.bucket_ns) / 1e9;
  for (std::size_t i = 0; i < nb_; ++i) {
    const auto& b = buckets_[i];
    const int ph = phase_of_time(o_, static_cast<i64>(i) * o_.bucket_ns);
    std::fprintf(f, "%s,%.3f,%s,%.0f,%lu,%lu,%lu,%lu,%lu,%lu,%lu,%lu,%lu,%.0f,%.0f,%s,%s,%s,%ld",
                 o_.label.c_str(), static_cast<double>(i) * bs,
                 ph < 0 ? "drain" : std::to_string(ph).c_str(), static_cast<double>(b.offered) / bs,
                 b.sent, b.drops, b.done, b.s2xx, b.s503, b.other, b.timeouts, b.errors, b.useful,
                 static_cast<double>(b.s2xx) / bs, static_cast<double>(b.useful) / bs,
                 fmt(b.p50, 2).c_str(), fmt(b.p99, 2).c_str(), fmt(b.max, 2).c_str(), b.inflight);
    for (int k = 1; k < outcome_slots; ++k)
      std::fprintf(f, ",%lu", b.fb[static_cast<std::size_t>(k)]);
    std::fprintf(f, ",%lu\n", b.fb[0]);
  }
  std::fclose(f);
}

std::string report::summary_header() const {
  std::string hdr =
      "label,phase,start_s,dur_s,rate,offered,sent,drops,s2xx,goodput_rps,ok_p50_ms,ok_p99_ms,"
      "ok_max_ms,useful,useful_rps,useful_frac,s503,s4xx,s5xx_other,other_status,timeouts,"
      "conn_errors,lost,unfinished";
  for (int k = 1; k < outcome_slots; ++k)
    hdr +=
        ",fb_" + (k == outcome_unknown ? std::string("unknown")
                                       : std::string(outcome_names[static_cast<std::size_t>(k)]));
  hdr +=
      ",fb_none,fb_p50_ms,fb_p99_ms,lag_p99_ms,lag_max_ms,base_p99_ms,recovery_s,recovery_first_s,"
      "anom_2xx_with_outcome,anom_fallback_without_outcome,anom_unknown_outcome";
  return hdr;
}

std::string report::summary_row(std::size_t p) {
  auto& a = rows_[p];
  const double dur = row_dur(p);
  const double start = row_start(p);
  const double rate = p < np_ ? o_.phases[p].rps : per_s(static_cast<double>(a.offered), dur);
  std::string row =
      o_.label + "," + phase_name(p) + "," + fmt(start, 3) + "," + fmt(dur, 3) + "," +
      fmt(rate, 1) + "," + std::to_string(a.offered) + "," + std::to_string(a.sent) + "," +
      std::to_string(a.drops) + "," + std::to_string(a.s2xx) + "," +
      fmt(per_s(static_cast<double>(a.s2xx), dur), 1) + "," + fmt(pct(a.lat2xx, 50), 1) + "," +
      fmt(pct(a.lat2xx, 99), 1) + "," +
      fmt(a.lat2xx.empty() ? NAN : static_cast<double>(a.lat2xx.back()) / 1e6, 1) + "," +
      std::to_string(a.useful) + "," + fmt(per_s(static_cast<double>(a.useful), dur), 1) + "," +
      fmt(a.offered ? static_cast<double>(a.useful) / static_cast<double>(a.offered) : NAN, 3) +
      "," + std::to_string(a.s503) + "," + std::to_string(a.s4xx) + "," +
      std::to_string(a.s5xx_other) + "," + std::to_string(a.other_status) + "," +
      std::to_string(a.timeouts) + "," + std::to_string(a.conn_errors) + "," +
      std::to_string(a.lost) + "," + std::to_string(a.pending + a.not_sent);
  for (int k = 1; k < outcome_slots; ++k)
    row += "," + std::to_string(a.fb[static_cast<std::size_t>(k)]);
  row += "," + std::to_string(a.fb[0]);
  row += "," + fmt(pct(a.latfb, 50), 1) + "," + fmt(pct(a.latfb, 99), 1) + "," +
         fmt(pct(a.lag, 99), 2) + "," +
         fmt(a.lag.empty() ? NAN : static_cast<double>(a.lag.back()) / 1e6, 2) + "," +
         fmt(base_p99_, 1) + ",";
  if (p < np_ && recovery_applies_[p]) {
    row += (std::isnan(recovery_[p])
                ? std::string(">") + fmt(static_cast<double>(o_.phases[p].dur_ns) / 1e9 -
                                             static_cast<double>(o_.recovery_hold_ns) / 1e9,
                                         1)
                : fmt(recovery_[p], 1)) +
           ",";
    row += std::isnan(recovery_first_[p]) ? std::string("none") : fmt(recovery_first_[p], 1);
  } else {
    row += ",";
  }
  row += "," + std::to_string(a.anom_2xx_with_outcome) + "," +
         std::to_string(a.anom_fallback_without_outcome) + "," +
         std::to_string(a.anom_unknown_outcome);
  return row;
}

// --summary: one row per phase, then "drain" and "all".
void report::write_summary(const std::string& file) {
  FILE* f = std::fopen(file.c_str(), "w");
  if (f == nullptr) {
    std::perror(file.c_str());
    return;
  }
  std::fprintf(f, "%s\n", summary_header().c_str());
  for (std::size_t p = 0; p < np_ + 2; ++p) std::fprintf(f, "%s\n", summary_row(p).c_str());
  std::fclose(f);
}

// --raw: one row per request.
void report::write_raw(const std::string& file) {
  FILE* f = std::fopen(file.c_str(), "w");
  if (f == nullptr) return;
  std::fprintf(f, "sched_ms,sent_ms,done_ms,result,status,outcome\n");
  static const char* res_names[] = {"pending",    "answered", "drop",    "timeout",
                                    "conn_error", "lost",     "not_sent"};
  for (const auto& r : reqs_) {
    std::fprintf(
        f, "%.3f,%s,%s,%s,%u,%s\n", static_cast<double>(r.sched) / 1e6,
        r.sent < 0 ? "" : fmt(static_cast<double>(r.sent) / 1e6, 3).c_str(),
        r.done < 0 ? "" : fmt(static_cast<double>(r.done) / 1e6, 3).c_str(),
        res_names[static_cast<int>(r.res)], r.status,
        r.outcome == outcome_unknown ? "unknown" : std::string(outcome_names[r.outcome]).c_str());
  }
  std::fclose(f);
}

// stdout: the STEPGEN line bench/step/run.sh reads (t0_unix, cpu_s, wall_s), the connection
// counters, one line per phase row, and the outcome-header anomalies.
void report::print(const client& cl, int pre_open) {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const double cpu_s = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                       static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  std::printf(
      "STEPGEN label=%s t0_unix=%.6f requests=%zu open_max=%d opened=%lu preopened=%d cpu_s=%.2f "
      "wall_s=%.2f\n",
      o_.label.c_str(), cl.t0_unix, reqs_.size(), cl.c.open_max, cl.c.opened, pre_open, cpu_s,
      static_cast<double>(last_) / 1e9);
  std::printf(
      "stepgen %s: %zu requests over %.1f s; connections: %d preopened, %lu opened in all, max %d "
      "open; "
      "connect failures %lu, server closed idle %lu, Connection: close %lu, resent %lu, parse "
      "errors %lu, "
      "unexpected bytes %lu\n",
      o_.label.c_str(), reqs_.size(), static_cast<double>(total_ns_) / 1e9, pre_open, cl.c.opened,
      cl.c.open_max, cl.c.connect_fail, cl.c.server_closed_idle, cl.c.server_close_hdr,
      cl.c.retries, cl.c.parse_errors, cl.c.extra_bytes);
  std::printf("%-5s %6s %7s %6s %6s %9s %8s %8s %8s %8s %6s %6s %6s %6s %s\n", "phase", "rate",
              "offered", "drops", "2xx", "goodput/s", "p50ms", "p99ms", "maxms", "useful/s", "503",
              "tmo", "err", "lagp99", "fallbacks / recovery");
  for (std::size_t p = 0; p < np_ + 2; ++p) {
    auto& a = rows_[p];
    const double dur = row_dur(p);
    std::string fbs;
    for (int k = 0; k < outcome_slots; ++k) {
      if (a.fb[static_cast<std::size_t>(k)] == 0) continue;
      const std::string name = k == 0 ? "none"
                               : k == outcome_unknown
                                   ? "unknown"
                                   : std::string(outcome_names[static_cast<std::size_t>(k)]);
      fbs += name + "=" + std::to_string(a.fb[static_cast<std::size_t>(k)]) + " ";
    }
    if (p < np_ && recovery_applies_[p]) {
      fbs += "| recovery " +
             (std::isnan(recovery_[p]) ? std::string("not within phase")
                                       : fmt(recovery_[p], 1) + " s") +
             " (first bucket " +
             (std::isnan(recovery_first_[p]) ? std::string("none")
                                             : fmt(recovery_first_[p], 1) + " s") +
             ", baseline p99 " + fmt(base_p99_, 1) + " ms)";
    }
    std::printf("%-5s %6.0f %7lu %6lu %6lu %9.1f %8s %8s %8s %8.1f %6lu %6lu %6lu %6s %s\n",
                phase_name(p).c_str(),
                p < np_ ? o_.phases[p].rps : per_s(static_cast<double>(a.offered), dur), a.offered,
                a.drops, a.s2xx, per_s(static_cast<double>(a.s2xx), dur),
                fmt(pct(a.lat2xx, 50)).c_str(), fmt(pct(a.lat2xx, 99)).c_str(),
                fmt(a.lat2xx.empty() ? NAN : static_cast<double>(a.lat2xx.back()) / 1e6).c_str(),
                per_s(static_cast<double>(a.useful), dur), a.s503, a.timeouts,
                a.conn_errors + a.lost, fmt(pct(a.lag, 99), 2).c_str(), fbs.c_str());
  }
  const auto& all = rows_[np_ + 1];
  if (all.anom_2xx_with_outcome || all.anom_fallback_without_outcome || all.anom_unknown_outcome) {
    std::printf(
        "ANOMALY: 2xx carrying a fallback X-QoS-Outcome: %lu; non-2xx without X-QoS-Outcome: %lu; "
        "unknown X-QoS-Outcome values: %lu\n",
        all.anom_2xx_with_outcome, all.anom_fallback_without_outcome, all.anom_unknown_outcome);
    for (const auto& [v, n] : cl.c.unknown_outcomes)
      std::printf("  unknown outcome '%s' x%d\n", v.c_str(), n);
  }
}

// SIGINT/SIGTERM stop the schedule early (the reports are still written); a peer's reset must
// not kill us through SIGPIPE.
void install_signal_handlers() {
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// Raises the open-files limit to the hard one; false (after saying why) when that is too few.
bool raise_fd_limit(int max_conns) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < static_cast<rlim_t>(max_conns) + 32) {
      std::fprintf(stderr, "stepgen: open-files limit %llu < max-conns %d + 32\n",
                   static_cast<unsigned long long>(rl.rlim_cur), max_conns);
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  install_signal_handlers();
  if (!raise_fd_limit(o.max_conns)) return 2;

  client cl(o);
  cl.build_schedule();
  if (o.preconnect > 0) cl.preconnect(o.preconnect);
  const int pre_open = cl.c.open_now;
  cl.run();

  report rep(o, cl.reqs);
  if (!o.csv_file.empty()) rep.write_buckets(o.csv_file);
  if (!o.summary_file.empty()) rep.write_summary(o.summary_file);
  if (!o.raw_file.empty()) rep.write_raw(o.raw_file);
  rep.print(cl, pre_open);
  return 0;
}

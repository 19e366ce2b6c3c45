#include "qos/http/connection.hpp"
#include "qos/http/detail/reactor_call.hpp"

#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>

#include <pistache/async.h>
#include <pistache/http_header.h>
#include <pistache/mime.h>
#include <pistache/peer.h>
#include <pistache/stream.h>
#include <pistache/transport.h>

#include "qos/http/detail/request_framing.hpp"
#include "qos/ops/log.hpp"

namespace qos {

namespace http = Pistache::Http;
namespace tcp = Pistache::Tcp;
using steady = std::chrono::steady_clock;

namespace {

// The key of a connection's state in Pistache's per-peer data.
const std::string connection_key = "qos.connection";

// Bytes the Pistache parser needs beyond max_request_size: a decoded chunked body is fed to it
// again as one chunk ("<hex>\r\n" ... "\r\n0\r\n\r\n").
constexpr std::size_t parser_slack = 64;

// Pistache's own timeouts judge a connection by its parser's time() (reset when a request is
// dispatched, never on input), so they cut long handlers and spare slow headers (defect 12).
// Resetting the idle parser this often keeps them from ever firing under this layer.
constexpr auto parser_refresh = std::chrono::seconds(1);

// How often a clone sweeps its connections: an eighth of the shortest timeout, between 10 and
// 250 ms. A marker not back after one period is overdue (Pistache defect 16, in sweep()).
std::chrono::milliseconds sweep_period_of(const connection_options& o) {
  const auto shortest = std::min(
      {o.header_timeout, o.body_timeout, o.keepalive_timeout, o.send_timeout, o.linger_timeout});
  return std::clamp<std::chrono::milliseconds>(shortest / 8, std::chrono::milliseconds(10),
                                               std::chrono::milliseconds(250));
}

// IMF-fixdate of now (RFC 9110 5.6.7), made once per second per thread. No stdio: this runs on
// fiber stacks, inside Pistache's serialization of a response.
std::string_view http_date() {
  static constexpr char days[] = "SunMonTueWedThuFriSat";
  static constexpr char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  thread_local std::time_t made = -1;
  thread_local char text[29];
  const std::time_t now = std::time(nullptr);
  if (now != made) {
    std::tm t{};
    gmtime_r(&now, &t);
    auto two = [](char* at, int v) {
      at[0] = static_cast<char>('0' + v / 10 % 10);
      at[1] = static_cast<char>('0' + v % 10);
    };
    std::memcpy(text, days + 3 * (t.tm_wday % 7), 3);
    std::memcpy(text + 3, ", ", 2);
    two(text + 5, t.tm_mday);
    text[7] = ' ';
    std::memcpy(text + 8, months + 3 * (t.tm_mon % 12), 3);
    text[11] = ' ';
    two(text + 12, (t.tm_year + 1900) / 100);
    two(text + 14, (t.tm_year + 1900) % 100);
    text[16] = ' ';
    two(text + 17, t.tm_hour);
    text[19] = ':';
    two(text + 20, t.tm_min);
    text[22] = ':';
    two(text + 23, t.tm_sec);
    std::memcpy(text + 25, " GMT", 4);
    made = now;
  }
  return {text, sizeof text};
}

class date_header : public http::Header::Header {
 public:
  const char* name() const override { return "Date"; }
  void write(std::ostream& os) const override { os << http_date(); }
#ifdef SAFE_HEADER_CAST
  uint64_t hash() const override {
    return 0;
  }
#endif
};

}  // namespace

// What the clones of one handler share.
struct connection_handler::shared {
  std::atomic<std::size_t> open{0};
  std::atomic<std::uint64_t> closed{0};  // ever: a listener's count is its accepted - closed
  std::atomic<std::uint64_t> overdue_markers{0};
  std::atomic<bool> keep_alive_ended{false};  // end_keep_alive(): every response is the last
  // Every open connection's descriptor: its transport and the inode that names it. Pistache
  // closes a descriptor only after onDisconnection, which takes the mutex first: under it, a
  // listed descriptor is still its connection's (cut_stalled_writes).
  struct socket_entry {
    const tcp::Transport* transport;
    dev_t dev;
    ino_t ino;
  };
  std::mutex sockets_mutex;
  std::unordered_map<int, socket_entry> sockets;
};

// One client connection, owned by its Peer's data (it dies with the Peer) and by the sentinel
// of its request in flight. Everything but `flight` and `wrote` belongs to the reactor thread.
struct connection_handler::connection {
  // flight: the request handed to the inner handler. running → done when its writer dies (any
  // thread); the reactor turns running into watched when it needs to hear of that (bytes wait
  // behind it, or the connection closes after it): the writer's death then posts a marker.
  enum : std::uint8_t { idle, running, watched, done };
  // reading: framing the next request; in_flight: one handed on; draining: waiting for the
  // client to read the responses queued so far; closing: the last response is out or going.
  enum class phase : std::uint8_t { reading, in_flight, draining, closing };
  enum class timer : std::uint8_t { none, header, body, keepalive, send, linger };

  connection(connection_handler* owner_, tcp::Transport* transport_,
             const std::shared_ptr<tcp::Peer>& p,
             std::shared_ptr<connection_handler::shared> counts_, std::size_t max_request)
      : owner(owner_),
        transport(transport_),
        reactor(std::this_thread::get_id()),
        peer(p),
        fd(p->fd()),
        counts(std::move(counts_)),
        framer(max_request) {
    struct stat st {};
    if (::fstat(fd, &st) == 0) {
      dev = st.st_dev;
      ino = st.st_ino;
    }
    counts->open.fetch_add(1, std::memory_order_relaxed);
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;
  ~connection() { uncount(); }

  void uncount() noexcept {
    if (counted) {
      counts->open.fetch_sub(1, std::memory_order_relaxed);
      counts->closed.fetch_add(1, std::memory_order_acq_rel);
    }
    counted = false;
  }

  // The socket is still this connection's. File descriptors are reused at once, so a late
  // action on `fd` could hit another client (the same trap as a held Peer, trap 2): the
  // socket's inode says whether the number still names this one. Reactor thread only: only
  // that thread closes it (Pistache, after it saw the end of the stream).
  bool owns_fd() const {
    if (closed || peer.expired()) return false;
    struct stat st {};
    return ::fstat(fd, &st) == 0 && st.st_ino == ino && st.st_dev == dev;
  }

  connection_handler* const owner;  // the clone on whose reactor thread this lives
  tcp::Transport* const transport;  // its transport (alive while requests are: trap 8)
  const std::thread::id reactor;
  const std::weak_ptr<tcp::Peer> peer;  // never a shared_ptr: a held Peer keeps its fd number
  const int fd;
  dev_t dev = 0;
  ino_t ino = 0;
  const std::shared_ptr<connection_handler::shared> counts;
  bool counted = true;
  std::shared_ptr<http::RequestParser> parser;  // Pistache's, in the Peer's data
  steady::time_point parser_touched = steady::now();

  detail::request_framer framer;
  std::string in;          // received, not yet handed on
  std::size_t in_off = 0;  // in[in_off..] is the stream from the current request on
  phase state = phase::reading;
  timer kind = timer::header;
  steady::time_point deadline;
  bool fresh = true;  // no request yet: the header timeout runs from the accept
  bool continue_sent = false;
  bool close_after = false;            // the request in flight is the connection's last
  bool overflow = false;               // more bytes came behind it than we hold: close after it
  std::size_t unsent = 0;              // responses queued since the last confirmed write
  steady::time_point marker_posted{};  // draining or closing: when its last marker went out
  std::uint64_t markers = 0;           // markers posted
  std::uint64_t awaited_marker = 0;    // the first marker posted for the current wait
  bool fin_sent = false;
  bool torn_down = false;
  bool closed = false;  // Pistache saw the end of it (onDisconnection)

  std::uint64_t flight_id = 0;
  std::atomic<std::uint8_t> flight{idle};
  std::atomic<bool> wrote{false};  // the flight's response head went out
  // The flight's response is the connection's last (close_after, or an overflow while it ran):
  // read by its Connection header when the head is serialized, on whatever thread answers.
  std::atomic<bool> last{false};
};

// The Connection header of every writer handed on: says `close` when the response is the
// connection's last as it is serialized, so an overflow that comes while the handler runs still
// labels the answer before the close. A Header::Connection, so typed lookups stay sound; its
// control() is the label at dispatch.
struct connection_label final : http::Header::Connection {
  explicit connection_label(std::shared_ptr<connection_handler::connection> c)
      : http::Header::Connection(c->last.load(std::memory_order_relaxed)
                                     ? http::ConnectionControl::Close
                                     : http::ConnectionControl::KeepAlive),
        conn(std::move(c)) {}
  void write(std::ostream& os) const override {
    bool last = conn->last.load(std::memory_order_acquire);
    if (!last && conn->counts->keep_alive_ended.load(std::memory_order_acquire)) {
      // Keep-alive ended while the handler ran: this answer is the connection's last, and the
      // reactor must hear of its end to close after it (running → watched: the writer's end
      // then wakes it).
      last = true;
      conn->last.store(true, std::memory_order_release);
      std::uint8_t running = connection_handler::connection::running;
      conn->flight.compare_exchange_strong(running, connection_handler::connection::watched,
                                           std::memory_order_acq_rel);
    }
    // Pistache's own words ("Close", "Keep-Alive").
    http::Header::Connection(last ? http::ConnectionControl::Close
                                  : http::ConnectionControl::KeepAlive)
        .write(os);
  }
  const std::shared_ptr<connection_handler::connection> conn;
};

// Rides in the writer of every request handed on, as its Date header: Pistache calls write()
// when the response head is serialized, and the writer (or the stream it became) destroys it
// when no more can be written for this request. That is the only end-of-response signal
// Pistache 0.0.5 gives a connection (its ResponseWriter is final and says nothing on send).
struct connection_sentinel final : http::Header::Header {
  connection_sentinel(std::shared_ptr<connection_handler::connection> c, std::uint64_t id)
      : conn(std::move(c)), flight(id) {}
  connection_sentinel(const connection_sentinel&) = delete;
  connection_sentinel& operator=(const connection_sentinel&) = delete;

  ~connection_sentinel() override {
    using C = connection_handler::connection;
    if (conn->flight.exchange(C::done, std::memory_order_acq_rel) == C::watched) {
      connection_handler::wake(conn, flight);
    }
  }
  const char* name() const override { return "Date"; }
  void write(std::ostream& os) const override {
    conn->wrote.store(true, std::memory_order_release);
    os << http_date();
  }
#ifdef SAFE_HEADER_CAST
  uint64_t hash() const override {
    return 0;
  }
#endif

  const std::shared_ptr<connection_handler::connection> conn;
  const std::uint64_t flight;
};

connection_options connection_options_of(const config::server_config& s) {
  connection_options o;
  o.header_timeout = s.header_timeout;
  o.body_timeout = s.body_timeout;
  o.keepalive_timeout = s.keepalive_timeout;
  o.send_timeout = s.send_timeout;
  return o;
}

connection_handler::connection_handler(std::shared_ptr<http::Handler> inner,
                                       connection_options options)
    : inner_(std::move(inner)),
      options_(std::move(options)),
      shared_(std::make_shared<shared>()),
      sweep_period_(sweep_period_of(options_)) {
  if (!inner_) throw std::invalid_argument("connection_handler: no inner handler");
}

connection_handler::connection_handler(const connection_handler& other)
    : http::Handler(other),
      inner_(std::static_pointer_cast<http::Handler>(other.inner_->clone())),
      options_(other.options_),
      shared_(other.shared_),
      sweep_period_(other.sweep_period_) {
  // The inner handler's parser (made in its onConnection) gets our whole request, re-framed.
  inner_->setMaxRequestSize(getMaxRequestSize() + parser_slack);
  inner_->setMaxResponseSize(getMaxResponseSize());
}

connection_handler::~connection_handler() {
  // A sweep timer still armed when the transport goes: its continuation will never run.
  if (sweep_armed_ && sweep_fd_ >= 0) ::close(sweep_fd_);
}

std::shared_ptr<tcp::Handler> connection_handler::clone() const {
  return std::make_shared<connection_handler>(*this);
}

void connection_handler::onRequest(const http::Request& request, http::ResponseWriter response) {
  inner_->onRequest(request, std::move(response));
}

std::size_t connection_handler::connections() const noexcept {
  return shared_->open.load(std::memory_order_relaxed);
}

std::uint64_t connection_handler::closed_connections() const noexcept {
  return shared_->closed.load(std::memory_order_acquire);
}

std::size_t connection_handler::cut_stalled_writes(const tcp::Transport* transport) {
  std::size_t cut = 0;
  std::lock_guard lock(shared_->sockets_mutex);
  for (const auto& [fd, entry] : shared_->sockets) {
    if (entry.transport != transport) continue;
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, 0) < 0 || (p.revents & POLLOUT) != 0) continue;  // room: not held there
    struct stat st {};
    if (::fstat(fd, &st) != 0 || st.st_ino != entry.ino || st.st_dev != entry.dev) continue;
    // Both ways: the send in the busy loop fails (EPIPE) and ends it, and the end of the stream
    // is readable, so Pistache removes the peer at its next turn (a write-only shutdown would
    // leave it a write event it has no data for, which it throws on).
    ::shutdown(fd, SHUT_RDWR);
    ++cut;
  }
  return cut;
}

void connection_handler::end_keep_alive() noexcept {
  shared_->keep_alive_ended.store(true, std::memory_order_release);
}

std::uint64_t connection_handler::overdue_markers() const noexcept {
  return shared_->overdue_markers.load(std::memory_order_relaxed);
}

void connection_handler::onConnection(const std::shared_ptr<tcp::Peer>& peer) {
  // The inner handler sets the peer up as it would alone (Http::Handler puts its parser in
  // the Peer's data); Pistache's idle check reads that parser, so there must be one.
  static_cast<tcp::Handler&>(*inner_).onConnection(peer);
  if (!peer->tryGetData(http::Handler::ParserData)) {
    peer->putData(http::Handler::ParserData,
                  std::make_shared<http::RequestParser>(getMaxRequestSize() + parser_slack));
  }
  auto c = std::make_shared<connection>(this, transport(), peer, shared_, getMaxRequestSize());
  c->parser = http::Handler::getParser(peer);
  c->deadline = steady::now() + options_.header_timeout;
  peer->putData(connection_key, c);
  {
    std::lock_guard lock(shared_->sockets_mutex);
    shared_->sockets[c->fd] = {transport(), c->dev, c->ino};
  }
  live_.push_back(c);
  arm_sweep();
}

void connection_handler::onDisconnection(const std::shared_ptr<tcp::Peer>& peer) {
  if (auto data = peer->tryGetData(connection_key)) {
    auto c = std::static_pointer_cast<connection>(data);
    c->closed = true;
    c->uncount();
    std::lock_guard lock(shared_->sockets_mutex);
    if (auto it = shared_->sockets.find(c->fd);
        it != shared_->sockets.end() && it->second.ino == c->ino) {
      shared_->sockets.erase(it);
    }
  }
  static_cast<tcp::Handler&>(*inner_).onDisconnection(peer);
}

void connection_handler::onInput(const char* buffer, std::size_t len,
                                 const std::shared_ptr<tcp::Peer>& peer) {
  // Replaces Http::Handler::onInput, which parses one request per read and then drops every
  // byte after it: pipelined requests vanish (Pistache 0.0.5, defect 10).
  auto data = peer->tryGetData(connection_key);
  if (!data) return;
  auto c = std::static_pointer_cast<connection>(data);
  if (c->state == connection::phase::closing || c->overflow) return;  // read and dropped
  if (c->state == connection::phase::draining) {
    if (c->in.size() - c->in_off + len > options_.max_pipelined_bytes) {
      c->overflow = true;
    } else {
      c->in.append(buffer, len);
    }
    return;  // after_writes goes on once the queued responses are written
  }
  if (c->state == connection::phase::in_flight) {
    if (c->in.size() - c->in_off + len > options_.max_pipelined_bytes) {
      // More than we hold for later. Never a silent drop: the response in progress is the
      // last; the client sees the close and retries the requests it sent after it.
      c->overflow = true;
      c->last.store(true, std::memory_order_release);
    } else {
      c->in.append(buffer, len);
    }
    std::uint8_t expected = connection::running;
    if (c->flight.compare_exchange_strong(expected, connection::watched,
                                          std::memory_order_acq_rel) ||
        expected == connection::watched) {
      return;  // its writer's end will post a marker
    }
    finish_flight(c);  // answered meanwhile, from another thread
  } else {
    c->in.append(buffer, len);
  }
  serve(c);
}

void connection_handler::serve(const std::shared_ptr<connection>& c) {
  while (c->state == connection::phase::reading) {
    if (c->unsent >= options_.max_unsent_responses) {
      // Pistache queues every response in memory, however many the client leaves unread:
      // hand nothing more on until the queue is on the wire (backpressure, as nginx's
      // blocked write).
      c->state = connection::phase::draining;
      c->kind = connection::timer::send;
      c->deadline = steady::now() + options_.send_timeout;
      c->marker_posted = steady::now();
      c->awaited_marker = post_marker(c);
      return;
    }
    const std::string_view data = std::string_view(c->in).substr(c->in_off);
    const auto status = c->framer.next(data);
    if (status == detail::framing_status::error) {
      reject(c, c->framer.error_status(), c->framer.error_reason());
      return;
    }
    if (status == detail::framing_status::need_more) {
      if (c->in_off > 0 && c->in_off * 2 >= c->in.size()) {
        c->in.erase(0, c->in_off);  // framer offsets are relative to the request: unchanged
        c->in_off = 0;
        if (c->in.empty() && c->in.capacity() > 16 * 1024) std::string().swap(c->in);
      }
      if (c->framer.awaiting_continue() && !c->continue_sent &&
          c->framer.request().minor_version >= 1) {
        send_continue(c);
      }
      const auto want = !c->framer.started()
                            ? (c->fresh ? connection::timer::header : connection::timer::keepalive)
                        : c->framer.head_complete() ? connection::timer::body
                                                    : connection::timer::header;
      if (want != c->kind) {
        c->kind = want;
        c->deadline =
            steady::now() + (want == connection::timer::body        ? options_.body_timeout
                             : want == connection::timer::keepalive ? options_.keepalive_timeout
                                                                    : options_.header_timeout);
      }
      return;
    }
    if (!dispatch(c)) return;  // in flight; its end brings us back
  }
}

// Hands the complete request at the front of the buffer to the inner handler. Returns true
// when it was answered before returning (serve goes on with the next one).
bool connection_handler::dispatch(const std::shared_ptr<connection>& c) {
  auto peer = c->peer.lock();
  if (!peer) {
    c->state = connection::phase::closing;
    return false;
  }
  const std::string_view data = std::string_view(c->in).substr(c->in_off);
  const detail::framed_request framed = c->framer.request();
  const std::string_view body = c->framer.body(data);

  // Pistache's parser gets exactly one request: head as received, body as one chunk if it
  // came chunked. Its own framing never sees a second request or a bad length: Content-Length
  // "-1" or 2^70 went to std::stoull and came back as a 500 with e.what() (defect 14).
  auto& parser = *c->parser;  // reset: after its last request, or by the sweep
  bool fed = parser.feed(data.data() + framed.head_begin, framed.head_size);
  if (framed.chunked) {
    if (!body.empty()) {
      char size[32];
      const int n = std::snprintf(size, sizeof size, "%zx\r\n", body.size());
      fed = fed && parser.feed(size, static_cast<std::size_t>(n)) &&
            parser.feed(body.data(), body.size()) && parser.feed("\r\n", 2);
    }
    fed = fed && parser.feed("0\r\n\r\n", 5);
  } else {
    fed = fed && parser.feed(body.data(), body.size());
  }
  // Pistache 0.0.5 reads from its buffer with C string functions (strtol for chunk sizes,
  // strcmp in Expect::parseRaw), and the buffer holds no NUL: they may scan past the bytes fed
  // (AddressSanitizer reports the reads). A NUL after the request ends every such scan inside
  // the buffer; Pistache drops the bytes after a complete request (defect 10), so the NUL
  // reaches nothing else.
  fed = fed && parser.feed("", 1);
  c->in_off += framed.consumed;
  c->framer.reset();
  c->kind = connection::timer::none;
  c->continue_sent = false;
  c->fresh = false;

  int status = 0;
  const char* reason = "";
  if (!fed) {
    status = 413;
    reason = "request too large";
  } else {
    try {
      if (parser.parse() != http::Private::State::Done) {
        status = 400;
        reason = "unparsable request";
      }
    } catch (const http::HttpError& e) {
      status = e.code();  // an unknown method, an HTTP version Pistache does not take, ...
      reason = "rejected by the HTTP parser";
    } catch (const std::exception&) {
      status = 400;
      reason = "unparsable request";
    }
  }
  if (status != 0) {
    parser.reset();
    reject(c, status, reason);
    return false;
  }

  http::Request& request = parser.request;
  request.copyAddress(peer->address());
  // Pistache answers `Connection: Close` to a request without a Connection header and then
  // leaves the socket open (defect 11): this layer decides, says so, and closes. A response
  // to HEAD carries the body Pistache's handlers write anyway: it ends the connection, so the
  // stray bytes cannot be read as the next response.
  c->close_after = framed.close || framed.head_method ||
                   shared_->keep_alive_ended.load(std::memory_order_acquire);
  if (c->close_after) {
    // The handler sees the decision in the request (qos::gate::keep_alive then leaves the
    // response's Connection header alone); the raw headers keep what the client sent.
    auto asked = request.headers().tryGet<http::Header::Connection>();
    if (!asked || asked->control() != http::ConnectionControl::Close) {
      request.headers().remove<http::Header::Connection>();
      request.headers().add<http::Header::Connection>(http::ConnectionControl::Close);
    }
  }
  http::ResponseWriter writer(request.version(), transport(), this, peer);
  c->last.store(c->close_after, std::memory_order_relaxed);
  writer.headers().add(std::make_shared<connection_label>(c));
  const std::uint64_t id = ++c->flight_id;
  writer.headers().add(std::make_shared<connection_sentinel>(c, id));
  c->wrote.store(false, std::memory_order_relaxed);
  c->flight.store(connection::running, std::memory_order_release);
  c->state = connection::phase::in_flight;
  peer.reset();  // the writer keeps a weak one; nothing here outlives the call

  try {
    inner_->onRequest(request, std::move(writer));
  } catch (const std::exception& e) {
    // Http::Handler::onInput would answer 500 with e.what(); here an unanswered request gets
    // a 500 when its writer is gone (finish_flight), an answered one keeps its answer.
    logger()->warn("qos: request handler threw: {}", e.what());
  } catch (...) {
    logger()->warn("qos: request handler threw");
  }
  parser.reset();

  std::uint8_t expected = connection::running;
  const bool behind = c->close_after || c->in.size() > c->in_off;
  if (c->flight.load(std::memory_order_acquire) != connection::done &&
      (!behind || c->flight.compare_exchange_strong(expected, connection::watched,
                                                    std::memory_order_acq_rel))) {
    return false;  // still running; onInput, the sweep or a marker sees its end
  }
  finish_flight(c);
  return c->state == connection::phase::reading;
}

// The request in flight is over (its writer is gone). Its response was queued on the
// transport before that, so whatever is sent from now on goes out after it.
void connection_handler::finish_flight(const std::shared_ptr<connection>& c) {
  c->flight.store(connection::idle, std::memory_order_relaxed);
  c->state = connection::phase::reading;
  c->kind = connection::timer::none;
  ++c->unsent;
  if (!c->wrote.load(std::memory_order_acquire)) {
    // The handler dropped its writer (or threw) without answering: Pistache would leave the
    // client waiting forever. Answer for it, and close: we cannot know what it did instead.
    reject(c, 500, "the handler did not answer");
    return;
  }
  // `last`: the response said close (keep-alive ended while its handler ran).
  if (c->close_after || c->overflow || c->last.load(std::memory_order_acquire)) {
    close_after_writes(c);
  }
}

// An error of ours: the answer, then the close, as nginx does for bad requests.
void connection_handler::reject(const std::shared_ptr<connection>& c, int status,
                                const char* reason) {
  auto peer = c->peer.lock();
  if (!peer || !c->owns_fd()) {
    c->state = connection::phase::closing;
    return;
  }
  logger()->debug("qos: {} {} to {}", status, reason, peer->address().host());
  try {
    http::ResponseWriter w(http::Version::Http11, transport(), this, peer);
    w.headers().add<http::Header::Connection>(http::ConnectionControl::Close);
    w.headers().add(std::make_shared<date_header>());
    const auto code = static_cast<http::Code>(status);
    w.send(code, http::codeString(code) + std::string(": ") + reason + "\n",
           http::Mime::MediaType(http::Mime::Type::Text, http::Mime::Subtype::Plain));
  } catch (const std::exception& e) {
    logger()->debug("qos: {} not sent: {}", status, e.what());
  }
  close_after_writes(c);
}

void connection_handler::close_after_writes(const std::shared_ptr<connection>& c) {
  c->state = connection::phase::closing;
  c->kind = connection::timer::linger;
  c->deadline = steady::now() + options_.linger_timeout;
  c->marker_posted = steady::now();
  c->awaited_marker = post_marker(c);
}

// On the reactor thread. `flight` 0: a marker of the reactor's own (post_marker), and every
// byte queued for the connection before it is written (the transport writes a connection's
// queue in order, a zero-length write included). Otherwise: the request in flight `flight`
// is over (wake); its response is queued, not necessarily written.
void connection_handler::after_writes(const std::shared_ptr<connection>& c, std::uint64_t flight) {
  if (c->closed || c->torn_down) return;
  if (flight != 0) {
    if (c->state == connection::phase::in_flight && flight == c->flight_id &&
        c->flight.load(std::memory_order_acquire) == connection::done) {
      finish_flight(c);
      serve(c);
    }
    return;  // a late wake: the sweep or onInput saw the end first
  }
  if (c->state == connection::phase::draining) {
    c->unsent = 0;  // the client read what it was sent
    if (c->overflow) {
      close_after_writes(c);
      return;
    }
    c->state = connection::phase::reading;
    c->kind = connection::timer::none;
    serve(c);
  } else if (c->state == connection::phase::closing && !c->fin_sent && c->owns_fd()) {
    // Our side is done: FIN after the response. The client reads it, then its end of stream,
    // and closes; Pistache then closes the socket. Reading goes on meanwhile (and is
    // dropped), so a close never meets unread bytes and resets the response away.
    ::shutdown(c->fd, SHUT_WR);
    c->fin_sent = true;
    c->deadline = steady::now() + options_.linger_timeout;
  }
}

// Reactor thread: queues an empty write behind everything queued for the connection so far;
// its completion brings after_writes, on the reactor thread (a write queued there cannot
// complete before this returns to the event loop). Pistache offers no other way to learn that
// a response was written. A marker older than the wait it comes back to (one posted again by
// the sweep, defect 16, whose completion came after the original's) says nothing of the
// responses queued since, and is ignored.
std::uint64_t connection_handler::post_marker(const std::shared_ptr<connection>& c) {
  const std::uint64_t number = ++c->markers;
  auto peer = c->peer.lock();  // for this call only (trap 2)
  if (!peer) return number;
  try {
    peer->send(Pistache::RawBuffer(std::string(), 0))
        .then(
            [c, number](ssize_t) {
              if (std::this_thread::get_id() != c->reactor || number < c->awaited_marker) return;
              const auto& drop = c->owner->options_.drop_marker;
              if (drop && drop()) return;
              c->owner->after_writes(c, 0);
            },
            [](std::exception_ptr) {});
  } catch (...) {
    // The peer lost its transport (shutting down): nothing left to do for it.
  }
  return number;
}

void connection_handler::mark_queued_writes(tcp::Transport& transport,
                                            const std::shared_ptr<void>& token) {
  for (const auto& peer : transport.getAllPeer()) {
    // Only where more can be written: after our FIN (or a teardown) a write fails with EPIPE,
    // and Pistache then forgets the connection's write data but not its interest in writes;
    // the write edge that follows finds no data and throws on the reactor thread.
    if (auto data = peer->tryGetData(connection_key)) {
      const auto c = std::static_pointer_cast<connection>(data);
      if (c->fin_sent || c->torn_down || c->closed) continue;
    }
    try {
      peer->send(Pistache::RawBuffer(std::string(), 0))
          .then([token](ssize_t) {}, [token](std::exception_ptr) {});
    } catch (...) {
      // The peer lost its transport: nothing of it to wait for.
    }
  }
}

// The same from another thread. There the write may complete before then() is attached (the
// reactor preempts the thread that woke it), and Pistache then runs the continuation at once
// on the calling thread: never reactor work there, never a retry loop (on a fiber that
// recursion overflowed the stack). The rare late one goes by wake_by_timer.
void connection_handler::wake(const std::shared_ptr<connection>& c, std::uint64_t flight) {
  auto peer = c->peer.lock();
  if (!peer) return;
  try {
    peer->send(Pistache::RawBuffer(std::string(), 0))
        .then(
            [c, flight](ssize_t) {
              if (std::this_thread::get_id() == c->reactor) {
                c->owner->after_writes(c, flight);
              } else {
                wake_by_timer(c, flight);
              }
            },
            [](std::exception_ptr) {});
  } catch (...) {
  }
}

bool detail::call_on_reactor(tcp::Transport& transport, std::function<void()> fn) {
  const int fd = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0) return false;
  try {
    Pistache::Async::Deferred<uint64_t> deferred;
    Pistache::Async::Promise<uint64_t> tick(
        [&](Pistache::Async::Deferred<uint64_t> d) { deferred = std::move(d); });
    tick.then(
        [fn = std::move(fn), fd](uint64_t) {
          ::close(fd);
          fn();
        },
        [fd](std::exception_ptr) { ::close(fd); });
    transport.armTimer(fd, std::chrono::milliseconds(1), std::move(deferred));
    return true;
  } catch (...) {
    ::close(fd);
    return false;
  }
}

// Slower than the marker; used when that one was late. Without a timer the sweep finds the
// flight over.
void connection_handler::wake_by_timer(const std::shared_ptr<connection>& c, std::uint64_t flight) {
  if (c->peer.expired()) return;
  detail::call_on_reactor(*c->transport, [c, flight] {
    if (std::this_thread::get_id() == c->reactor) c->owner->after_writes(c, flight);
  });
}

void connection_handler::send_continue(const std::shared_ptr<connection>& c) {
  auto peer = c->peer.lock();
  if (!peer) return;
  static const std::string interim = "HTTP/1.1 100 Continue\r\n\r\n";
  try {
    peer->send(Pistache::RawBuffer(interim, interim.size()));
    c->continue_sent = true;
  } catch (...) {
  }
}

// A timer on the reactor, re-armed while the clone has connections: a connection costs no
// syscall per request for its timeouts, and an idle reactor wakes for nothing.
void connection_handler::arm_sweep() {
  if (sweep_armed_) return;
  const int fd = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0) {
    logger()->warn("qos: no timer for connection timeouts (timerfd_create failed)");
    return;  // tried again at the next connection
  }
  const auto period = sweep_period_;
  sweep_armed_ = true;
  sweep_fd_ = fd;
  try {
    Pistache::Async::Promise<uint64_t> tick([&](Pistache::Async::Deferred<uint64_t> d) {
      transport()->armTimer(fd, period, std::move(d));
    });
    // The old timer fd closes after the next one is made, so they never share a number
    // while the transport still lists the old one. (The new timer enters the transport's
    // timer map while its onReady holds an iterator into it: a node-based map keeps it.)
    tick.then(
        [this, fd](uint64_t) {
          sweep_armed_ = false;
          sweep();
          if (!live_.empty()) arm_sweep();
          ::close(fd);
        },
        [this, fd](std::exception_ptr) {
          sweep_armed_ = false;
          ::close(fd);
        });
  } catch (const std::exception& e) {
    sweep_armed_ = false;
    ::close(fd);
    logger()->warn("qos: connection timer not armed: {}", e.what());
  }
}

// Pistache 0.0.5, defect 16: Transport::onReady handles a peer's event as readable *or*
// writable; with edge-triggered polling, an event that is both (the client's next request
// arriving as a queued write is registered) loses its write edge, and what Pistache holds for
// the connection, the marker behind it included, waits for a next write. A draining or closing
// connection makes none (about once in a million responses at 15,000/s the request behind it
// waited 60 s). Another marker registers the write again, for one empty write. Only with
// nothing left in the socket's send queue: then the client read everything the kernel had,
// the marker is overdue and the client is not the reason; while bytes wait there, a client
// that reads them brings a write edge of its own, and one that does not meets send_timeout.
// A marker posted a sweep period ago has had every turn of the event loop since to come back.
void connection_handler::repost_overdue_marker(const std::shared_ptr<connection>& c,
                                               steady::time_point now) {
  int unsent_bytes = -1;
  if (!c->owns_fd() || ::ioctl(c->fd, SIOCOUTQ, &unsent_bytes) != 0 || unsent_bytes != 0) return;
  shared_->overdue_markers.fetch_add(1, std::memory_order_relaxed);
  logger()->warn(
      "qos: a connection's write marker is {} ms overdue; posting another",
      std::chrono::duration_cast<std::chrono::milliseconds>(now - c->marker_posted).count());
  c->marker_posted = now;
  post_marker(c);
}

void connection_handler::sweep() {
  const auto now = steady::now();
  for (std::size_t i = 0; i < live_.size();) {
    auto c = live_[i].lock();
    if (!c || c->closed) {
      live_[i] = std::move(live_.back());
      live_.pop_back();
      continue;
    }
    ++i;
    if (c->torn_down) continue;
    if (now - c->parser_touched >= parser_refresh) {
      c->parser->reset();
      c->parser_touched = now;
    }
    switch (c->state) {
      case connection::phase::in_flight:
        if (c->flight.load(std::memory_order_acquire) == connection::done) {
          finish_flight(c);
          serve(c);
        }
        break;
      case connection::phase::reading:
        if (c->kind != connection::timer::none && now >= c->deadline) {
          if (c->kind == connection::timer::keepalive) {
            close_after_writes(c);  // idle: a quiet close, as nginx
          } else {
            reject(c, 408, c->kind == connection::timer::body ? "body timeout" : "header timeout");
          }
        }
        break;
      case connection::phase::draining:
      case connection::phase::closing:
        if (!c->fin_sent && now < c->deadline && now - c->marker_posted >= sweep_period_) {
          repost_overdue_marker(c, now);
        }
        if (now >= c->deadline) {
          // The client neither read its responses nor closed: end it. Pistache sees the end
          // of the stream and removes the peer; we never close a descriptor it owns.
          if (c->owns_fd()) ::shutdown(c->fd, SHUT_RDWR);
          c->torn_down = true;
        }
        break;
    }
  }
}

std::shared_ptr<connection_handler> connection_handler_for(const Pistache::Rest::Router& router,
                                                           connection_options options) {
  return std::make_shared<connection_handler>(router.handler(), options);
}

}  // namespace qos

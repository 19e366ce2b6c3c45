#include "qos/http/gate.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <exception>
#include <optional>
#include <random>
#include <stdexcept>
#include <utility>

#include <pistache/http_header.h>
#include <pistache/mime.h>
#include <pistache/net.h>
#include <pistache/peer.h>
#include <sys/socket.h>

#include "qos/http/detail/client_headers.hpp"
#include "qos/http/job_front.hpp"
#include "qos/ops/access_log.hpp"
#include "qos/ops/log.hpp"

namespace qos {

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;

namespace {

// A header whose name is chosen at run time; Pistache's typed headers fix theirs at compile time.
class named_header final : public http::Header::Header {
 public:
  named_header(std::string name, std::string value)
      : name_(std::move(name)), value_(std::move(value)) {}
  const char* name() const override { return name_.c_str(); }
  void write(std::ostream& os) const override { os << value_; }
#ifdef SAFE_HEADER_CAST
  uint64_t hash() const override {
    return 0;
  }
#endif

 private:
  std::string name_;
  std::string value_;
};

}  // namespace

void add_header(http::ResponseWriter& w, std::string name, std::string value) {
  w.headers().remove(name);
  w.headers().add(std::make_shared<named_header>(std::move(name), std::move(value)));
}

namespace {

// A fallback made ready once at setup, so answering one costs no parsing.
struct rendered_fallback {
  http::Code code{};
  std::vector<std::pair<std::string, std::string>> headers;  // static Retry-After included
  std::string body;
  http::Mime::MediaType mime;
  bool retry_auto = false;
};

rendered_fallback render(const config::fallback_config& f) {
  rendered_fallback r{static_cast<http::Code>(f.status),
                      {},
                      f.body,
                      http::Mime::MediaType::fromString(f.content_type),
                      f.retry_after_auto};
  if (f.retry_after_s && !f.retry_after_auto) {
    r.headers.emplace_back("Retry-After", std::to_string(*f.retry_after_s));
  }
  for (const auto& [name, value] : f.headers) r.headers.emplace_back(name, value);
  return r;
}

// Retry-After from the group's backlog (Little's law): the time the queue needs to drain at
// limit / service-time per second, within [1, 60] s, plus up to half of it at random so that
// shed clients do not all come back in the same second.
int auto_retry_after(const group_stats& s) {
  const double svc = std::chrono::duration<double>(s.service_time).count();
  const double drain = static_cast<double>(s.waiting + s.reserved) * svc /
                       static_cast<double>(std::max<std::size_t>(1, s.limit));
  const int base = std::clamp(static_cast<int>(std::ceil(drain)), 1, 60);
  thread_local std::minstd_rand rng{std::random_device{}()};
  std::uniform_int_distribution<int> jitter(0, base / 2);
  return std::min(60, base + jitter(rng));
}

}  // namespace

// What one request of a route runs under, fixed on arrival: its admission policy and what the
// edge reads and answers for it. Immutable; a reload publishes a new one (gate::apply) and
// requests already in flight keep the one they took, so each sees one policy whole.
struct gate::route_view {
  route_policy policy;  // admission's: handed on as an aliasing pointer into this view
  config::priority_config priority;
  config::deadline_config deadline;
  std::array<rendered_fallback, outcome_count> fallbacks;  // by outcome, resolved by config
  config::route_mode mode;
  config::accept_config accept;  // mode accept

  explicit route_view(const config::route_config& rc)
      : policy(rc), priority(rc.priority), deadline(rc.deadline), mode(rc.mode), accept(rc.accept) {
    const auto resolved = config::resolve(rc.fallback);
    for (std::size_t i = 0; i < outcome_count; ++i) fallbacks[i] = render(resolved[i]);
  }

  // A rule in code first, then the trusted raw level, then the header → level table, else
  // the route default. Unknown or malformed values are not errors: they get the default.
  qos::priority resolve_priority(const priority_rule& code, const rest::Request& req) const {
    if (code) {
      if (auto level = code(req)) return std::min(*level, max_priority);
    }
    const auto& headers = req.headers();
    if (priority.raw_header_trusted && !priority.raw_header.empty()) {
      if (auto raw = headers.tryGetRaw(priority.raw_header)) {
        if (auto level = detail::parse_priority_level(raw->value())) return *level;
      }
    }
    if (!priority.header.empty()) {
      if (auto raw = headers.tryGetRaw(priority.header)) {
        auto it = priority.values.find(raw->value());
        if (it != priority.values.end()) return it->second;
      }
    }
    return priority.default_level;
  }

  // The client's deadline from the configured headers (the earliest wins); malformed values
  // are ignored, as if absent.
  std::optional<time_point> resolve_deadline(const rest::Request& req, time_point now) const {
    std::optional<duration> left;
    const auto& headers = req.headers();
    if (!deadline.header.empty()) {
      if (auto raw = headers.tryGetRaw(deadline.header)) {
        left = detail::parse_timeout_header(raw->value());
      }
    }
    if (deadline.grpc_timeout) {
      if (auto raw = headers.tryGetRaw("grpc-timeout")) {
        if (auto g = detail::parse_grpc_timeout(raw->value()); g && (!left || *g < *left)) left = g;
      }
    }
    if (!left) return std::nullopt;
    return now + *left;
  }
};

struct gate::http_route {
  const admission::route* route = nullptr;  // its group and metrics never change
  // The view requests take on arrival; replaced whole by a reload.
  std::atomic<std::shared_ptr<const route_view>> view;
  fallback_handler custom;      // empty: static fallbacks only
  priority_rule priority_code;  // empty: configured rules only
  // How the code guarded this route, if it did (a reload reads it from another thread).
  std::atomic<int> guarded{-1};  // -1: not guarded; else a config::guarded_as
  // The gate's access log; null: none. Atomic so that set_access_log() may come while
  // requests run (release/acquire: a request that sees the log sees it built).
  std::atomic<access_log*> access{nullptr};
  // accept(): the job handler and where it runs. Written at setup only.
  std::shared_ptr<const accepted_route> job;

  const std::string& name() const noexcept { return route->name(); }

  std::shared_ptr<const route_view> current() const noexcept {
    return view.load(std::memory_order_acquire);
  }

  request_info info(const route_view& v, const rest::Request& req) const {
    const auto now = clock::now();
    return {v.resolve_priority(priority_code, req), now, v.resolve_deadline(req, now)};
  }
};

namespace {

void send_static(const gate::http_route& route, const gate::route_view& view, outcome why,
                 http::ResponseWriter& w) noexcept {
  const rendered_fallback& f = view.fallbacks[index(why)];
  try {
    if (f.retry_auto) {
      add_header(w, "Retry-After", std::to_string(auto_retry_after(route.route->group->stats())));
    }
    for (const auto& [name, value] : f.headers) add_header(w, name, value);
    w.send(f.code, f.body, f.mime);
  } catch (const std::exception& e) {
    logger()->debug("qos: fallback ({}) not sent: {}", to_string(why), e.what());
  } catch (...) {
  }
}

void send_fallback(const gate::http_route& route, const gate::route_view& view, outcome why,
                   const rest::Request& req, http::ResponseWriter& w) noexcept {
  try {
    add_header(w, outcome_header, std::string(to_string(why)));
  } catch (...) {
  }
  // A failure of the application is not the gate's to dress up: no fallback handler for it.
  if (route.custom && traits(why).answer == answer_kind::fallback) {
    try {
      route.custom(why, req, w);
      if (w.getResponseSize() > 0) return;
    } catch (const std::exception& e) {
      logger()->warn("qos: fallback handler of route '{}' threw: {}", route.name(), e.what());
    } catch (...) {
      logger()->warn("qos: fallback handler of route '{}' threw", route.name());
    }
  }
  send_static(route, view, why, w);
}

// One guarded request over Pistache: owns the writer until it is answered, and borrows the
// request from the reactor's frame until detach() copies it (a request served inline is never
// copied). Keeps no shared_ptr<Peer>: file descriptors are reused and a held peer can reach
// the wrong client (Pistache 0.0.5, trap 2).
class http_transport final : public transport {
 public:
  http_transport(const gate::http_route& route, std::shared_ptr<const gate::route_view> view,
                 const handler* h, const result_handler* rh, const rest::Request& req,
                 http::ResponseWriter writer)
      : route_(route),
        view_(std::move(view)),
        handler_(h),
        result_handler_(rh),
        req_(&req),
        writer_(std::move(writer)) {
    // Whether the request gets an access line is decided on arrival, and a request sampled out
    // or over the rate costs nothing more. The peer is read now, while the connection surely
    // stands: by done() the client may have read its answer and gone. The shared_ptr lives for
    // this statement only (trap 2, see the class comment).
    if (access_log* log = route_.access.load(std::memory_order_acquire);
        log != nullptr && log->admit()) {
      if (const auto peer = writer_.getPeer()) peer_ = peer->address();
      log_ = log;
    }
  }

  bool connected() noexcept override { return writer_.getPeer() != nullptr; }

  void detach() override {
    owned_.emplace(*req_);
    req_ = &*owned_;
  }

  std::optional<response> handle() override {
    if (result_handler_ != nullptr) return (*result_handler_)(*req_);
    (*handler_)(*req_, writer_);
    if (writer_.getResponseSize() == 0 && writer_.getPeer() != nullptr) {
      throw std::logic_error("the handler returned without answering");
    }
    return std::nullopt;
  }

  void answer(response r) noexcept override {
    try {
      for (auto& [name, value] : r.headers) add_header(writer_, std::move(name), std::move(value));
      writer_.send(static_cast<http::Code>(r.status), r.body,
                   http::Mime::MediaType::fromString(r.content_type));
    } catch (...) {
      fail(std::current_exception());
    }
  }

  void fallback(outcome why) noexcept override {
    send_fallback(route_, *view_, why, *req_, writer_);
  }

  void fail(std::exception_ptr error) noexcept override {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      logger()->error("qos: handler of route '{}' failed: {}", route_.name(), e.what());
    } catch (...) {
      logger()->error("qos: handler of route '{}' failed", route_.name());
    }
    if (writer_.getResponseSize() == 0) {
      send_fallback(route_, *view_, outcome::error, *req_, writer_);
    }
  }

  // The access line, if the request got one on arrival: the status and size as the writer sent
  // them (none when the client was gone).
  void done(const request_report& report) noexcept override {
    if (log_ == nullptr) return;
    try {
      const auto sent = writer_.getResponseSize();
      log_->write({.method = http::methodString(req_->method()),
                   .path = req_->resource(),
                   .status = sent > 0 ? static_cast<int>(writer_.getResponseCode()) : 0,
                   .result = report.result,
                   .route = route_.name(),
                   .level = report.level,
                   .waited = report.waited,
                   .handled = report.handled,
                   .bytes = sent > 0 ? static_cast<std::size_t>(sent) : 0,
                   .peer = peer()});
    } catch (...) {
      // An address that cannot be formatted (no memory): no line.
    }
  }

 private:
  // "ip:port" ("[ip]:port" for IPv6) of the client; empty when it was gone on arrival.
  std::string peer() const {
    if (!peer_) return {};
    const std::string host = peer_->host();
    const std::string port = std::to_string(static_cast<std::uint16_t>(peer_->port()));
    return peer_->family() == AF_INET6 ? "[" + host + "]:" + port : host + ":" + port;
  }

  const gate::http_route& route_;
  const std::shared_ptr<const gate::route_view> view_;  // the policy it arrived under
  const handler* handler_;
  const result_handler* result_handler_;
  const rest::Request* req_;
  std::optional<rest::Request> owned_;  // the copy made by detach()
  http::ResponseWriter writer_;
  access_log* log_ = nullptr;              // set: this request gets an access line
  std::optional<Pistache::Address> peer_;  // the client, read on arrival for that line
};

}  // namespace

gate::gate(admission& adm, const config::app_config& cfg) : adm_(adm) {
  for (const auto& rc : cfg.routes) {
    auto state = std::make_unique<http_route>();
    state->route = adm_.find_route(rc.name);
    if (state->route == nullptr) {
      throw std::invalid_argument("route '" + rc.name + "' is not known to admission");
    }
    auto view = std::make_shared<const route_view>(rc);
    admission::set_policy(*state->route, std::shared_ptr<const route_policy>(view, &view->policy));
    state->view.store(std::move(view), std::memory_order_release);
    routes_.emplace(rc.name, std::move(state));
  }
}

config::guarded_routes gate::guarded() const {
  config::guarded_routes out;
  for (const auto& [name, state] : routes_) {
    const int how = state->guarded.load(std::memory_order_acquire);
    if (how >= 0) out.emplace(name, static_cast<config::guarded_as>(how));
  }
  return out;
}

void gate::apply(const config::app_config& cfg) {
  // Everything that allocates first, so that publishing cannot fail halfway.
  std::vector<std::pair<http_route*, std::shared_ptr<const route_view>>> next;
  for (const auto& rc : cfg.routes) {
    auto it = routes_.find(rc.name);
    if (it == routes_.end()) continue;  // added by the reload: nothing guards it yet
    http_route& state = *it->second;
    if (state.route->group->name() != rc.group) continue;  // see the contract
    next.emplace_back(&state, std::make_shared<const route_view>(rc));
  }
  for (auto& [state, view] : next) {
    // Admission's copy and the gate's are one object; either may be read first by a request
    // that races this loop, and each request reads only one of them.
    admission::set_policy(*state->route, std::shared_ptr<const route_policy>(view, &view->policy));
    state->view.store(std::move(view), std::memory_order_release);
  }
}

gate::~gate() = default;

void gate::on_fallback(const std::string& route, fallback_handler f) {
  find(route).custom = std::move(f);
}

void gate::on_priority(const std::string& route, priority_rule rule) {
  find(route).priority_code = std::move(rule);
}

void gate::set_access_log(access_log* log) noexcept {
  access_log* const used = log != nullptr && log->enabled() ? log : nullptr;
  for (auto& [name, state] : routes_) state->access.store(used, std::memory_order_release);
}

gate::http_route& gate::find(const std::string& route) const {
  auto it = routes_.find(route);
  if (it == routes_.end()) throw std::invalid_argument("unknown qos route '" + route + "'");
  return *it->second;
}

namespace {

// The route handler Pistache calls for a guarded route, on the reactor thread: it reads what
// the request asks of the gate and hands it to admission. Nothing here blocks. The writer
// moves into the transport first; from then on every failure is answered through it (an
// exception escaping a handler after its writer moved would leave the client unanswered:
// Pistache 0.0.5, trap 6). Exactly one of h / rh is set.
rest::Route::Handler wrap(const gate::http_route& state, admission& adm,
                          std::shared_ptr<const handler> h,
                          std::shared_ptr<const result_handler> rh, handler_kind kind) {
  // The request by reference: the transport copies it only if it leaves this thread.
  return [&state, &adm, h, rh, kind](const rest::Request& req, http::ResponseWriter writer) {
    gate::keep_alive(req, writer);
    // The one read of the route's settings: this request keeps them to its end.
    std::shared_ptr<const gate::route_view> view = state.current();
    const gate::route_view& v = *view;
    auto t =
        std::make_unique<http_transport>(state, view, h.get(), rh.get(), req, std::move(writer));
    request_info info;
    try {
      info = state.info(v, req);
    } catch (...) {
      const request_report failed{.result = outcome::error};
      state.route->metrics->on_arrival(0);
      t->fail(std::current_exception());
      state.route->metrics->on_done(failed);
      t->done(failed);
      return rest::Route::Result::Ok;
    }
    adm.submit(*state.route, std::shared_ptr<const route_policy>(std::move(view), &v.policy), info,
               kind, std::move(t));
    return rest::Route::Result::Ok;
  };
}

}  // namespace

rest::Route::Handler gate::guard(const std::string& route, handler h, handler_kind kind) {
  http_route& state = find(route);
  if (state.current()->policy.max_exec) {
    throw std::invalid_argument("route '" + route +
                                "' has max_exec: guard it with guard_result, whose late result "
                                "can be discarded");
  }
  // A writer wins over a result handler: a route guarded both ways cannot take max_exec.
  state.guarded.store(static_cast<int>(config::guarded_as::writer), std::memory_order_release);
  return wrap(state, adm_, std::make_shared<const handler>(std::move(h)), nullptr, kind);
}

rest::Route::Handler gate::guard_result(const std::string& route, result_handler h,
                                        handler_kind kind) {
  if (kind == handler_kind::reactor) {
    throw std::invalid_argument("route '" + route +
                                "': a result handler runs apart from its request and cannot be "
                                "a reactor handler");
  }
  http_route& state = find(route);
  int none = -1;
  state.guarded.compare_exchange_strong(none, static_cast<int>(config::guarded_as::result),
                                        std::memory_order_acq_rel);
  return wrap(state, adm_, nullptr, std::make_shared<const result_handler>(std::move(h)), kind);
}

rest::Route::Handler gate::plain(handler h) {
  return [h = std::move(h)](const rest::Request req, http::ResponseWriter writer) {
    keep_alive(req, writer);
    h(req, writer);
    return rest::Route::Result::Ok;
  };
}

void gate::keep_alive(const http::Request& req, http::ResponseWriter& w) {
  if (req.version() != http::Version::Http11) return;
  auto asked = req.headers().tryGet<http::Header::Connection>();
  if (asked && asked->control() == http::ConnectionControl::Close) return;
  // Only Pistache's own `Close` is replaced. The connection layer labels every writer itself
  // and may learn after the handler started that this response is the connection's last (more
  // pipelined bytes than it holds): a label that says keep-alive, or a header of its own
  // making (untyped lookup: a typed one would cast it blindly), is its word, left as it is.
  if (auto have = w.headers().tryGet(http::Header::Connection::Name)) {
    const auto* typed = dynamic_cast<const http::Header::Connection*>(have.get());
    if (typed == nullptr || typed->control() != http::ConnectionControl::Close) return;
  }
  w.headers().remove<http::Header::Connection>();
  w.headers().add<http::Header::Connection>(http::ConnectionControl::KeepAlive);
}

void gate::prime_router(rest::Router& router) {
  static const char* const probe = "/__qos_prime_method_map__";
  const http::Method methods[] = {
      http::Method::Options, http::Method::Get,   http::Method::Post,
      http::Method::Head,    http::Method::Put,   http::Method::Patch,
      http::Method::Delete,  http::Method::Trace, http::Method::Connect};
  for (auto m : methods) {
    // removeRoute keeps the method's map entry: afterwards lookups never insert.
    router.addRoute(m, probe, [](const rest::Request, http::ResponseWriter) {
      return rest::Route::Result::Ok;
    });
    router.removeRoute(m, probe);
  }
}

}  // namespace qos

// ---- accept-mode routes -------------------------------------------------------------------

namespace qos {

namespace {

// MurmurHash3 x64_128 (Austin Appleby, public domain): the payload hash an idempotency key is
// checked against. No cryptographic library is available; a well-mixed 128-bit hash is enough
// here, since a collision can only make a client's own reused key (scoped per route and
// tenant) pass as the same payload, and a chance one among 2^128 values does not happen.
class murmur3_128 {
 public:
  void update(std::string_view data) { buffer_.append(data); }
  // 32 lowercase hex digits.
  std::string hex() const {
    const auto* p = reinterpret_cast<const unsigned char*>(buffer_.data());
    const std::size_t len = buffer_.size();
    const std::size_t blocks = len / 16;
    std::uint64_t h1 = seed, h2 = seed;
    constexpr std::uint64_t c1 = 0x87c37b91114253d5ULL, c2 = 0x4cf5ad432745937fULL;
    auto load = [](const unsigned char* b) {
      std::uint64_t v = 0;
      for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
      return v;
    };
    for (std::size_t i = 0; i < blocks; ++i) {
      std::uint64_t k1 = load(p + i * 16), k2 = load(p + i * 16 + 8);
      k1 *= c1;
      k1 = rotl(k1, 31);
      k1 *= c2;
      h1 ^= k1;
      h1 = rotl(h1, 27);
      h1 += h2;
      h1 = h1 * 5 + 0x52dce729;
      k2 *= c2;
      k2 = rotl(k2, 33);
      k2 *= c1;
      h2 ^= k2;
      h2 = rotl(h2, 31);
      h2 += h1;
      h2 = h2 * 5 + 0x38495ab5;
    }
    const unsigned char* tail = p + blocks * 16;
    std::uint64_t k1 = 0, k2 = 0;
    const std::size_t rest = len & 15;
    for (std::size_t i = rest; i > 8; --i) k2 ^= std::uint64_t{tail[i - 1]} << ((i - 9) * 8);
    if (rest > 8) {
      k2 *= c2;
      k2 = rotl(k2, 33);
      k2 *= c1;
      h2 ^= k2;
    }
    for (std::size_t i = std::min<std::size_t>(rest, 8); i > 0; --i) {
      k1 ^= std::uint64_t{tail[i - 1]} << ((i - 1) * 8);
    }
    if (rest > 0) {
      k1 *= c1;
      k1 = rotl(k1, 31);
      k1 *= c2;
      h1 ^= k1;
    }
    h1 ^= len;
    h2 ^= len;
    h1 += h2;
    h2 += h1;
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 += h2;
    h2 += h1;
    static constexpr char digits[] = "0123456789abcdef";
    std::string out(32, '0');
    for (int i = 0; i < 16; ++i) {
      const std::uint64_t h = i < 8 ? h1 : h2;
      const auto byte = static_cast<unsigned>((h >> (56 - 8 * (i % 8))) & 0xff);
      out[static_cast<std::size_t>(2 * i)] = digits[byte >> 4];
      out[static_cast<std::size_t>(2 * i + 1)] = digits[byte & 15];
    }
    return out;
  }

 private:
  static constexpr std::uint64_t seed = 0x716f732d6a6f6273ULL;  // "qos-jobs"
  static std::uint64_t rotl(std::uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
  static std::uint64_t fmix(std::uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
  }
  std::string buffer_;
};

// Each field length-prefixed, so that no two different payloads serialize alike.
void hash_field(murmur3_128& h, std::string_view field) {
  const std::string len = std::to_string(field.size()) + ":";
  h.update(len);
  h.update(field);
}

std::string lowercase(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

// The Idempotency-Key of the IETF httpapi draft is a Structured Field string ("..."); a bare
// value is taken too. Returns false for a malformed one: empty, over 255 bytes, not printable
// ASCII, or a quoted string that is not well formed.
bool parse_idempotency_key(std::string_view raw, std::string& key) {
  while (!raw.empty() && (raw.front() == ' ' || raw.front() == '\t')) raw.remove_prefix(1);
  while (!raw.empty() && (raw.back() == ' ' || raw.back() == '\t')) raw.remove_suffix(1);
  key.clear();
  if (!raw.empty() && raw.front() == '"') {
    if (raw.size() < 2 || raw.back() != '"') return false;
    raw = raw.substr(1, raw.size() - 2);
    for (std::size_t i = 0; i < raw.size(); ++i) {
      char c = raw[i];
      if (c == '\\') {
        if (i + 1 >= raw.size() || (raw[i + 1] != '"' && raw[i + 1] != '\\')) return false;
        c = raw[++i];
      } else if (c == '"') {
        return false;
      }
      if (c < 0x20 || c > 0x7e) return false;
      key.push_back(c);
    }
  } else {
    for (char c : raw) {
      if (c < 0x20 || c > 0x7e) return false;
    }
    key.assign(raw);
  }
  return !key.empty() && key.size() <= 255;
}

void reply_now(http::ResponseWriter& w, const response& r) noexcept {
  try {
    for (const auto& [name, value] : r.headers) add_header(w, name, value);
    w.send(static_cast<http::Code>(r.status), r.body,
           http::Mime::MediaType::fromString(r.content_type));
  } catch (...) {
    // The client went away.
  }
}

response bad_request(std::string why) {
  return {.status = 400, .body = "{\"error\":\"" + std::move(why) + "\"}"};
}

}  // namespace

std::vector<accepted_route> gate::accepted() const {
  std::vector<accepted_route> out;
  for (const auto& [name, state] : routes_) {
    if (state->job) out.push_back(*state->job);
  }
  return out;
}

rest::Route::Handler gate::accept(const std::string& route, jobs::job_handler h,
                                  handler_kind kind) {
  if (kind == handler_kind::reactor) {
    throw std::invalid_argument("route '" + route +
                                "': a job handler runs on a consumer, never on a reactor");
  }
  if (!h) throw std::invalid_argument("route '" + route + "': no job handler");
  http_route& state = find(route);
  if (state.current()->mode != config::route_mode::accept) {
    throw std::invalid_argument("route '" + route + "' is not an accept route (mode: accept)");
  }
  if (jobs_ == nullptr) {
    throw std::logic_error("route '" + route + "': no job store (the config has no jobs: section)");
  }
  state.job = std::make_shared<const accepted_route>(accepted_route{route, std::move(h), kind});
  int none = -1;
  state.guarded.compare_exchange_strong(none, static_cast<int>(config::guarded_as::result),
                                        std::memory_order_acq_rel);
  job_front* const front = jobs_;
  job_front::route_counters* const counters = &front->counters(route);
  using kind_t = jobs::enqueue_result::kind;
  return [&state, front, counters](const rest::Request& req, http::ResponseWriter writer) {
    gate::keep_alive(req, writer);
    // The one read of the route's settings: this request keeps them to its end.
    const std::shared_ptr<const gate::route_view> view = state.current();
    const config::accept_config& a = view->accept;
    const std::string retry_after = std::to_string(a.retry_after_s);
    if (!front->accepting()) {
      counters->count(kind_t::unavailable);
      reply_now(writer,
                {.status = 503,
                 .body = "{\"error\":\"shutting down\"}",
                 .headers = {{"Retry-After", std::to_string(std::max(1, a.retry_after_s))}}});
      return rest::Route::Result::Ok;
    }
    jobs::job_request job;
    try {
      const auto& headers = req.headers();
      std::string key;
      if (auto raw = headers.tryGetRaw("Idempotency-Key")) {
        if (!parse_idempotency_key(raw->value(), key)) {
          reply_now(writer, bad_request("malformed Idempotency-Key: printable ASCII, 1 to 255 "
                                        "bytes, bare or as a quoted string"));
          return rest::Route::Result::Ok;
        }
        job.idempotency_key = key;
      } else if (a.require_idempotency_key) {
        reply_now(writer, bad_request("this route requires an Idempotency-Key header"));
        return rest::Route::Result::Ok;
      }
      job.route = state.name();
      job.group = state.route->group->name();
      if (!a.tenant_header.empty()) {
        if (auto t = headers.tryGetRaw(a.tenant_header)) job.tenant = t->value();
      }
      job.method = http::methodString(req.method());
      // The query as Pistache parsed it, in name order: its map keeps no order of its own.
      job.target = req.resource();
      std::vector<std::pair<std::string, std::string>> query(req.query().parameters_begin(),
                                                             req.query().parameters_end());
      std::sort(query.begin(), query.end());
      for (std::size_t i = 0; i < query.size(); ++i) {
        job.target += (i == 0 ? "?" : "&") + query[i].first + "=" + query[i].second;
      }
      for (const auto& [name, raw] : headers.rawList()) {
        std::string lower = lowercase(name);
        if (lower == "content-type" || std::find(a.keep_headers.begin(), a.keep_headers.end(),
                                                 lower) != a.keep_headers.end()) {
          job.headers.emplace_back(std::move(lower), raw.value());
        }
      }
      std::sort(job.headers.begin(), job.headers.end());
      job.body = req.body();
      job.priority = static_cast<int>(view->resolve_priority(state.priority_code, req));
      murmur3_128 hash;
      hash_field(hash, job.method);
      hash_field(hash, job.target);
      hash_field(hash, std::to_string(job.headers.size()));
      for (const auto& [name, value] : job.headers) {
        hash_field(hash, name);
        hash_field(hash, value);
      }
      hash_field(hash, job.body);
      job.payload_hash = hash.hex();
    } catch (const std::exception& e) {
      logger()->error("qos: accept route '{}': request not taken: {}", state.name(), e.what());
      reply_now(writer, {.status = 500, .body = "{\"error\":\"internal error\"}"});
      return rest::Route::Result::Ok;
    } catch (...) {
      // A priority rule in code may throw anything; the writer is still ours to answer.
      logger()->error("qos: accept route '{}': request not taken", state.name());
      reply_now(writer, {.status = 500, .body = "{\"error\":\"internal error\"}"});
      return rest::Route::Result::Ok;
    }
    const jobs::enqueue_options options{.max_depth = a.max_depth,
                                        .key_retention = a.idempotency_retention};
    const int full_status = a.full_status;
    front->serve(
        std::move(writer),
        [job = std::move(job), options, full_status, retry_after, counters,
         front](jobs::job_store& store) {
          const jobs::enqueue_result r = store.enqueue(job, options);
          counters->count(r.result);
          if (r.result == kind_t::created) front->created(job.group);
          switch (r.result) {
            case kind_t::created:
            case kind_t::duplicate: {
              const std::string location = "/jobs/" + r.id;
              return response{
                  .status = 202,
                  .body = "{\"id\":\"" + r.id + "\",\"status_url\":\"" + location + "\"}",
                  .headers = {{"Location", location}, {"Retry-After", retry_after}}};
            }
            case kind_t::conflict:
              return response{.status = 422,
                              .body =
                                  "{\"error\":\"this Idempotency-Key was used with another "
                                  "request\"}"};
            case kind_t::full:
              return response{.status = full_status,
                              .body = "{\"error\":\"the queue of this route is full\"}",
                              .headers = {{"Retry-After", retry_after}}};
            case kind_t::unavailable:
              break;
          }
          front->log_unavailable(job.route, r.error);
          return response{.status = 503,
                          .body = "{\"error\":\"the job store is unavailable\"}",
                          .headers = {{"Retry-After", retry_after}}};
        },
        [counters] { counters->count(kind_t::unavailable); });
    return rest::Route::Result::Ok;
  };
}

}  // namespace qos

#include "qos/http/gate.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <optional>
#include <random>
#include <stdexcept>
#include <utility>

#include <pistache/http_header.h>
#include <pistache/mime.h>
#include <spdlog/spdlog.h>
#include <boost/fiber/future.hpp>

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
  http::Code code;
  std::vector<std::pair<std::string, std::string>> headers;  // static Retry-After included
  std::string body;
  Pistache::Http::Mime::MediaType mime;
  bool retry_auto = false;
};

rendered_fallback render(const config::fallback_config& f) {
  rendered_fallback r{static_cast<http::Code>(f.status),
                      {},
                      f.body,
                      Pistache::Http::Mime::MediaType::fromString(f.content_type),
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
int auto_retry_after(const limiter_stats& s) {
  const double svc = std::chrono::duration<double>(s.service_ewma).count();
  const double drain = static_cast<double>(s.waiting + s.reserved) * svc /
                       static_cast<double>(std::max<std::size_t>(1, s.max_concurrent));
  const int base = std::clamp(static_cast<int>(std::ceil(drain)), 1, 60);
  thread_local std::minstd_rand rng{std::random_device{}()};
  std::uniform_int_distribution<int> jitter(0, base / 2);
  return std::min(60, base + jitter(rng));
}

// A client deadline from a duration header ("800ms", "2s", bare milliseconds).
std::optional<duration> parse_timeout_header(const std::string& v) {
  try {
    return std::chrono::duration_cast<duration>(config::parse_duration(v));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// gRPC's timeout header: up to 8 digits and a unit (H M S m u n).
std::optional<duration> parse_grpc_timeout(const std::string& v) {
  if (v.size() < 2 || v.size() > 9) return std::nullopt;
  long long n = 0;
  for (std::size_t i = 0; i + 1 < v.size(); ++i) {
    if (v[i] < '0' || v[i] > '9') return std::nullopt;
    n = n * 10 + (v[i] - '0');
  }
  using namespace std::chrono;
  switch (v.back()) {
    case 'H':
      return duration_cast<duration>(hours(n));
    case 'M':
      return duration_cast<duration>(minutes(n));
    case 'S':
      return duration_cast<duration>(seconds(n));
    case 'm':
      return duration_cast<duration>(milliseconds(n));
    case 'u':
      return duration_cast<duration>(microseconds(n));
    case 'n':
      return duration_cast<duration>(nanoseconds(n));
    default:
      return std::nullopt;
  }
}

}  // namespace

struct gate::route_state {
  const admission::route_entry* entry = nullptr;
  config::priority_config priority;
  config::deadline_config deadline;
  rendered_fallback any, timeout, queue_full, shutdown, shed, deadline_fb, predicted, exec;
  fallback_handler custom;  // empty: static fallbacks only

  const rendered_fallback& fallback_for(outcome why) const {
    switch (why) {
      case outcome::timed_out:
        return timeout;
      case outcome::queue_full:
      case outcome::rejected:
        return queue_full;
      case outcome::shutting_down:
        return shutdown;
      case outcome::shed:
        return shed;
      case outcome::deadline:
        return deadline_fb;
      case outcome::predicted_timeout:
        return predicted;
      case outcome::exec_timeout:
        return exec;
      default:
        return any;
    }
  }

  // Trusted raw level first, then the header → level table, else the route default. Unknown
  // or malformed values are not errors: they get the default.
  qos::priority resolve_priority(const http::Request& req) const {
    const auto& headers = req.headers();
    if (priority.raw_header_trusted && !priority.raw_header.empty()) {
      if (auto raw = headers.tryGetRaw(priority.raw_header)) {
        const std::string& v = raw->value();
        int level = -1;
        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), level);
        if (ec == std::errc{} && end == v.data() + v.size() && level >= 0 &&
            level <= max_priority) {
          return static_cast<qos::priority>(level);
        }
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
  std::optional<time_point> resolve_deadline(const http::Request& req, time_point now) const {
    std::optional<duration> left;
    const auto& headers = req.headers();
    if (!deadline.header.empty()) {
      if (auto raw = headers.tryGetRaw(deadline.header)) left = parse_timeout_header(raw->value());
    }
    if (deadline.grpc_timeout) {
      if (auto raw = headers.tryGetRaw("grpc-timeout")) {
        if (auto g = parse_grpc_timeout(raw->value()); g && (!left || *g < *left)) left = g;
      }
    }
    if (!left) return std::nullopt;
    return now + *left;
  }

  request_info info(const http::Request& req) const {
    const auto now = clock::now();
    return {resolve_priority(req), now, resolve_deadline(req, now)};
  }
};

namespace {

void send_static(const gate::route_state& route, const rendered_fallback& f, outcome why,
                 http::ResponseWriter& w) noexcept {
  try {
    if (f.retry_auto) {
      add_header(w, "Retry-After", std::to_string(auto_retry_after(route.entry->group->stats())));
    }
    for (const auto& [name, value] : f.headers) add_header(w, name, value);
    w.send(f.code, f.body, f.mime);
  } catch (const std::exception& e) {
    spdlog::debug("qos: fallback ({}) not sent: {}", to_string(why), e.what());
  } catch (...) {
  }
}

void send_fallback(const gate::route_state& route, outcome why, const rest::Request& req,
                   http::ResponseWriter& w) noexcept {
  try {
    add_header(w, outcome_header, std::string(to_string(why)));
  } catch (...) {
  }
  if (route.custom) {
    try {
      route.custom(why, req, w);
      if (w.getResponseSize() > 0) return;
    } catch (const std::exception& e) {
      spdlog::warn("qos: fallback handler of route '{}' threw: {}", route.entry->policy.name,
                   e.what());
    } catch (...) {
      spdlog::warn("qos: fallback handler of route '{}' threw", route.entry->policy.name);
    }
  }
  send_static(route, route.fallback_for(why), why, w);
}

void send_error(http::ResponseWriter& w) noexcept {
  try {
    add_header(w, outcome_header, std::string(to_string(outcome::error)));
    w.send(http::Code::Internal_Server_Error, std::string("{\"error\":\"internal\"}"),
           Pistache::Http::Mime::MediaType::fromString("application/json"));
  } catch (...) {
  }
}

void send_result(const response& r, http::ResponseWriter& w) {
  for (const auto& [name, value] : r.headers) add_header(w, name, value);
  w.send(r.code, r.body, Pistache::Http::Mime::MediaType::fromString(r.content_type));
}

// One guarded request: owns the writer until it is answered, and borrows the request from
// the reactor's frame until detach() copies it (a request served inline is never copied).
// Keeps no shared_ptr<Peer>: file descriptors are reused and a held peer can reach the wrong
// client.
class http_job final : public request_job {
 public:
  http_job(const gate::route_state& route, const handler* h, const result_handler* rh,
           handler_kind kind, const rest::Request& req, http::ResponseWriter writer)
      : route_(route),
        handler_(h),
        result_handler_(rh),
        kind_(kind),
        req_(&req),
        writer_(std::move(writer)) {}

  bool client_connected() noexcept override { return writer_.getPeer() != nullptr; }
  bool runs_inline() const noexcept override { return kind_ == handler_kind::reactor; }
  void detach() override {
    owned_.emplace(*req_);
    req_ = &*owned_;
  }

  outcome run(limit_group& group, const route_policy& policy) noexcept override {
    try {
      if (result_handler_ != nullptr) return run_result(group, policy);
      // The handler may run on a pool thread: carry the request's context there.
      const request_context* ctx = current_request();
      if (kind_ == handler_kind::blocking) {
        group.pool().run([this, ctx] {
          request_scope scope(ctx);
          (*handler_)(*req_, writer_);
        });
      } else {
        (*handler_)(*req_, writer_);
      }
    } catch (const std::exception& e) {
      spdlog::error("qos: handler of route '{}' threw: {}", route_.entry->policy.name, e.what());
      return fail();
    } catch (...) {
      spdlog::error("qos: handler of route '{}' threw", route_.entry->policy.name);
      return fail();
    }
    if (writer_.getResponseSize() == 0 && writer_.getPeer() != nullptr) {
      spdlog::error("qos: handler of route '{}' returned without answering",
                    route_.entry->policy.name);
      send_error(writer_);
      return outcome::error;
    }
    return outcome::admitted;
  }

  void reject(outcome why) noexcept override { send_fallback(route_, why, *req_, writer_); }

 private:
  // The handler runs apart from this fiber so that this fiber can stop waiting at max_exec;
  // the permit stays held (we wait for the handler to end before returning) and a late result
  // is dropped.
  outcome run_result(limit_group& group, const route_policy& policy) {
    const request_context* ctx = current_request();
    auto call = [this, ctx] {
      request_scope scope(ctx);
      return (*result_handler_)(*req_);
    };
    boost::fibers::future<response> result =
        kind_ == handler_kind::blocking ? group.pool().post(call)
                                        : boost::fibers::async(boost::fibers::launch::post, call);
    if (policy.max_exec &&
        result.wait_for(*policy.max_exec) == boost::fibers::future_status::timeout) {
      send_fallback(route_, outcome::exec_timeout, *req_, writer_);
      result.wait();  // abandoned work still occupies the group until it really ends
      try {
        (void)result.get();
      } catch (...) {
      }
      return outcome::exec_timeout;
    }
    send_result(result.get(), writer_);  // rethrows the handler's exception: run() answers 500
    return outcome::admitted;
  }

  outcome fail() noexcept {
    if (writer_.getResponseSize() == 0) send_error(writer_);
    return outcome::error;
  }

  const gate::route_state& route_;
  const handler* handler_;
  const result_handler* result_handler_;
  handler_kind kind_;
  const rest::Request* req_;
  std::optional<rest::Request> owned_;  // the copy made by detach()
  http::ResponseWriter writer_;
};

}  // namespace

gate::gate(admission& adm, const config::app_config& cfg) : adm_(adm) {
  for (const auto& rc : cfg.routes) {
    auto state = std::make_unique<route_state>();
    state->entry = adm_.find_route(rc.name);
    if (state->entry == nullptr) {
      throw std::invalid_argument("route '" + rc.name + "' is not known to admission");
    }
    state->priority = rc.priority;
    state->deadline = rc.deadline;
    const auto& fb = rc.fallback;
    state->any = render(fb.any);
    state->timeout = render(fb.timeout.value_or(fb.any));
    state->queue_full = render(fb.queue_full.value_or(fb.any));
    state->shutdown = render(fb.shutdown.value_or(fb.any));
    state->shed = render(fb.shed.value_or(fb.queue_full.value_or(fb.any)));
    state->deadline_fb = render(fb.deadline.value_or(fb.timeout.value_or(fb.any)));
    state->predicted = render(fb.predicted_timeout.value_or(fb.timeout.value_or(fb.any)));
    auto exec = fb.exec_timeout.value_or(fb.any);
    if (!fb.exec_timeout) exec.status = 504;
    state->exec = render(exec);
    routes_.emplace(rc.name, std::move(state));
  }
}

gate::~gate() = default;

void gate::on_fallback(const std::string& route, fallback_handler f) {
  auto it = routes_.find(route);
  if (it == routes_.end()) throw std::invalid_argument("unknown qos route '" + route + "'");
  it->second->custom = std::move(f);
}

const gate::route_state& gate::find(const std::string& route) const {
  auto it = routes_.find(route);
  if (it == routes_.end()) throw std::invalid_argument("unknown qos route '" + route + "'");
  return *it->second;
}

namespace {

// The route handler Pistache calls for a guarded route. It runs on the reactor thread: nothing
// here blocks, and nothing escapes once the writer moved. Exactly one of h / rh is set.
rest::Route::Handler wrap(const gate::route_state& state, admission& adm,
                          std::shared_ptr<const handler> h,
                          std::shared_ptr<const result_handler> rh, handler_kind kind) {
  // The request by reference: the job copies it only if it leaves this thread.
  return [&state, &adm, h, rh, kind](const rest::Request& req, http::ResponseWriter writer) {
    try {
      gate::keep_alive(req, writer);
      adm.submit(
          *state.entry, state.info(req),
          std::make_unique<http_job>(state, h.get(), rh.get(), kind, req, std::move(writer)));
    } catch (const std::exception& e) {
      spdlog::error("qos: guard of route '{}' failed: {}", state.entry->policy.name, e.what());
    }
    return rest::Route::Result::Ok;
  };
}

}  // namespace

rest::Route::Handler gate::guard(const std::string& route, handler h, handler_kind kind) {
  const route_state& state = find(route);
  if (state.entry->policy.max_exec) {
    throw std::invalid_argument("route '" + route +
                                "' has max_exec: guard it with guard_result, whose late result "
                                "can be discarded");
  }
  return wrap(state, adm_, std::make_shared<const handler>(std::move(h)), nullptr, kind);
}

rest::Route::Handler gate::guard_result(const std::string& route, result_handler h,
                                        handler_kind kind) {
  if (kind == handler_kind::reactor) {
    throw std::invalid_argument("route '" + route +
                                "': a result handler runs apart from its request and cannot be "
                                "a reactor handler");
  }
  return wrap(find(route), adm_, nullptr, std::make_shared<const result_handler>(std::move(h)),
              kind);
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

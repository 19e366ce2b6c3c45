#include "qos/pistache_gate.hpp"

#include <charconv>
#include <stdexcept>
#include <utility>

#include <pistache/http_header.h>
#include <pistache/mime.h>
#include <spdlog/spdlog.h>

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
  std::vector<std::pair<std::string, std::string>> headers;  // Retry-After included
  std::string body;
  Pistache::Http::Mime::MediaType mime;
};

rendered_fallback render(const config::fallback_config& f) {
  rendered_fallback r{static_cast<http::Code>(f.status),
                      {},
                      f.body,
                      Pistache::Http::Mime::MediaType::fromString(f.content_type)};
  if (f.retry_after_s) r.headers.emplace_back("Retry-After", std::to_string(*f.retry_after_s));
  for (const auto& [name, value] : f.headers) r.headers.emplace_back(name, value);
  return r;
}

}  // namespace

struct gate::route_state {
  const admission::route_entry* entry = nullptr;
  config::priority_config priority;
  rendered_fallback any, timeout, queue_full, shutdown;
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
};

namespace {

void send_static(const rendered_fallback& f, outcome why, http::ResponseWriter& w) noexcept {
  try {
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
  send_static(route.fallback_for(why), why, w);
}

void send_error(http::ResponseWriter& w) noexcept {
  try {
    add_header(w, outcome_header, std::string(to_string(outcome::error)));
    w.send(http::Code::Internal_Server_Error, std::string("{\"error\":\"internal\"}"),
           Pistache::Http::Mime::MediaType::fromString("application/json"));
  } catch (...) {
  }
}

// One guarded request: owns the request copy and the writer until it is answered. Keeps no
// shared_ptr<Peer>: file descriptors are reused and a held peer can reach the wrong client.
class http_job final : public request_job {
 public:
  http_job(const gate::route_state& route, const handler& h, handler_kind kind, rest::Request req,
           http::ResponseWriter writer)
      : route_(route), handler_(h), kind_(kind), req_(std::move(req)), writer_(std::move(writer)) {}

  bool client_connected() noexcept override { return writer_.getPeer() != nullptr; }

  outcome run(limit_group& group) noexcept override {
    try {
      if (kind_ == handler_kind::blocking) {
        group.pool().run([this] { handler_(req_, writer_); });
      } else {
        handler_(req_, writer_);
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

  void reject(outcome why) noexcept override { send_fallback(route_, why, req_, writer_); }

 private:
  outcome fail() noexcept {
    if (writer_.getResponseSize() == 0) send_error(writer_);
    return outcome::error;
  }

  const gate::route_state& route_;
  const handler& handler_;
  handler_kind kind_;
  rest::Request req_;
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
    state->any = render(rc.fallback.any);
    state->timeout = render(rc.fallback.timeout.value_or(rc.fallback.any));
    state->queue_full = render(rc.fallback.queue_full.value_or(rc.fallback.any));
    state->shutdown = render(rc.fallback.shutdown.value_or(rc.fallback.any));
    routes_.emplace(rc.name, std::move(state));
  }
}

gate::~gate() = default;

void gate::on_fallback(const std::string& route, fallback_handler f) {
  auto it = routes_.find(route);
  if (it == routes_.end()) throw std::invalid_argument("unknown qos route '" + route + "'");
  it->second->custom = std::move(f);
}

rest::Route::Handler gate::guard(const std::string& route, handler h, handler_kind kind) {
  auto it = routes_.find(route);
  if (it == routes_.end()) throw std::invalid_argument("unknown qos route '" + route + "'");
  const route_state& state = *it->second;
  auto shared = std::make_shared<const handler>(std::move(h));
  admission& adm = adm_;
  return [&state, &adm, shared, kind](const rest::Request req, http::ResponseWriter writer) {
    // On the reactor thread: nothing here blocks, and nothing escapes once the writer moved.
    try {
      keep_alive(req, writer);
      const priority level = state.resolve_priority(req);
      adm.submit(*state.entry, level,
                 std::make_unique<http_job>(state, *shared, kind, req, std::move(writer)));
    } catch (const std::exception& e) {
      spdlog::error("qos: guard of route '{}' failed: {}", state.entry->policy.name, e.what());
    }
    return rest::Route::Result::Ok;
  };
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

#include "qos/http/admin.hpp"

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string_view>
#include <utility>

#include <pistache/http.h>
#include <pistache/mime.h>

#include "qos/core/outcome.hpp"
#include "qos/http/connection.hpp"
#include "qos/http/gate.hpp"
#include "qos/ops/detail/log_format.hpp"
#include "qos/ops/log.hpp"
#include "qos/version.hpp"

namespace qos {

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;

namespace {

// Constant-time comparison: the time taken does not tell how much of a guess was right.
bool same_secret(std::string_view a, std::string_view b) noexcept {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const std::size_t n = a.size() < b.size() ? a.size() : b.size();
  for (std::size_t i = 0; i < n; ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

void append(spdlog::memory_buf_t& out, std::string_view text) {
  out.append(text.data(), text.data() + text.size());
}

void append_string(spdlog::memory_buf_t& out, std::string_view text) {
  append(out, "\"");
  detail::append_json_string(out, text);
  append(out, "\"");
}

void append_number(spdlog::memory_buf_t& out, double v) {
  char buf[32];
  const int n = std::snprintf(buf, sizeof buf, "%.6g", v);
  out.append(buf, buf + n);
}

void append_number(spdlog::memory_buf_t& out, std::uint64_t v) {
  append(out, std::to_string(v));
}

void send_text(http::ResponseWriter& w, http::Code code, std::string body,
               const char* type = "text/plain") {
  w.send(code, body, http::Mime::MediaType::fromString(type));
}

}  // namespace

admin::admin(qos::runtime& runtime, admin_options options, hooks h)
    : runtime_(runtime),
      options_(std::move(options)),
      hooks_(std::move(h)),
      loopback_(config::is_loopback_address(options_.address)),
      started_(std::chrono::steady_clock::now()) {
  if (!loopback_ && options_.token.empty()) {
    throw std::invalid_argument("admin: listening on " + options_.address +
                                " (beyond loopback) needs a token");
  }
  qos::runtime::prime(router_);
  rest::Routes::Get(router_, "/healthz",
                    guarded(access::open, [](const rest::Request&, http::ResponseWriter w) {
                      send_text(w, http::Code::Ok, "ok\n");
                      return rest::Route::Result::Ok;
                    }));
  rest::Routes::Get(router_, "/readyz",
                    guarded(access::open, [this](const rest::Request&, http::ResponseWriter w) {
                      if (ready()) {
                        send_text(w, http::Code::Ok, "ready\n");
                      } else {
                        send_text(w, http::Code::Service_Unavailable, "draining\n");
                      }
                      return rest::Route::Result::Ok;
                    }));
  rest::Routes::Get(router_, "/metrics", guarded(access::open, runtime_.metrics_handler()));
  rest::Routes::Get(router_, "/qos/status",
                    guarded(access::open, [this](const rest::Request&, http::ResponseWriter w) {
                      send_text(w, http::Code::Ok, status_json(), "application/json");
                      return rest::Route::Result::Ok;
                    }));
  rest::Routes::Post(router_, "/qos/reload",
                     guarded(access::token, [this](const rest::Request&, http::ResponseWriter w) {
                       if (!hooks_.reload) {
                         send_text(w, http::Code::Not_Found, "no reload configured\n");
                         return rest::Route::Result::Ok;
                       }
                       const admin_reply r = hooks_.reload();
                       send_text(w, static_cast<http::Code>(r.status), r.body);
                       return rest::Route::Result::Ok;
                     }));
  if (auto* jobs = runtime_.jobs()) {
    rest::Routes::Post(router_, "/qos/jobs/:id/requeue",
                       guarded(access::token, jobs->requeue_handler()));
    rest::Routes::Delete(router_, "/qos/jobs/:id", guarded(access::token, jobs->purge_handler()));
  }
}

admin::~admin() {
  shutdown();
}

rest::Route::Handler admin::protect(rest::Route::Handler handler) {
  return guarded(access::token, std::move(handler));
}

rest::Route::Handler admin::guarded(access needed, rest::Route::Handler handler) {
  return [this, needed, handler = std::move(handler)](const rest::Request& req,
                                                      http::ResponseWriter w) {
    gate::keep_alive(req, w);
    const bool need_token = needed == access::token || !loopback_;
    if (need_token) {
      if (options_.token.empty()) {
        send_text(w, http::Code::Forbidden,
                  "no admin token is configured (admin.token_file or admin.token_env)\n");
        return rest::Route::Result::Ok;
      }
      if (!authorized(req)) {
        add_header(w, "WWW-Authenticate", "Bearer realm=\"qos\"");
        send_text(w, http::Code::Unauthorized, "a bearer token is required\n");
        return rest::Route::Result::Ok;
      }
    }
    return handler(req, std::move(w));
  };
}

bool admin::authorized(const rest::Request& req) const {
  const auto raw = req.headers().tryGetRaw("Authorization");
  if (!raw) return false;
  // Pistache's Header::Raw::value() returns a copy: keep it alive while the view reads it.
  const std::string header = raw->value();
  std::string_view value = header;
  constexpr std::string_view scheme = "Bearer ";
  if (value.size() < scheme.size()) return false;
  for (std::size_t i = 0; i < scheme.size(); ++i) {
    const char c = value[i];
    const char lower = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    const char want =
        scheme[i] >= 'A' && scheme[i] <= 'Z' ? static_cast<char>(scheme[i] - 'A' + 'a') : scheme[i];
    if (lower != want) return false;
  }
  value.remove_prefix(scheme.size());
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
  return same_secret(value, options_.token);
}

void admin::start() {
  if (listener_) return;
  listener_options lo;
  lo.address = options_.address;
  lo.port = options_.port;
  lo.reactor_threads = 1;
  lo.backlog = 64;
  // A few operators and scrapers, never a crowd: a small cap keeps a flood on this port from
  // taking the public listener's descriptors.
  lo.max_connections = 64;
  connection_options co;
  co.header_timeout = std::chrono::seconds(10);
  co.body_timeout = std::chrono::seconds(10);
  co.keepalive_timeout = std::chrono::seconds(30);
  auto handler = connection_handler_for(router_, co);
  handler->setMaxRequestSize(64 * 1024);
  listener_ = std::make_unique<listener>(std::move(handler), lo);
  listener_->start();
  logger()->info("qos: admin listening on http://{}:{}{}", options_.address, listener_->port(),
                 options_.token.empty() ? " (no token: POST endpoints refused)" : "");
}

void admin::shutdown() {
  if (!listener_) return;
  // Its answers too may still be queued (listener::flush); they are small and local.
  listener_->flush(std::chrono::steady_clock::now() + std::chrono::milliseconds(200));
  listener_->shutdown();
}

std::string admin::status_json() const {
  auto& adm = runtime_.admission();
  auto& metrics = runtime_.metrics();
  spdlog::memory_buf_t out;
  append(out, "{\"version\":");
  append_string(out, qos::version());
  append(out, ",\"config_version\":");
  append_number(out, hooks_.config_version ? hooks_.config_version() : std::uint64_t{0});
  append(out, ",\"config_hash\":");
  append_string(out, hooks_.config_hash ? hooks_.config_hash() : std::string());
  append(out, ",\"uptime_seconds\":");
  append_number(out,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count());
  append(out, ",\"ready\":");
  append(out, ready() ? "true" : "false");
  append(out, ",\"groups\":[");
  bool first = true;
  for (limit_group* g : adm.groups()) {
    const group_stats s = g->stats();
    if (!first) append(out, ",");
    first = false;
    append(out, "{\"name\":");
    append_string(out, g->name());
    append(out, ",\"limit\":");
    append_number(out, std::uint64_t{s.limit});
    append(out, ",\"in_use\":");
    append_number(out, std::uint64_t{s.in_use});
    append(out, ",\"waiting\":");
    append_number(out, std::uint64_t{s.waiting});
    append(out, ",\"max_queue\":");
    append_number(out, std::uint64_t{s.max_queue});
    append(out, ",\"service_time_ms\":");
    append_number(out, std::chrono::duration<double, std::milli>(s.service_time).count());
    append(out, ",\"waiting_by_level\":{");
    const auto by_level = g->limiter().waiting_by_level();
    bool first_level = true;
    for (std::size_t l = 0; l < by_level.size(); ++l) {
      if (by_level[l] == 0) continue;
      if (!first_level) append(out, ",");
      first_level = false;
      append_string(out, std::to_string(l));
      append(out, ":");
      append_number(out, std::uint64_t{by_level[l]});
    }
    append(out, "},\"adaptive\":");
    append(out, s.adaptive ? "true" : "false");
    append(out, ",\"shadow\":");
    append(out, g->shadow() ? "true" : "false");
    append(out, ",\"shedding\":");
    append(out, metrics.shedding(g->name()) ? "true" : "false");
    append(out, "}");
  }
  append(out, "],\"routes\":[");
  first = true;
  for (const auto* r : metrics.routes()) {
    if (!first) append(out, ",");
    first = false;
    append(out, "{\"name\":");
    append_string(out, r->route());
    append(out, ",\"group\":");
    append_string(out, r->group());
    append(out, ",\"arrivals\":");
    append_number(out, r->arrivals());
    append(out, ",\"outcomes\":{");
    for (std::size_t i = 0; i < outcome_table.size(); ++i) {
      if (i) append(out, ",");
      const auto o = static_cast<outcome>(i);
      append_string(out, to_string(o));
      append(out, ":");
      append_number(out, r->count(o));
    }
    append(out, "}}");
  }
  append(out, "]");
  if (auto* jobs = runtime_.jobs()) {
    const jobs_snapshot js = jobs->snapshot();
    append(out, ",\"jobs\":{\"routes\":[");
    first = true;
    for (const auto& r : js.routes) {
      if (!first) append(out, ",");
      first = false;
      append(out, "{\"name\":");
      append_string(out, r.name);
      append(out, ",\"group\":");
      append_string(out, r.group);
      append(out, ",\"depth\":");
      append_number(out, std::uint64_t{r.depth});
      append(out, "}");
    }
    append(out, "],\"consumers\":[");
    first = true;
    for (const auto& g : js.groups) {
      if (!first) append(out, ",");
      first = false;
      append(out, "{\"group\":");
      append_string(out, g.name);
      const std::pair<const char*, std::uint64_t> fields[] = {
          {"claimed", g.claimed},
          {"succeeded", g.succeeded},
          {"failed", g.failed},
          {"given_back", g.given_back},
          {"fenced_out", g.fenced_out},
          {"requeued", g.requeued},
          {"abandoned", g.abandoned},
          {"held", std::uint64_t{g.held}},
          {"run_slots", std::uint64_t{g.run_slots}}};
      for (const auto& [name, value] : fields) {
        append(out, ",\"");
        append(out, name);
        append(out, "\":");
        append_number(out, value);
      }
      append(out, "}");
    }
    append(out, "]}");
  }
  append(out, "}\n");
  return std::string(out.data(), out.size());
}

}  // namespace qos

// A real qos::server on 127.0.0.1:0 for the robustness suite, with routes that tell requests
// apart: /plain/:id (unguarded, on the reactor) and /guarded/:id (through the gate, answered
// from a fiber) answer their id; /big/:id answers its id and 64 KiB more, and counts the calls
// (big_calls()); /echo answers the body; /throw throws; /silent never answers.
#pragma once

#include <dirent.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <pistache/router.h>
#include <boost/fiber/operations.hpp>

#include "qos/qos.hpp"

namespace qos::test {

struct robust_options {
  std::chrono::milliseconds header_timeout{30000};
  std::chrono::milliseconds body_timeout{30000};
  std::chrono::milliseconds keepalive_timeout{30000};
  std::size_t max_request_size = 16 * 1024;
  std::chrono::milliseconds guarded_work{1};  // how long /guarded/:id sleeps on its fiber
};

inline std::atomic<int>& big_calls() {
  static std::atomic<int> calls{0};
  return calls;
}

inline config::app_config robust_config(const robust_options& o) {
  config::app_config cfg;
  cfg.server.address = "127.0.0.1";
  cfg.server.port = 0;
  cfg.server.reactor_threads = 2;
  cfg.server.fiber_threads = 2;
  cfg.server.header_timeout = o.header_timeout;
  cfg.server.body_timeout = o.body_timeout;
  cfg.server.keepalive_timeout = o.keepalive_timeout;
  cfg.server.max_request_size = o.max_request_size;
  config::group_config g;
  g.name = "db";
  g.limiter.max_concurrent = 2;
  g.limiter.max_queue = 10000;
  cfg.groups.push_back(g);
  config::route_config r;
  r.name = "guarded";
  r.group = "db";
  r.max_wait = std::chrono::seconds(20);
  cfg.routes.push_back(r);
  return cfg;
}

inline std::unique_ptr<server> start_robust_server(const robust_options& o = {}) {
  namespace http = Pistache::Http;
  namespace rest = Pistache::Rest;
  auto srv = std::make_unique<server>(robust_config(o));
  auto& router = srv->router();
  rest::Routes::Get(router, "/plain/:id",
                    gate::plain([](const rest::Request& req, http::ResponseWriter& w) {
                      w.send(http::Code::Ok, req.param(":id").as<std::string>());
                    }));
  rest::Routes::Head(router, "/plain/:id",
                     gate::plain([](const rest::Request&, http::ResponseWriter& w) {
                       w.send(http::Code::Ok, std::string("head"));
                     }));
  const auto work = o.guarded_work;
  rest::Routes::Get(
      router, "/guarded/:id",
      srv->gate().guard("guarded", [work](const rest::Request& req, http::ResponseWriter& w) {
        boost::this_fiber::sleep_for(work);
        w.send(http::Code::Ok, req.param(":id").as<std::string>());
      }));
  rest::Routes::Get(
      router, "/big/:id", gate::plain([](const rest::Request& req, http::ResponseWriter& w) {
        ++big_calls();
        w.send(http::Code::Ok, req.param(":id").as<std::string>() + std::string(64 * 1024, '.'));
      }));
  rest::Routes::Post(router, "/echo",
                     gate::plain([](const rest::Request& req, http::ResponseWriter& w) {
                       w.send(http::Code::Ok, req.body());
                     }));
  rest::Routes::Get(router, "/throw",
                    [](const rest::Request&, http::ResponseWriter) -> rest::Route::Result {
                      throw std::runtime_error("boom");
                    });
  rest::Routes::Get(router, "/silent", [](const rest::Request&, http::ResponseWriter) {
    return rest::Route::Result::Ok;  // drops the writer without answering
  });
  srv->start();
  return srv;
}

// Open descriptors of this process: a connection the server closed gives its socket back.
inline int open_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d) != nullptr) ++n;
    ::closedir(d);
  }
  return n;
}

// "GET <target> HTTP/1.1" with Host, and any extra header lines (each ending in CRLF).
inline std::string get(const std::string& target, const std::string& extra = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + "\r\n";
}

}  // namespace qos::test

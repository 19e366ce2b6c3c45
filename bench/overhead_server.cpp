// overhead_server: the S5 benchmark server (bench/run.sh). Three routes with the same trivial
// handler answering "ok":
//   GET /plain    unguarded (qos::gate::plain), runs on the reactor thread
//   GET /guarded  gate.guard() on a group whose permits are always free (max_concurrent 100000):
//                 priority lookup, admission, the request copy, hand-off to a fiber and back
//   GET /inline   the same group with handler_kind::reactor: with a free permit the handler runs
//                 on the reactor thread, so the difference is the gate's own bookkeeping
// Listens on 127.0.0.1 only. Stops cleanly on SIGINT/SIGTERM.
//
// usage: overhead_server [--port P] [--reactors R] [--fibers F] [--access-log] | --version
// --access-log: one access line per guarded request, on stderr (the cost of the access log).
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include <pistache/router.h>

#include "qos/qos.hpp"
#include "qos/version.hpp"

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;

int main(int argc, char** argv) {
  int port = 19090;
  int reactors = 2;
  int fibers = 2;
  bool access_log = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--version") {
      std::printf("overhead_server (qos) %s\n", QOS_VERSION_STRING);
      return 0;
    }
    if (a == "--access-log") {
      access_log = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr,
                   "usage: overhead_server [--port P] [--reactors R] [--fibers F] "
                   "[--access-log]\n");
      return 2;
    }
    const int v = std::atoi(argv[++i]);
    if (a == "--port") {
      port = v;
    } else if (a == "--reactors") {
      reactors = v;
    } else if (a == "--fibers") {
      fibers = v;
    } else {
      std::fprintf(stderr, "overhead_server: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (port < 0 || port > 65535 || reactors < 1 || fibers < 1) {
    std::fprintf(stderr, "overhead_server: bad arguments\n");
    return 2;
  }

  qos::config::app_config cfg;
  cfg.source = "<overhead_server>";
  cfg.server.address = "127.0.0.1";
  cfg.server.port = static_cast<std::uint16_t>(port);
  cfg.server.reactor_threads = static_cast<std::size_t>(reactors);
  cfg.server.fiber_threads = static_cast<std::size_t>(fibers);
  cfg.logging.access_log.enabled = access_log;
  cfg.logging.level = "warn";

  qos::config::group_config free_group;
  free_group.name = "free";
  free_group.limiter.max_concurrent = 100000;  // never the bottleneck: permits are always free
  free_group.limiter.max_queue = 1000;
  // The handlers are fiber and reactor handlers: the blocking pool (threads on demand) stays
  // empty.
  cfg.groups.push_back(free_group);

  qos::config::route_config guarded;
  guarded.name = "guarded";
  guarded.group = "free";
  guarded.max_wait = std::chrono::milliseconds(1000);
  cfg.routes.push_back(guarded);
  auto inline_route = guarded;
  inline_route.name = "inline";
  cfg.routes.push_back(inline_route);

  qos::setup_logging(cfg.logging);
  qos::server srv(cfg);
  auto ok = [](const rest::Request&, http::ResponseWriter& w) {
    w.send(http::Code::Ok, std::string("ok"));
  };
  rest::Routes::Get(srv.router(), "/plain", qos::gate::plain(ok));
  rest::Routes::Get(srv.router(), "/guarded", srv.gate().guard("guarded", ok));
  rest::Routes::Get(srv.router(), "/inline",
                    srv.gate().guard("inline", ok, qos::handler_kind::reactor));
  // Readiness probe of bench/run.sh (every system it measures answers /cache).
  rest::Routes::Get(srv.router(), "/cache", qos::gate::plain(ok));

  try {
    srv.start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "overhead_server: cannot listen on 127.0.0.1:%d: %s\n", port, e.what());
    return 1;
  }
  std::printf("overhead_server ready on http://127.0.0.1:%u (/plain, /guarded, /inline)\n",
              srv.port());
  std::fflush(stdout);
  return srv.run();
}

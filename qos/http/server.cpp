#include "qos/http/server.hpp"

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>

#include <pistache/net.h>

#include "qos/http/connection.hpp"
#include "qos/ops/log.hpp"

namespace qos {

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;

namespace {

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// Blocks the stop signals in this thread while alive, so threads created meanwhile inherit the
// mask; restores the old mask after.
class signals_blocked {
 public:
  signals_blocked() {
    const sigset_t set = stop_signals();
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~signals_blocked() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_;
};

}  // namespace

server::server(config::app_config cfg) {
  signals_blocked blocked;
  runtime_ = std::make_unique<qos::runtime>(std::move(cfg));
  runtime::prime(router_);
}

server::~server() {
  shutdown();
}

void server::start() {
  if (started_) return;
  signals_blocked blocked;
  const auto& s = config().server;
  const Pistache::Address addr(s.address, Pistache::Port(s.port));
  endpoint_ = std::make_unique<http::Endpoint>(addr);
  auto opts = http::Endpoint::options()
                  .threads(static_cast<int>(s.reactor_threads))
                  .flags(Pistache::Tcp::Options::ReuseAddr)
                  .backlog(static_cast<int>(s.backlog))
                  .maxRequestSize(s.max_request_size);
  endpoint_->init(opts);
  // The router behind qos's connection layer, which keeps the timeouts: Pistache's own
  // spare slow headers and cut long handlers (Pistache 0.0.5, defect 12).
  endpoint_->setHandler(connection_handler_for(router_, connection_options_of(s)));
  endpoint_->serveThreaded();
  started_ = true;
  logger()->info("qos: listening on http://{}:{}", s.address, port());
}

std::uint16_t server::port() const {
  if (!endpoint_) throw std::logic_error("server not started");
  return static_cast<std::uint16_t>(endpoint_->getPort());
}

int server::run() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  start();
  int sig = 0;
  sigwait(&set, &sig);
  logger()->info("qos: {} received, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
  if (!shutdown()) {
    // Handlers still hold writers into Pistache: neither destroying the server nor waiting
    // longer is safe, and the grace is over.
    std::_Exit(1);
  }
  return 0;
}

bool server::shutdown() {
  if (stopped_.exchange(true)) return drained_;
  const auto grace = config().server.shutdown_grace;
  drained_ = runtime_->drain(grace);
  if (!drained_) {
    logger()->error("qos: request(s) still running after the {} ms shutdown grace", grace.count());
    return false;
  }
  if (endpoint_) endpoint_->shutdown();
  logger()->info("qos: stopped");
  return true;
}

}  // namespace qos

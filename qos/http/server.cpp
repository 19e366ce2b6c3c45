#include "qos/http/server.hpp"

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>

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
  // The router behind qos's connection layer, which keeps the timeouts: Pistache's own
  // spare slow headers and cut long handlers (Pistache 0.0.5, defect 12).
  auto handler = connection_handler_for(router_, connection_options_of(s));
  handler->setMaxRequestSize(s.max_request_size);
  // qos's listener in place of Http::Endpoint's: Pistache's accepts one connection per wake
  // and spins at the descriptor limit (Pistache 0.0.5, defect 13), listens with a backlog of
  // 128 whatever Endpoint::Options::backlog says (Endpoint::init does not pass it on, defect
  // 15), and has no connection cap.
  listener_options lo;
  lo.address = s.address;
  lo.port = s.port;
  lo.reactor_threads = s.reactor_threads;
  lo.backlog = static_cast<int>(s.backlog);
  lo.max_connections = s.max_connections;
  listener_ = std::make_unique<qos::listener>(std::move(handler), lo);
  listener_->start();
  started_ = true;
  logger()->info("qos: listening on http://{}:{} (at most {} connections)", s.address, port(),
                 listener_->max_connections());
}

std::uint16_t server::port() const {
  return listener().port();
}

const qos::listener& server::listener() const {
  if (!listener_) throw std::logic_error("server not started");
  return *listener_;
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
  if (listener_) listener_->shutdown();
  logger()->info("qos: stopped");
  return true;
}

}  // namespace qos

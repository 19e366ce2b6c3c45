#include "qos/http/server.hpp"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <thread>

#include "qos/config/effective.hpp"
#include "qos/http/connection.hpp"
#include "qos/ops/log.hpp"

namespace qos {

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;

namespace {

// SIGHUP too: by default it ends the process, which is what a terminal or a process manager
// sending it for a reload least expects.
sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

const char* signal_name(int sig) {
  switch (sig) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGHUP:
      return "SIGHUP";
    default:
      return "signal";
  }
}

// The reply of POST /qos/reload and the text of a log line: what changed, what needs a
// restart, or why nothing did.
admin_reply reply_of(const reload_result& r) {
  admin_reply out;
  if (!r.applied) {
    out.status = 400;
    out.body = "not applied: " + r.error + "\n";
    return out;
  }
  out.body = r.changes.empty() ? "applied: no change\n" : "applied:\n";
  for (const auto& c : r.changes) out.body += "  " + c + "\n";
  if (!r.restart_needed.empty()) {
    out.body += "needs a restart (left unchanged):\n";
    for (const auto& c : r.restart_needed) out.body += "  " + c + "\n";
  }
  return out;
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
  {
    // A SIGHUP between here and run() (a reload asked for while the service starts) waits for
    // run() instead of ending the process, its default action. Threads this thread starts
    // later inherit the mask.
    sigset_t hup;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &hup, nullptr);
  }
  signals_blocked blocked;
  runtime_ = std::make_unique<qos::runtime>(std::move(cfg));
  runtime::prime(router_);
  const auto& routes = config().routes;
  if (std::any_of(routes.begin(), routes.end(),
                  [](const auto& r) { return r.mode == config::route_mode::accept; })) {
    rest::Routes::Get(router_, "/jobs/:id", runtime_->job_status_handler());
    rest::Routes::Get(router_, "/jobs/:id/result", runtime_->job_result_handler());
  }
  if (const auto& a = config().admin) {
    admin::hooks hooks;
    hooks.reload = [this] { return reply_of(reload()); };
    hooks.config_hash = [this] { return config::config_hash(*runtime_->current_config()); };
    hooks.config_version = [this] { return reloads_applied_.load(std::memory_order_relaxed); };
    admin_ = std::make_unique<qos::admin>(
        *runtime_, admin_options{.address = a->address, .port = a->port, .token = a->token},
        std::move(hooks));
  }
}

reload_result server::reload() {
  const auto& path = config().source;
  if (path.empty() || path.front() == '<') {
    reload_result r;
    r.error = "the config was not loaded from a file: nothing to re-read";
    logger()->warn("qos: reload refused: {}", r.error);
    return r;
  }
  auto r = runtime_->reload_file(path);
  if (r.applied) reloads_applied_.fetch_add(1, std::memory_order_relaxed);
  return r;
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
  lo.write_stall = s.write_stall;
  listener_ = std::make_unique<qos::listener>(std::move(handler), lo);
  // After the application's gate().accept() calls, before the first request.
  runtime_->start_jobs();
  listener_->start();
  if (admin_) admin_->start();
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
  for (;;) {
    sigwait(&set, &sig);
    if (sig != SIGHUP) break;
    logger()->info("qos: SIGHUP received, reloading {}", config().source);
    reload();
  }
  logger()->info("qos: {} received, draining", signal_name(sig));
  // The drain runs beside this thread, which keeps listening: a second SIGTERM or SIGINT
  // hurries it.
  std::atomic<bool> done{false};
  bool clean = false;
  std::thread drainer([&] {
    clean = shutdown();
    done.store(true, std::memory_order_release);
  });
  while (!done.load(std::memory_order_acquire)) {
    timespec tick{0, 50 * 1000 * 1000};
    const int got = sigtimedwait(&set, nullptr, &tick);
    if (got == SIGINT || got == SIGTERM) {
      logger()->warn("qos: {} received again, stopping now", signal_name(got));
      hurry();
    } else if (got == SIGHUP) {
      logger()->info("qos: SIGHUP ignored: draining");
    }
  }
  drainer.join();
  if (!clean) {
    // Handlers still hold writers into Pistache: neither destroying the server nor waiting
    // longer is safe, and the grace is over.
    std::_Exit(1);
  }
  return 0;
}

bool server::shutdown() {
  if (stopped_.exchange(true)) return drained_;
  const auto& s = config().server;
  // From the first moment of the drain each connection closes after its next answer, so a
  // client reconnects (through its load balancer, elsewhere) instead of sending a request the
  // stop would drop.
  if (listener_) listener_->end_keep_alive();
  if (admin_) admin_->set_ready(false);
  if (listener_ && s.drain_delay.count() > 0) {
    // /readyz says 503 while the public listener still serves, so a load balancer stops
    // sending before connections are refused.
    logger()->info("qos: draining: not ready; the listener closes in {} ms", s.drain_delay.count());
    const auto until = std::chrono::steady_clock::now() + s.drain_delay;
    while (std::chrono::steady_clock::now() < until && !hurry_.load(std::memory_order_acquire)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  if (listener_) listener_->stop_accepting();
  const auto grace_end = std::chrono::steady_clock::now() + s.shutdown_grace;
  drained_ = runtime_->drain(s.shutdown_grace, s.drain_parked, &hurry_);
  if (!drained_) {
    logger()->error("qos: request(s) still running after the {} ms shutdown grace",
                    s.shutdown_grace.count());
    return false;
  }
  // The last answers may still sit in the reactors' write queues (listener::flush): written
  // out before the reactors stop, within what is left of the grace (at least write_time), and
  // at most write_time after a hurry.
  const auto write_time = std::chrono::milliseconds(200);
  const auto now = std::chrono::steady_clock::now();
  const auto written_by = std::max(grace_end, now + write_time);
  std::optional<std::chrono::steady_clock::time_point> hurried;
  const auto give_up = [&] {
    if (!hurried && hurry_.load(std::memory_order_acquire)) {
      hurried = std::chrono::steady_clock::now();
    }
    return hurried && std::chrono::steady_clock::now() >= *hurried + write_time;
  };
  if (listener_ && !listener_->flush(written_by, give_up)) {
    logger()->warn("qos: stopping with responses unwritten to clients that do not read them");
  }
  if (admin_) admin_->shutdown();
  if (listener_) listener_->shutdown();
  logger()->info("qos: stopped");
  return true;
}

}  // namespace qos

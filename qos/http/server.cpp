#include "qos/http/server.hpp"

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>

#include <pistache/net.h>
#include <spdlog/spdlog.h>

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

// The config embeds admission's structs: slicing off the rest is the whole conversion.
template <class To, class From>
std::vector<To> sliced(const std::vector<From>& from) {
  return std::vector<To>(from.begin(), from.end());
}

}  // namespace

server::server(config::app_config cfg) : cfg_(std::move(cfg)) {
  signals_blocked blocked;
  executor_ = std::make_unique<executor>(
      executor_options{cfg_.server.fiber_threads, cfg_.server.max_pending_jobs, 64 * 1024});
  admission_ = std::make_unique<qos::admission>(
      sliced<group_options>(cfg_.groups), sliced<route_policy>(cfg_.routes), *executor_, metrics_);
  gate_ = std::make_unique<qos::gate>(*admission_, cfg_);
  gate::prime_router(router_);
  monitor_ = std::thread([this] { monitor_main(); });
}

server::~server() {
  shutdown();
}

rest::Route::Handler server::metrics_handler() {
  return [this](const rest::Request req, http::ResponseWriter writer) {
    gate::keep_alive(req, writer);
    writer.send(http::Code::Ok, metrics_.render(*admission_),
                http::Mime::MediaType::fromString("text/plain; version=0.0.4"));
    return rest::Route::Result::Ok;
  };
}

void server::start() {
  if (started_) return;
  signals_blocked blocked;
  const Pistache::Address addr(cfg_.server.address, Pistache::Port(cfg_.server.port));
  endpoint_ = std::make_unique<http::Endpoint>(addr);
  auto opts = http::Endpoint::options()
                  .threads(static_cast<int>(cfg_.server.reactor_threads))
                  .flags(Pistache::Tcp::Options::ReuseAddr)
                  .backlog(static_cast<int>(cfg_.server.backlog));
  endpoint_->init(opts);
  endpoint_->setHandler(router_.handler());
  endpoint_->serveThreaded();
  started_ = true;
  spdlog::info("qos: listening on http://{}:{}", cfg_.server.address, port());
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
  spdlog::info("qos: {} received, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
  if (!shutdown()) {
    // Handlers still hold writers into Pistache: neither destroying the server nor waiting
    // longer is safe, and the grace is over.
    std::_Exit(1);
  }
  return 0;
}

bool server::shutdown() {
  if (stopped_.exchange(true)) return drained_;
  admission_->shutdown();
  // Every parked request is answered now; running handlers hold writers that point into
  // Pistache's transport, so they must end before the endpoint goes away.
  const auto until = clock::now() + cfg_.server.shutdown_grace;
  while (executor_->live() != 0 && clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  drained_ = executor_->live() == 0;
  if (!drained_) {
    spdlog::error("qos: {} request(s) still running after the {} ms shutdown grace",
                  executor_->live(), cfg_.server.shutdown_grace.count());
    return false;
  }
  executor_->stop();
  if (endpoint_) endpoint_->shutdown();
  {
    std::lock_guard lk(monitor_mutex_);
    monitor_stop_ = true;
  }
  monitor_cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  spdlog::info("qos: stopped");
  return true;
}

void server::monitor_main() {
  std::unique_lock lk(monitor_mutex_);
  while (!monitor_cv_.wait_for(lk, std::chrono::seconds(1), [this] { return monitor_stop_; })) {
    lk.unlock();
    metrics_.tick(*admission_);
    lk.lock();
  }
}

}  // namespace qos

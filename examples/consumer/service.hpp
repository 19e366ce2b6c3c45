// The consumer's service, shaped as the README's "Bring your own server": its own Pistache
// endpoint and router, an image cache answered on the reactor, and a database route guarded by
// a qos::runtime (one query at a time, one waiting, the rest get the fallback). Setup and
// stop() from one thread; the routes run on Pistache's reactors and qos's blocking pool.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include <pistache/endpoint.h>
#include <pistache/router.h>

#include "qos/qos.hpp"

namespace consumer {

// The scarce resource: a blocking query that takes `latency`. Counts the queries in flight so
// that the smoke test can check the limit. hold() makes queries wait for release() (at most
// 5 s) before they start their latency, so that a test can keep the database busy for as long as
// it needs rather than hope that its requests overlap within 200 ms. Thread-safe.
class fake_database {
 public:
  std::string query(const std::string& id) {
    const int now = ++in_flight_;
    int most = most_in_flight_.load();
    while (now > most && !most_in_flight_.compare_exchange_weak(most, now)) {
    }
    {
      std::unique_lock lk(mutex_);
      released_.wait_for(lk, std::chrono::seconds(5), [this] { return !held_; });
    }
    std::this_thread::sleep_for(latency);
    --in_flight_;
    return "{\"item\":\"" + id + "\"}";
  }

  void hold() {
    std::lock_guard lk(mutex_);
    held_ = true;
  }
  void release() {
    {
      std::lock_guard lk(mutex_);
      held_ = false;
    }
    released_.notify_all();
  }
  int in_flight() const noexcept { return in_flight_.load(); }
  int most_in_flight() const noexcept { return most_in_flight_.load(); }

  std::chrono::milliseconds latency{200};

 private:
  std::atomic<int> in_flight_{0};
  std::atomic<int> most_in_flight_{0};
  std::mutex mutex_;
  std::condition_variable released_;
  bool held_ = false;  // guarded by mutex_
};

// qos's configuration, built in code (load_config_string takes the same as YAML); the runtime
// validates it either way. The database takes one query at a time and one in the queue; a
// request that finds the queue full is answered 503 at once, with Retry-After: 1 and
// X-QoS-Outcome: queue_full.
inline qos::config::app_config qos_settings() {
  qos::config::group_config db;
  db.name = "db";
  db.limiter.max_concurrent = 1;
  db.limiter.max_queue = 1;
  qos::config::route_config items;
  items.name = "db";
  items.group = "db";
  items.max_wait = std::chrono::seconds(2);
  items.fallback.route.status = 503;
  items.fallback.route.retry_after_s = 1;
  qos::config::app_config cfg;
  cfg.source = "<consumer>";
  cfg.groups.push_back(db);
  cfg.routes.push_back(items);
  return cfg;
}

class service {
 public:
  explicit service(std::uint16_t port)
      : endpoint_(Pistache::Address("127.0.0.1", Pistache::Port(port))) {
    image_cache_["logo"] = "<svg>logo</svg>";
  }
  service(const service&) = delete;
  service& operator=(const service&) = delete;
  // The runtime is destroyed before the endpoint (members in reverse order): a handler still
  // running holds a writer into Pistache.
  ~service() { stop(); }

  void serve() {
    using namespace Pistache;
    endpoint_.init(Http::Endpoint::options()
                       .threads(2)
                       .flags(Tcp::Options::ReuseAddr)
                       .maxRequestSize(16 * 1024)
                       .headerTimeout(std::chrono::seconds(10)));
    qos::runtime::prime(router_);
    auto db_read =
        qos_.gate().guard_blocking("db", [this](const Rest::Request& req, Http::ResponseWriter& w) {
          w.send(Http::Code::Ok, db_.query(req.param(":id").as<std::string>()),
                 MIME(Application, Json));
        });
    Rest::Routes::Get(router_, "/items/:id", db_read);
    // A hit answers on the reactor; a miss is a database read, limited like /items.
    Rest::Routes::Get(
        router_, "/images/:id",
        qos::gate::plain([this, db_read](const Rest::Request& req, Http::ResponseWriter& w) {
          const auto hit = image_cache_.find(req.param(":id").as<std::string>());
          if (hit != image_cache_.end()) {
            w.send(Http::Code::Ok, hit->second);
          } else {
            db_read(req, std::move(w));
          }
        }));
    Rest::Routes::Get(router_, "/metrics", qos_.metrics_handler());
    endpoint_.setHandler(router_.handler());
    endpoint_.serveThreaded();
    serving_ = true;
  }

  std::uint16_t port() const { return static_cast<std::uint16_t>(endpoint_.getPort()); }
  fake_database& database() noexcept { return db_; }

  // qos first: parked requests get their fallback and running handlers finish; then the
  // endpoint. Returns false when a handler still ran after the grace (then nothing is
  // destroyed under it: the endpoint stays up). Idempotent.
  bool stop() {
    if (!serving_) return true;
    if (!qos_.drain(std::chrono::seconds(5))) return false;
    endpoint_.shutdown();
    serving_ = false;
    return true;
  }

 private:
  fake_database db_;
  std::map<std::string, std::string> image_cache_;  // read-only once serving
  Pistache::Http::Endpoint endpoint_;
  Pistache::Rest::Router router_;
  qos::runtime qos_{qos_settings()};
  bool serving_ = false;
};

}  // namespace consumer

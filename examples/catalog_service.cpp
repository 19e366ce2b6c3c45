// catalog: an image/catalog service guarded by qos. The cache routes answer from memory on the
// reactor thread; the database routes read an embedded SQLite file through a pool of N
// connections (N = the `db` group's max_concurrent), guarded by the gate. With --naive the
// database routes run on the reactor thread with no gate: the baseline qos exists to beat.
// With the routes `orders` (mode accept) and `orders_sync` (guarded) in the config, POST /orders
// stores the order as a durable job and answers 202 at once (the `db` group's consumer writes it
// later, through the same pool and latency, and GET /jobs/{id} tells how it went), while
// POST /orders/sync writes it while the client waits (201). --naive serves /orders/sync on the
// reactor and no /orders at all (404): accept mode needs the gate.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <pistache/router.h>
#include <spdlog/spdlog.h>

#include "examples/catalog_db.hpp"
#include "qos/config/check.hpp"
#include "qos/qos.hpp"
#include "qos/version.hpp"

namespace http = Pistache::Http;
namespace rest = Pistache::Rest;

namespace {

// The example opens one SQLite connection per permit of the `db` group (max_concurrent). One
// file serialises its writers and each connection holds descriptors and a page cache, so past
// a few hundred more connections only add contention: the example refuses more than this.
constexpr std::size_t max_db_connections = 256;

struct options {
  std::string config = "config/qos.yaml";
  std::string db_path = "catalog.db";
  int db_latency_ms = 50;
  bool db_latency_total = false;  // --db-time total: the latency includes the query itself
  int port = -1;                  // -1: from the config
  // SQLite connections; 0: one per permit of the db group at start. A reload can raise the
  // limit only as far as the pool goes: open it for the largest limit you may reload to.
  std::size_t db_connections = 0;
  bool naive = false;
  std::string jobs_db;  // --jobs-db: overrides jobs.sqlite_path
};

void usage() {
  std::fprintf(stderr,
               "usage: catalog_service [--config FILE] [--db FILE] [--db-latency-ms MS]\n"
               "                       [--db-time extra|total] [--db-connections N] [--port PORT]\n"
               "                       [--jobs-db FILE] [--naive]\n"
               "       catalog_service --check FILE [--strict] [--print-effective]\n"
               "                       (validate FILE as qos-check does, and exit)\n");
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--config") {
      o.config = value();
    } else if (a == "--db") {
      o.db_path = value();
    } else if (a == "--db-latency-ms") {
      o.db_latency_ms = std::stoi(value());
    } else if (a == "--db-time") {
      const std::string v = value();
      if (v != "extra" && v != "total") throw std::invalid_argument("--db-time: extra or total");
      o.db_latency_total = v == "total";
    } else if (a == "--db-connections") {
      const int n = std::stoi(value());
      if (n < 1 || static_cast<std::size_t>(n) > max_db_connections) {
        throw std::invalid_argument("--db-connections: 1.." + std::to_string(max_db_connections));
      }
      o.db_connections = static_cast<std::size_t>(n);
    } else if (a == "--port") {
      o.port = std::stoi(value());
    } else if (a == "--jobs-db") {
      o.jobs_db = value();
    } else if (a == "--naive") {
      o.naive = true;
    } else if (a == "--version") {
      std::printf("catalog_service (qos) %s\n", QOS_VERSION_STRING);
      std::exit(0);
    } else if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument " + a);
    }
  }
  return o;
}

std::int64_t id_param(const rest::Request& req, std::int64_t fallback) {
  if (!req.hasParam(":id")) return fallback;
  try {
    return req.param(":id").as<std::int64_t>();
  } catch (...) {
    return -1;
  }
}

const auto json = http::Mime::MediaType::fromString("application/json");

// The cache hit: item JSON built once at start, read-only afterwards, so reactors share it
// without locks.
class item_cache {
 public:
  explicit item_cache(catalog::database& db) {
    for (const auto& it : db.list_items(0, 100000)) json_.emplace(it.id, catalog::item_to_json(it));
  }
  const std::string* find(std::int64_t id) const {
    auto it = json_.find(id);
    return it == json_.end() ? nullptr : &it->second;
  }
  std::size_t size() const { return json_.size(); }

 private:
  std::unordered_map<std::int64_t, std::string> json_;
};

}  // namespace

// What the example needs of a config beyond what qos checks: the `db` group and route its code
// guards, and a pool it can open. Checked before anything is opened: a pool of a million
// connections would fail later, as "unable to open database file".
void check_example_config(const qos::config::app_config& cfg) {
  using qos::config::config_error;
  const auto* db_group = cfg.find_group("db");
  if (db_group == nullptr)
    throw config_error(cfg.source, 0, 0, "groups", "the example needs a group 'db'");
  if (cfg.find_route("db") == nullptr) {
    throw config_error(cfg.source, 0, 0, "routes", "the example needs a route 'db'");
  }
  if (db_group->limiter.max_concurrent > max_db_connections) {
    throw config_error(
        cfg.source, db_group->line, 0,
        "groups[" + std::to_string(db_group - cfg.groups.data()) + "].max_concurrent",
        "the example opens one SQLite connection per permit, at most " +
            std::to_string(max_db_connections) + ", got " +
            std::to_string(db_group->limiter.max_concurrent));
  }
}

// Startup and serving; main turns any exception into exit status 2 and a message.
int run(int argc, char** argv) {
  // --check FILE [qos-check's options]: qos-check's report and exit status, plus the example's
  // own requirements; nothing is started.
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--check") {
      return qos::config::check_command(std::vector<std::string>(argv + i + 1, argv + argc),
                                        std::cout, std::cerr, "catalog_service --check",
                                        check_example_config);
    }
  }
  options opt;
  qos::config::app_config cfg;
  try {
    opt = parse(argc, argv);
    cfg = qos::config::load_config(opt.config);
    check_example_config(cfg);
  } catch (const qos::config::config_error& e) {
    std::fprintf(stderr, "catalog: bad config: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "catalog: %s\n", e.what());
    usage();
    return 2;
  }
  if (opt.port >= 0) cfg.server.port = static_cast<std::uint16_t>(opt.port);
  if (!opt.jobs_db.empty()) {
    if (!cfg.jobs) {
      std::fprintf(stderr, "catalog: --jobs-db: the config has no jobs: section\n");
      return 2;
    }
    cfg.jobs->sqlite_path = opt.jobs_db;
  }
  const auto* db_group = cfg.find_group("db");
  qos::setup_logging(cfg.logging);
  qos::log_startup_summary(cfg);

  std::unique_ptr<catalog::database> db;
  try {
    catalog::db_options dbo;
    dbo.path = opt.db_path;
    dbo.connections = opt.db_connections
                          ? std::max(opt.db_connections, db_group->limiter.max_concurrent)
                          : db_group->limiter.max_concurrent;
    dbo.extra_latency = std::chrono::milliseconds(opt.db_latency_ms);
    dbo.latency_is_total = opt.db_latency_total;
    dbo.seed_items = 1000;
    db = std::make_unique<catalog::database>(dbo);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "catalog: %s\n", e.what());
    return 2;
  }
  const item_cache cache(*db);
  const std::int64_t items = static_cast<std::int64_t>(cache.size());

  qos::server srv(cfg);
  auto& router = srv.router();
  auto& gate = srv.gate();

  // Cheap routes: memory only, on the reactor thread.
  auto cache_get = [&cache, items](const rest::Request& req, http::ResponseWriter& w) {
    const auto* body = cache.find(
        id_param(req, 1 + static_cast<std::int64_t>(std::hash<std::string>{}(req.resource()) %
                                                    static_cast<std::size_t>(items))));
    if (body == nullptr) {
      w.send(http::Code::Not_Found, std::string("{\"error\":\"no such item\"}"), json);
    } else {
      w.send(http::Code::Ok, *body, json);
    }
  };
  rest::Routes::Get(router, "/cache", qos::gate::plain(cache_get));
  rest::Routes::Get(router, "/cache/:id", qos::gate::plain(cache_get));
  rest::Routes::Get(router, "/health",
                    qos::gate::plain([](const rest::Request&, http::ResponseWriter& w) {
                      w.send(http::Code::Ok, std::string("ok\n"));
                    }));
  // The operational endpoints live on the admin listener (`admin:` in the config) beside qos's
  // own (/metrics, /qos/status, ...), never on the public one; without an admin listener the
  // example serves none. The peers' load scripts read these names: queries in flight now and at
  // most since the last reset (must never exceed N in guarded mode).
  if (auto* adm = srv.admin()) {
    auto stats = [&db](const rest::Request&, http::ResponseWriter& w) {
      w.send(http::Code::Ok,
             "{\"dbInFlight\":" + std::to_string(db->busy()) +
                 ",\"dbMaxInFlight\":" + std::to_string(db->max_busy()) +
                 ",\"dbConnections\":" + std::to_string(db->connections()) + "}",
             json);
    };
    // Bound beyond loopback, the admin listener wants the token on every request; a route added
    // to its router directly would escape that, so there /stats is behind protect() too.
    const bool loopback = qos::config::is_loopback_address(cfg.admin->address);
    rest::Routes::Get(adm->router(), "/stats",
                      loopback ? qos::gate::plain(stats) : adm->protect(qos::gate::plain(stats)));
    // Changes state, so a POST behind the token (403 when no token is configured).
    rest::Routes::Post(
        adm->router(), "/stats/reset",
        adm->protect(qos::gate::plain([&db](const rest::Request&, http::ResponseWriter& w) {
          db->reset_max_busy();
          w.send(http::Code::Ok, std::string("{\"reset\":true}"), json);
        })));
  }

  // Database routes: a blocking SQLite query plus the configured latency. They return their
  // response, so a route with max_exec can drop a late one.
  std::atomic<std::int64_t> next_id{0};
  auto not_found = [] {
    return qos::response{.status = 404, .body = "{\"error\":\"no such item\"}"};
  };
  qos::result_handler db_get = [&db, &next_id, items, not_found](const rest::Request& req) {
    const auto id = id_param(req, 1 + next_id.fetch_add(1, std::memory_order_relaxed) % items);
    if (auto it = db->get_item(id)) {
      return qos::response{.status = 200, .body = catalog::item_to_json(*it)};
    }
    return not_found();
  };
  qos::result_handler image_get = [&db, not_found](const rest::Request& req) {
    if (auto it = db->get_item(id_param(req, 1))) {
      return qos::response{.status = 200, .body = it->image_svg, .content_type = "image/svg+xml"};
    }
    return not_found();
  };

  // Orders: the same write whether it runs while the client waits (/orders/sync) or later as a
  // job (/orders). An empty body is the client's mistake: 400, and for a job its stored result.
  auto place_order = [&db](const std::string& body) {
    if (body.empty()) {
      return qos::response{.status = 400, .body = "{\"error\":\"an order needs a body\"}"};
    }
    const std::int64_t id = db->insert_order(body);
    return qos::response{.status = 201, .body = "{\"order\":" + std::to_string(id) + "}"};
  };
  qos::result_handler order_sync = [place_order](const rest::Request& req) {
    return place_order(req.body());
  };
  const auto* orders_route = cfg.find_route("orders");
  const bool accept_orders =
      orders_route != nullptr && orders_route->mode == qos::config::route_mode::accept;
  const bool sync_orders = cfg.find_route("orders_sync") != nullptr;

  if (opt.naive) {
    // The baseline: the query blocks the reactor thread that read the request.
    auto on_reactor = [](qos::result_handler h) {
      return qos::gate::plain([h](const rest::Request& req, http::ResponseWriter& w) {
        auto r = h(req);
        w.send(static_cast<http::Code>(r.status), r.body,
               http::Mime::MediaType::fromString(r.content_type));
      });
    };
    rest::Routes::Get(router, "/db", on_reactor(db_get));
    rest::Routes::Get(router, "/db/:id", on_reactor(db_get));
    rest::Routes::Get(router, "/image/:id", on_reactor(image_get));
    rest::Routes::Get(router, "/item/:id", on_reactor(db_get));
    if (sync_orders) rest::Routes::Post(router, "/orders/sync", on_reactor(order_sync));
  } else {
    if (accept_orders) {
      rest::Routes::Post(router, "/orders",
                         gate.accept("orders", [place_order](const qos::jobs::claimed_job& job) {
                           return place_order(job.request.body);
                         }));
    }
    if (sync_orders) {
      rest::Routes::Post(router, "/orders/sync", gate.guard_result("orders_sync", order_sync));
    }
    rest::Routes::Get(router, "/db", gate.guard_result("db", db_get));
    rest::Routes::Get(router, "/db/:id", gate.guard_result("db", db_get));
    if (cfg.find_route("image") != nullptr) {
      rest::Routes::Get(router, "/image/:id", gate.guard_result("image", image_get));
    }
    if (cfg.find_route("item") != nullptr) {
      rest::Routes::Get(router, "/item/:id", gate.guard_result("item", db_get));
      // A stale value beats an error: on overload, answer the cached copy, marked as such.
      gate.on_fallback("item",
                       [&cache](qos::outcome, const rest::Request& req, http::ResponseWriter& w) {
                         if (const auto* body = cache.find(id_param(req, -1))) {
                           qos::add_header(w, "X-Stale", "true");
                           w.send(http::Code::Ok, *body, json);
                         }
                         // Not sent: qos answers the route's static fallback.
                       });
    }
  }

  try {
    srv.start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "catalog: cannot listen on %s:%u: %s\n", cfg.server.address.c_str(),
                 cfg.server.port, e.what());
    return 2;
  }
  const auto base = "http://" + cfg.server.address + ":" + std::to_string(srv.port());
  spdlog::info("catalog: {} mode, {} items, {} DB connections, {} ms {} DB latency",
               opt.naive ? "NAIVE (no gate)" : "guarded", items, db->connections(),
               opt.db_latency_ms, opt.db_latency_total ? "total" : "extra");
  std::printf(
      "catalog service ready (%s mode). Try:\n"
      "  curl %s/cache/42      # memory, reactor thread\n"
      "  curl %s/db/42         # SQLite through the gate (group 'db')\n"
      "  curl %s/image/42      # SVG; placeholder on timeout\n"
      "  curl %s/item/42       # stale cached copy on overload\n",
      opt.naive ? "naive" : "guarded", base.c_str(), base.c_str(), base.c_str(), base.c_str());
  if (accept_orders && !opt.naive) {
    std::printf(
        "  curl -i -X POST -d '{\"sku\":42}' %s/orders       # 202 + Location: /jobs/{id}\n",
        base.c_str());
  }
  if (sync_orders) {
    std::printf("  curl -i -X POST -d '{\"sku\":42}' %s/orders/sync  # 201 once written\n",
                base.c_str());
  }
  if (const auto* adm = srv.admin()) {
    const auto admin_base = "http://" + cfg.admin->address + ":" + std::to_string(adm->port());
    const bool token = !cfg.admin->token.empty();
    std::printf(
        "Admin listener:\n"
        "  curl %s/metrics       # Prometheus metrics\n"
        "  curl %s/qos/status    # limits, queues, counters (JSON)\n"
        "  curl %s/stats         # DB queries in flight, and at most since the last reset\n"
        "  curl -X POST -H 'Authorization: Bearer ...' %s/stats/reset%s\n"
        "  curl -X POST -H 'Authorization: Bearer ...' %s/qos/reload%s\n",
        admin_base.c_str(), admin_base.c_str(), admin_base.c_str(), admin_base.c_str(),
        token ? "" : "  # 403: no admin token configured", admin_base.c_str(),
        token ? "" : "   # 403: no admin token configured; use kill -HUP");
  } else {
    std::printf(
        "No admin listener (no admin: section in %s): no metrics, status or stats are "
        "served.\n",
        opt.config.c_str());
  }
  std::printf("Stop with Ctrl-C.\n");
  std::fflush(stdout);
  return srv.run();
}

int main(int argc, char** argv) {
  // Whatever reaches here from startup (std::system_error, std::bad_alloc, anything else) ends
  // with a message and status 2 instead of std::terminate's abort.
  try {
    return run(argc, argv);
  } catch (const std::bad_alloc& e) {
    std::fprintf(stderr, "catalog: out of memory: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "catalog: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "catalog: unknown exception\n");
  }
  return 2;
}

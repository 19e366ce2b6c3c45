// Database layer of the example catalog service: an embedded SQLite file, seeded on first open,
// read (and its orders written) through a fixed pool of N connections. Thread-safety: database is
// fully thread-safe; each pooled connection is used by one thread at a time. The free functions are
// pure.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace catalog {

struct item {
  std::int64_t id = 0;
  std::string name;
  std::string description;
  double price = 0.0;
  std::string image_svg;  // a small generated SVG document
};

struct db_options {
  std::string path = "catalog.db";  // created and seeded on first open if missing or empty
  std::size_t connections = 8;      // the pool size N; must be at least 1
  // Slept while holding the connection after every query, to model a remote database and make
  // overload visible with a local file.
  std::chrono::milliseconds extra_latency{50};
  // When true, extra_latency is the whole time a query holds its connection (its own SQLite
  // time included), like a backend whose every call takes exactly that long.
  bool latency_is_total = false;
  std::size_t seed_items = 1000;  // rows written only if the table is missing or empty
};

class database {
 public:
  // Seeds the file if needed, then opens the pool. Throws std::runtime_error carrying SQLite's
  // message on any database failure, std::invalid_argument if connections is 0.
  explicit database(db_options options);
  // No query may be running: pooled connections are closed unconditionally.
  ~database();

  database(const database&) = delete;
  database& operator=(const database&) = delete;

  // Each query blocks until a pooled connection is free, then holds it for the query plus
  // extra_latency. Row failures throw std::runtime_error.
  std::optional<item> get_item(std::int64_t id);
  std::vector<item> list_items(std::int64_t offset, std::size_t limit);  // ordered by id
  std::int64_t item_count();
  // Writes an order (its JSON as given) and returns its id, through the pool and with the same
  // latency as a read. order_count() reads without the latency.
  std::int64_t insert_order(const std::string& body);
  std::int64_t order_count();

  std::size_t connections() const noexcept { return connections_.size(); }
  std::size_t busy() const;      // connections leased right now
  std::size_t max_busy() const;  // high-water mark of busy(), for tests and metrics
  void reset_max_busy();         // starts a new high-water mark from busy()

 private:
  struct connection;  // one sqlite3 handle and its prepared statements
  class lease;        // RAII: takes a free connection, gives it back on destruction

  connection& acquire();
  void release(connection& c) noexcept;
  // Sleeps the modelled latency of a query whose connection was leased at `leased`.
  void simulate_latency(std::chrono::steady_clock::time_point leased) const;

  db_options options_;
  std::vector<std::unique_ptr<connection>> connections_;

  mutable std::mutex mutex_;
  std::condition_variable available_;
  std::vector<connection*> free_;  // guarded by mutex_
  std::size_t busy_ = 0;           // guarded by mutex_
  std::size_t max_busy_ = 0;       // guarded by mutex_
};

// {"id":1,"name":"...","description":"...","price":12.5}; the image is left out on purpose.
std::string item_to_json(const item& it);

// Tiny deterministic SVG for an id: the seeded image, and fallback content when a row is missing.
std::string placeholder_svg(std::int64_t id);

}  // namespace catalog

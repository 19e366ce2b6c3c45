#include "examples/catalog_db.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

namespace catalog {
namespace {

struct db_closer {
  // close_v2 defers the close until any stray statement is finalized instead of leaking the handle.
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
struct stmt_finalizer {
  void operator()(sqlite3_stmt* s) const noexcept { sqlite3_finalize(s); }
};
using db_ptr = std::unique_ptr<sqlite3, db_closer>;
using stmt_ptr = std::unique_ptr<sqlite3_stmt, stmt_finalizer>;

constexpr int busy_timeout_ms = 5000;

[[noreturn]] void fail(sqlite3* db, std::string_view what) {
  std::string msg = "catalog db: ";
  msg += what;
  msg += ": ";
  msg += db != nullptr ? sqlite3_errmsg(db) : "out of memory";
  throw std::runtime_error(msg);
}

db_ptr open_db(const std::string& path, int flags) {
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  db_ptr db(raw);  // owned even on failure: SQLite usually hands back a handle carrying the error
  if (rc != SQLITE_OK) fail(db.get(), "open '" + path + "'");
  // Readers can still meet SQLITE_BUSY briefly (WAL recovery, another process seeding).
  sqlite3_busy_timeout(db.get(), busy_timeout_ms);
  return db;
}

void exec(sqlite3* db, const char* sql) {
  if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail(db, sql);
}

stmt_ptr prepare(sqlite3* db, std::string_view sql, unsigned flags = 0) {
  sqlite3_stmt* raw = nullptr;
  const int rc =
      sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()), flags, &raw, nullptr);
  stmt_ptr stmt(raw);
  if (rc != SQLITE_OK) fail(db, "prepare");
  return stmt;
}

// Returns a reused statement to its idle state on every exit path: a statement left mid-step keeps
// a read transaction open, which pins the WAL and blocks checkpoints.
class stmt_reset {
 public:
  explicit stmt_reset(sqlite3_stmt* s) noexcept : stmt_(s) {}
  ~stmt_reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  stmt_reset(const stmt_reset&) = delete;
  stmt_reset& operator=(const stmt_reset&) = delete;

 private:
  sqlite3_stmt* stmt_;
};

void bind_int64(sqlite3_stmt* s, int index, std::int64_t value) {
  if (sqlite3_bind_int64(s, index, value) != SQLITE_OK) fail(sqlite3_db_handle(s), "bind");
}

void bind_text(sqlite3_stmt* s, int index, const std::string& value) {
  // SQLITE_TRANSIENT: the caller's string does not outlive the insert loop iteration.
  if (sqlite3_bind_text(s, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT) !=
      SQLITE_OK)
    fail(sqlite3_db_handle(s), "bind");
}

// Step once; true if a row is ready, false when done.
bool step(sqlite3_stmt* s) {
  const int rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  fail(sqlite3_db_handle(s), "step");
}

std::string column_string(sqlite3_stmt* s, int col) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(s, col));
  if (text == nullptr) return {};
  // Length from column_bytes, called after column_text as SQLite requires, keeps embedded NULs.
  return std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(s, col)));
}

// Column order shared by every item query.
constexpr std::string_view item_columns = "id, name, description, price, image_svg";

item read_item(sqlite3_stmt* s) {
  item it;
  it.id = sqlite3_column_int64(s, 0);
  it.name = column_string(s, 1);
  it.description = column_string(s, 2);
  it.price = sqlite3_column_double(s, 3);
  it.image_svg = column_string(s, 4);
  return it;
}

std::int64_t count_items(sqlite3* db) {
  stmt_ptr stmt = prepare(db, "SELECT count(*) FROM items");
  if (!step(stmt.get())) fail(db, "count");
  return sqlite3_column_int64(stmt.get(), 0);
}

bool table_has_rows(sqlite3* db) {
  stmt_ptr probe =
      prepare(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'items'");
  if (!step(probe.get())) return false;
  probe.reset();
  stmt_ptr any = prepare(db, "SELECT 1 FROM items LIMIT 1");
  return step(any.get());
}

constexpr const char* category_names[] = {"Tools", "Garden", "Kitchen", "Books", "Toys", "Audio"};

item seed_item(std::int64_t id) {
  char name[32];
  std::snprintf(name, sizeof name, "Item %04lld", static_cast<long long>(id));
  const auto category = category_names[static_cast<std::size_t>(id) % std::size(category_names)];
  item it;
  it.id = id;
  it.name = name;
  it.description = std::string("Sample ") + category + " item number " + std::to_string(id) +
                   ", generated for the catalog example.";
  // Whole cents in [1.00, 200.99], scattered so pages do not look sorted by price.
  it.price = 1.0 + static_cast<double>((id * 7919) % 20000) / 100.0;
  it.image_svg = placeholder_svg(id);
  return it;
}

// Creates and fills the table unless it already has rows. Safe against another process seeding
// the same file concurrently: the emptiness check is repeated under the write lock.
void seed_if_needed(const db_options& options) {
  db_ptr db =
      open_db(options.path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX);
  // Read-only probe first, so an already seeded file in a read-only location still opens.
  if (table_has_rows(db.get())) return;

  // WAL lets the pool's readers run while nothing blocks them; it is persistent in the file.
  exec(db.get(), "PRAGMA journal_mode=WAL");
  exec(db.get(), "BEGIN IMMEDIATE");
  try {
    exec(db.get(),
         "CREATE TABLE IF NOT EXISTS items ("
         "id INTEGER PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, "
         "price REAL NOT NULL, image_svg TEXT NOT NULL)");
    if (count_items(db.get()) == 0) {
      stmt_ptr insert = prepare(db.get(),
                                "INSERT INTO items (id, name, description, price, image_svg) "
                                "VALUES (?1, ?2, ?3, ?4, ?5)");
      for (std::size_t i = 1; i <= options.seed_items; ++i) {
        const item it = seed_item(static_cast<std::int64_t>(i));
        stmt_reset guard(insert.get());
        bind_int64(insert.get(), 1, it.id);
        bind_text(insert.get(), 2, it.name);
        bind_text(insert.get(), 3, it.description);
        if (sqlite3_bind_double(insert.get(), 4, it.price) != SQLITE_OK) fail(db.get(), "bind");
        bind_text(insert.get(), 5, it.image_svg);
        step(insert.get());
      }
    }
    exec(db.get(), "COMMIT");
  } catch (...) {
    sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  // Fold the seed into the main file so the pool starts with an empty WAL. Best effort: readers
  // from another process may hold it back, and the data is durable in the WAL either way.
  sqlite3_exec(db.get(), "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr);
}

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += ch;  // UTF-8 passes through unchanged; JSON allows it raw
        }
    }
  }
  out += '"';
}

void append_json_number(std::string& out, double v) {
  if (!std::isfinite(v)) {  // JSON has no NaN or infinity
    out += "null";
    return;
  }
  char buf[32];
  // Shortest round-trip form: 12.5 stays "12.5" rather than "12.500000".
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc{}) {
    out += "null";
    return;
  }
  out.append(buf, end);
}

}  // namespace

struct database::connection {
  db_ptr db;
  // Prepared once per connection: the hot path only binds, steps and resets.
  stmt_ptr get_item;
  stmt_ptr list_items;
  stmt_ptr count;
  stmt_ptr insert_order;  // the one write: orders (POST /orders, /orders/sync)
  stmt_ptr order_count;
};

class database::lease {
 public:
  explicit lease(database& owner)
      : owner_(owner), conn_(owner.acquire()), since_(std::chrono::steady_clock::now()) {}
  ~lease() { owner_.release(conn_); }
  lease(const lease&) = delete;
  lease& operator=(const lease&) = delete;

  connection& operator*() const noexcept { return conn_; }
  connection* operator->() const noexcept { return &conn_; }
  std::chrono::steady_clock::time_point since() const noexcept { return since_; }

 private:
  database& owner_;
  connection& conn_;
  std::chrono::steady_clock::time_point since_;
};

database::database(db_options options) : options_(std::move(options)) {
  if (options_.connections == 0) throw std::invalid_argument("catalog db: connections must be > 0");
  // NOMUTEX relies on SQLite being built for multi-thread use; a single-thread build would make
  // the pool unsafe, so refuse it up front.
  if (sqlite3_threadsafe() == 0) throw std::runtime_error("catalog db: sqlite3 is not thread-safe");

  seed_if_needed(options_);
  {
    // The orders written by POST /orders (a job) and /orders/sync; kept apart from the seeded
    // items, and created in files seeded before orders existed.
    db_ptr db = open_db(options_.path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX);
    exec(db.get(),
         "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY AUTOINCREMENT, "
         "body TEXT NOT NULL)");
  }

  const std::string get_sql = "SELECT " + std::string(item_columns) + " FROM items WHERE id = ?1";
  const std::string list_sql =
      "SELECT " + std::string(item_columns) + " FROM items ORDER BY id LIMIT ?1 OFFSET ?2";

  connections_.reserve(options_.connections);
  free_.reserve(options_.connections);
  for (std::size_t i = 0; i < options_.connections; ++i) {
    auto c = std::make_unique<connection>();
    // Read-write: the orders are written through the pool too, so that a write holds one of the
    // N connections like a read (SQLite's busy timeout serializes the writers). NOMUTEX: the pool
    // already guarantees one thread per connection, so SQLite's own per-call locking would be pure
    // overhead.
    c->db = open_db(options_.path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX);
    c->get_item = prepare(c->db.get(), get_sql, SQLITE_PREPARE_PERSISTENT);
    c->list_items = prepare(c->db.get(), list_sql, SQLITE_PREPARE_PERSISTENT);
    c->count = prepare(c->db.get(), "SELECT count(*) FROM items", SQLITE_PREPARE_PERSISTENT);
    c->insert_order =
        prepare(c->db.get(), "INSERT INTO orders (body) VALUES (?1)", SQLITE_PREPARE_PERSISTENT);
    c->order_count = prepare(c->db.get(), "SELECT count(*) FROM orders", SQLITE_PREPARE_PERSISTENT);
    free_.push_back(c.get());
    connections_.push_back(std::move(c));
  }
}

database::~database() = default;

database::connection& database::acquire() {
  std::unique_lock lock(mutex_);
  available_.wait(lock, [this] { return !free_.empty(); });
  connection* c = free_.back();
  free_.pop_back();
  ++busy_;
  max_busy_ = std::max(max_busy_, busy_);
  return *c;
}

void database::release(connection& c) noexcept {
  {
    std::lock_guard lock(mutex_);
    free_.push_back(&c);
    --busy_;
  }
  available_.notify_one();
}

void database::simulate_latency(std::chrono::steady_clock::time_point leased) const {
  if (options_.extra_latency <= std::chrono::milliseconds::zero()) return;
  if (options_.latency_is_total) {
    std::this_thread::sleep_until(leased + options_.extra_latency);
  } else {
    std::this_thread::sleep_for(options_.extra_latency);
  }
}

std::optional<item> database::get_item(std::int64_t id) {
  lease conn(*this);
  std::optional<item> result;
  {
    sqlite3_stmt* s = conn->get_item.get();
    stmt_reset guard(s);
    bind_int64(s, 1, id);
    if (step(s)) result = read_item(s);
  }
  simulate_latency(conn.since());
  return result;
}

std::vector<item> database::list_items(std::int64_t offset, std::size_t limit) {
  // SQLite reads a negative LIMIT as "no limit", so clamp rather than wrap.
  constexpr auto max_limit = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  const auto bound = static_cast<std::int64_t>(std::min(limit, max_limit));

  lease conn(*this);
  std::vector<item> result;
  {
    sqlite3_stmt* s = conn->list_items.get();
    stmt_reset guard(s);
    bind_int64(s, 1, bound);
    bind_int64(s, 2, std::max<std::int64_t>(offset, 0));
    while (step(s)) result.push_back(read_item(s));
  }
  simulate_latency(conn.since());
  return result;
}

std::int64_t database::item_count() {
  lease conn(*this);
  std::int64_t n = 0;
  {
    sqlite3_stmt* s = conn->count.get();
    stmt_reset guard(s);
    if (!step(s)) fail(conn->db.get(), "count");
    n = sqlite3_column_int64(s, 0);
  }
  simulate_latency(conn.since());
  return n;
}

std::int64_t database::insert_order(const std::string& body) {
  lease conn(*this);
  std::int64_t id = 0;
  {
    sqlite3_stmt* s = conn->insert_order.get();
    stmt_reset guard(s);
    bind_text(s, 1, body);
    step(s);
    id = sqlite3_last_insert_rowid(conn->db.get());
  }
  simulate_latency(conn.since());
  return id;
}

std::int64_t database::order_count() {
  lease conn(*this);
  sqlite3_stmt* s = conn->order_count.get();
  stmt_reset guard(s);
  if (!step(s)) fail(conn->db.get(), "count");
  return sqlite3_column_int64(s, 0);
}

std::size_t database::busy() const {
  std::lock_guard lock(mutex_);
  return busy_;
}

std::size_t database::max_busy() const {
  std::lock_guard lock(mutex_);
  return max_busy_;
}

void database::reset_max_busy() {
  std::lock_guard lock(mutex_);
  max_busy_ = busy_;
}

std::string item_to_json(const item& it) {
  std::string out;
  out.reserve(64 + it.name.size() + it.description.size());
  out += "{\"id\":";
  out += std::to_string(it.id);
  out += ",\"name\":";
  append_json_string(out, it.name);
  out += ",\"description\":";
  append_json_string(out, it.description);
  out += ",\"price\":";
  append_json_number(out, it.price);
  out += '}';
  return out;
}

std::string placeholder_svg(std::int64_t id) {
  // Knuth's multiplicative hash spreads neighbouring ids over distinct colours.
  const auto hash = static_cast<std::uint32_t>(static_cast<std::uint64_t>(id) * 2654435761u);
  const unsigned rgb = (hash >> 8) & 0xffffffu;
  char buf[384];
  std::snprintf(buf, sizeof buf,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\" "
                "viewBox=\"0 0 64 64\"><rect width=\"64\" height=\"64\" fill=\"#%06x\"/>"
                "<text x=\"32\" y=\"38\" font-family=\"sans-serif\" font-size=\"14\" "
                "text-anchor=\"middle\" fill=\"#ffffff\">%lld</text></svg>",
                rgb, static_cast<long long>(id));
  return buf;
}

}  // namespace catalog

// Internal to the SQLite store (qos/jobs/sqlite_store.cpp); not part of the API.
// A thin RAII layer over the SQLite C API for the job store: a connection with a cache of
// prepared statements, a bound and stepped statement that resets itself, and a transaction
// that rolls back unless committed. Every failure throws store_error. Not thread-safe: each
// connection belongs to one thread (or one mutex) at a time.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "qos/jobs/store_error.hpp"

namespace qos::jobs::detail {

[[noreturn]] void throw_sqlite(sqlite3* db, int rc, std::string_view what);

// One step-through of a cached statement; reset and unbound on destruction, so a statement
// left mid-way never holds a read snapshot.
class query {
 public:
  query(sqlite3* db, sqlite3_stmt* stmt) noexcept : db_(db), stmt_(stmt) {}
  ~query();
  query(const query&) = delete;
  query& operator=(const query&) = delete;

  query& bind(int index, std::int64_t value);
  query& bind(int index, std::string_view text);
  query& bind_blob(int index, std::string_view bytes);
  query& bind_null(int index);
  // True: a row is ready; false: done.
  bool step();
  // Steps a statement that returns no row (or ignores them) and says how many rows it changed.
  int run();

  std::int64_t i64(int column) const noexcept { return sqlite3_column_int64(stmt_, column); }
  std::string text(int column) const;
  bool null(int column) const noexcept { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_;
};

class connection {
 public:
  connection(const std::string& path, int flags);
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  sqlite3* get() const noexcept { return db_; }
  void exec(const char* sql);
  // `sql` is a string literal: the cache is keyed by its address.
  query prepare(const char* sql);
  std::int64_t pragma_int(const char* sql);
  std::string pragma_text(const char* sql);

 private:
  sqlite3* db_ = nullptr;
  std::unordered_map<const char*, sqlite3_stmt*> cache_;
};

// BEGIN IMMEDIATE: takes the write lock at once, so the transaction never fails half-way on a
// lock upgrade. Rolls back on destruction unless commit() succeeded.
class transaction {
 public:
  explicit transaction(connection& db);
  ~transaction();
  transaction(const transaction&) = delete;
  transaction& operator=(const transaction&) = delete;
  void commit();

 private:
  connection& db_;
  bool open_ = true;
};

}  // namespace qos::jobs::detail

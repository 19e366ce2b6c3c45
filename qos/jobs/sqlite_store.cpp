#include "qos/jobs/sqlite_store.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "qos/jobs/detail/header_blob.hpp"
#include "qos/jobs/detail/sqlite_db.hpp"
#include "qos/jobs/job_id.hpp"

namespace qos::jobs {
namespace {

using detail::connection;
using detail::decode_headers;
using detail::encode_headers;
using detail::query;
using detail::transaction;

// The stored state numbers; a row never holds any other.
constexpr std::int64_t state_queued = 0;
constexpr std::int64_t state_running = 1;
constexpr std::int64_t state_succeeded = 2;
constexpr std::int64_t state_dead = 3;

// Rows deleted per transaction by prune(): enqueues wait behind a writer transaction, so a
// large prune is cut into short ones.
constexpr int prune_chunk = 1000;

enqueue_result answer(enqueue_result::kind kind, job_id id = {}, std::string error = {}) {
  return {kind, std::move(id), std::move(error)};
}

std::int64_t to_ms(wall_time t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

wall_time from_ms(std::int64_t ms) {
  return wall_time(std::chrono::duration_cast<wall_time::duration>(std::chrono::milliseconds(ms)));
}

// Schema version 1. `attempts` counts runs started; `fence` is bumped by every claim, so the
// token a worker holds is current only while its lease is the job's latest. Times are Unix
// milliseconds.
constexpr const char* schema_v1 = R"sql(
CREATE TABLE jobs (
  id TEXT NOT NULL UNIQUE,
  route TEXT NOT NULL,
  grp TEXT NOT NULL,
  tenant TEXT NOT NULL,
  method TEXT NOT NULL,
  target TEXT NOT NULL,
  headers BLOB NOT NULL,
  body BLOB NOT NULL,
  priority INTEGER NOT NULL,
  state INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  fence INTEGER NOT NULL DEFAULT 0,
  run_at INTEGER NOT NULL,
  lease_until INTEGER,
  last_error TEXT NOT NULL DEFAULT '',
  result_status INTEGER,
  result_headers BLOB,
  result_body BLOB,
  created INTEGER NOT NULL,
  finished INTEGER
);
-- claim: runnable jobs of a group in priority then run_at order; running jobs per group.
CREATE INDEX jobs_claim ON jobs (grp, state, priority DESC, run_at);
-- depth per route (queued + running).
CREATE INDEX jobs_route ON jobs (route, state);
-- requeue_expired (state 1 by lease_until) and prune (states 2, 3 by finished).
CREATE INDEX jobs_lease ON jobs (state, lease_until) WHERE state = 1;
CREATE INDEX jobs_finished ON jobs (state, finished) WHERE state IN (2, 3);
-- One row per key in its scope: concurrent duplicates meet on this key.
CREATE TABLE idempotency_keys (
  route TEXT NOT NULL,
  tenant TEXT NOT NULL,
  key TEXT NOT NULL,
  payload_hash TEXT NOT NULL,
  job_id TEXT NOT NULL,
  expires INTEGER NOT NULL,
  PRIMARY KEY (route, tenant, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires);
)sql";

// Version 2: each route's depth (queued + running jobs) kept by triggers, so that the depth
// cap costs one row read per enqueue batch rather than a count over every queued job (with a
// backlog of 10^5 jobs the count took most of the writer's time).
constexpr const char* schema_v2 = R"sql(
CREATE TABLE route_depth (
  route TEXT PRIMARY KEY,
  n INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO route_depth SELECT route, count(*) FROM jobs WHERE state IN (0, 1) GROUP BY route;
CREATE TRIGGER jobs_depth_insert AFTER INSERT ON jobs WHEN NEW.state IN (0, 1) BEGIN
  INSERT INTO route_depth (route, n) VALUES (NEW.route, 1)
    ON CONFLICT (route) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER jobs_depth_delete AFTER DELETE ON jobs WHEN OLD.state IN (0, 1) BEGIN
  UPDATE route_depth SET n = n - 1 WHERE route = OLD.route;
END;
CREATE TRIGGER jobs_depth_update AFTER UPDATE OF state ON jobs
  WHEN (OLD.state IN (0, 1)) != (NEW.state IN (0, 1)) BEGIN
  INSERT INTO route_depth (route, n) VALUES (NEW.route, CASE WHEN NEW.state IN (0, 1) THEN 1 ELSE -1 END)
    ON CONFLICT (route) DO UPDATE SET n = n + excluded.n;
END;
)sql";

// migrations[v] takes a database from user_version v to v + 1.
constexpr const char* migrations[] = {schema_v1, schema_v2};
static_assert(std::size(migrations) == sqlite_store::schema_version);

void migrate(connection& db) {
  transaction tx(db);
  const std::int64_t version = db.pragma_int("PRAGMA user_version");
  if (version > sqlite_store::schema_version) {
    throw store_error("job store schema version " + std::to_string(version) +
                      " is newer than this build's " +
                      std::to_string(sqlite_store::schema_version));
  }
  for (auto v = version; v < sqlite_store::schema_version; ++v) db.exec(migrations[v]);
  if (version != sqlite_store::schema_version) {
    db.exec(("PRAGMA user_version = " + std::to_string(sqlite_store::schema_version)).c_str());
  }
  tx.commit();
}

// The process lock: flock() on `<path>.lock`, held for the store's life. Released by the
// kernel when the process dies (kill -9 included), so a crashed owner never blocks a restart.
class file_lock {
 public:
  explicit file_lock(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      throw store_error("cannot open lock file " + path + ": " + std::strerror(errno));
    }
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      std::string owner(32, '\0');
      const ssize_t n = ::pread(fd_, owner.data(), owner.size(), 0);
      owner.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
      ::close(fd_);
      if (err == EWOULDBLOCK) {
        throw store_error(path + " is held by another process" +
                          (owner.empty() ? std::string() : " (pid " + owner + ")") +
                          ": one process owns a SQLite job store; share a queue between "
                          "processes with the PostgreSQL store");
      }
      throw store_error("cannot lock " + path + ": " + std::strerror(err));
    }
    // The owner's pid, for the message above; the lock itself is what counts.
    const std::string pid = std::to_string(::getpid());
    if (::ftruncate(fd_, 0) == 0) {
      [[maybe_unused]] const ssize_t written = ::pwrite(fd_, pid.data(), pid.size(), 0);
    }
  }
  ~file_lock() { ::close(fd_); }  // closing the descriptor releases the flock
  file_lock(const file_lock&) = delete;
  file_lock& operator=(const file_lock&) = delete;

 private:
  int fd_ = -1;
};

constexpr int open_flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;

// SQL of the writer. Each is a named literal: the statement cache is keyed by its address.
constexpr const char* sql_find_key =
    "SELECT payload_hash, job_id, expires FROM idempotency_keys "
    "WHERE route = ?1 AND tenant = ?2 AND key = ?3";
constexpr const char* sql_drop_key =
    "DELETE FROM idempotency_keys WHERE route = ?1 AND tenant = ?2 AND key = ?3";
constexpr const char* sql_depth =
    "SELECT coalesce((SELECT n FROM route_depth WHERE route = ?1), 0)";
constexpr const char* sql_insert_job =
    "INSERT INTO jobs (id, route, grp, tenant, method, target, headers, body, priority, state, "
    "run_at, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10, ?10)";
constexpr const char* sql_insert_key =
    "INSERT INTO idempotency_keys (route, tenant, key, payload_hash, job_id, expires) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
constexpr const char* sql_running = "SELECT count(*) FROM jobs WHERE grp = ?1 AND state = 1";
constexpr const char* sql_runnable =
    "SELECT rowid FROM jobs WHERE grp = ?1 AND state = 0 AND run_at <= ?2 "
    "ORDER BY priority DESC, run_at, rowid LIMIT ?3";
constexpr const char* sql_lease =
    "UPDATE jobs SET state = 1, attempts = attempts + 1, fence = fence + 1, lease_until = ?2 "
    "WHERE rowid = ?1 RETURNING id, fence, attempts, route, grp, tenant, method, target, "
    "headers, body, priority";
constexpr const char* sql_heartbeat =
    "UPDATE jobs SET lease_until = ?3 WHERE id = ?1 AND state = 1 AND fence = ?2";
constexpr const char* sql_complete =
    "UPDATE jobs SET state = 2, lease_until = NULL, finished = ?3, last_error = '', "
    "result_status = ?4, result_headers = ?5, result_body = ?6 "
    "WHERE id = ?1 AND state = 1 AND fence = ?2";
constexpr const char* sql_leased_attempts =
    "SELECT attempts FROM jobs WHERE id = ?1 AND state = 1 AND fence = ?2";
constexpr const char* sql_retry =
    "UPDATE jobs SET state = 0, lease_until = NULL, run_at = ?2, last_error = ?3 WHERE id = ?1";
constexpr const char* sql_bury =
    "UPDATE jobs SET state = 3, lease_until = NULL, finished = ?2, last_error = ?3 WHERE id = ?1";
constexpr const char* sql_expired =
    "SELECT id, attempts FROM jobs WHERE state = 1 AND lease_until <= ?1";
constexpr const char* sql_prune_jobs =
    "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs WHERE state IN (2, 3) AND "
    "finished < ?1 "
    "LIMIT ?2)";
constexpr const char* sql_prune_keys =
    "DELETE FROM idempotency_keys WHERE (route, tenant, key) IN (SELECT route, tenant, key "
    "FROM idempotency_keys WHERE expires <= ?1 LIMIT ?2)";
constexpr const char* sql_requeue_dead =
    "UPDATE jobs SET state = 0, attempts = 0, run_at = ?2, finished = NULL WHERE id = ?1 AND "
    "state = 3";
constexpr const char* sql_purge = "DELETE FROM jobs WHERE id = ?1 AND state = 3";
// The reader's.
constexpr const char* sql_status =
    "SELECT state, attempts, run_at, last_error, created, finished, result_status, "
    "result_headers, result_body FROM jobs WHERE id = ?1";

// Commits of its scope without waiting for an fsync (synchronous NORMAL) on a connection that
// is FULL otherwise; a no-op when not `on`.
class relaxed_sync {
 public:
  relaxed_sync(connection& db, bool on) : db_(on ? &db : nullptr) {
    if (db_) db_->exec("PRAGMA synchronous = NORMAL");
  }
  relaxed_sync(const relaxed_sync&) = delete;
  relaxed_sync& operator=(const relaxed_sync&) = delete;
  ~relaxed_sync() {
    if (!db_) return;
    try {
      db_->exec("PRAGMA synchronous = FULL");
    } catch (...) {
      // Leaves this connection at NORMAL: a commit would then not wait for its fsync. A
      // pragma fails only when the connection is unusable, and then nothing commits anyway.
    }
  }

 private:
  connection* db_;
};

}  // namespace

struct sqlite_store::impl {
  // One enqueue() waiting for its batch's commit.
  struct pending_enqueue {
    const job_request* job;
    const enqueue_options* options;
    std::promise<enqueue_result> done;
  };
  // One other writer call (claim, complete, heartbeat, ...) waiting for the writer. `work` runs
  // in the writer's transaction, in a savepoint of its own; `done` runs after the commit, with
  // the exception that ended the work or the commit (nullptr: committed). `alone`: runs outside
  // any transaction (a checkpoint), `done` right after it. `lease`: a consumer's lease write
  // (claim, heartbeat, completion, retry), see run().
  struct pending_task {
    std::function<void()> work;
    std::function<void(std::exception_ptr)> done;
    bool alone = false;
    bool lease = false;
  };

  sqlite_options options;
  file_lock lock;
  connection writer;
  // status() and depth() only; guarded by reader_mutex.
  std::mutex reader_mutex;
  connection reader;

  std::mutex mutex;  // guards the queues and stopping
  std::condition_variable wake;
  std::deque<pending_enqueue*> enqueues;
  std::chrono::steady_clock::time_point first_enqueue{};  // of the oldest in `enqueues`
  std::deque<pending_task*> tasks;
  bool stopping = false;
  std::atomic<std::uint64_t> enqueue_commits{0};
  std::atomic<std::uint64_t> relaxed_commits{0};

  // The checkpointer: copies the WAL back into the database on a connection and thread of its
  // own once the writer's commits reach autocheckpoint_pages of WAL. SQLite's autocheckpoint
  // would run it on the writer right after a commit, and every enqueue waiting for the next
  // batch would wait for the copy too (a few ms, the enqueues' p99). A PASSIVE checkpoint on
  // another connection runs beside the writer's transactions in WAL mode.
  connection checkpointer;
  std::mutex checkpoint_mutex;  // guards checkpoint_due and checkpoint_stop
  std::condition_variable checkpoint_wake;
  bool checkpoint_due = false;
  bool checkpoint_stop = false;
  std::thread checkpoint_thread;

  std::thread thread;  // last: started when everything above exists

  explicit impl(sqlite_options o)
      : options(complete(std::move(o))),
        lock(options.path + ".lock"),
        writer(options.path, open_flags),
        // The comma runs configure() (WAL, pragmas, migration) before the reader opens, so
        // the reader never sees a database without its schema.
        reader((configure(writer, options), options.path), open_flags),
        checkpointer(options.path, open_flags) {
    sqlite3_busy_timeout(reader.get(), static_cast<int>(options.busy_timeout.count()));
    reader.exec("PRAGMA query_only = 1");
    // Replaces SQLite's autocheckpoint (itself a WAL hook) on the writer.
    sqlite3_wal_hook(writer.get(), &impl::on_wal_commit, this);
    checkpoint_thread = std::thread([this] { checkpoint_main(); });
    thread = std::thread([this] { run(); });
  }

  ~impl() {
    {
      const std::lock_guard guard(mutex);
      stopping = true;
    }
    wake.notify_all();
    thread.join();
    {
      const std::lock_guard guard(checkpoint_mutex);
      checkpoint_stop = true;
    }
    checkpoint_wake.notify_all();
    checkpoint_thread.join();
  }

  // On the writer thread, inside its commit: only a flag and a wake-up.
  static int on_wal_commit(void* self, sqlite3*, const char*, int pages) {
    auto* store = static_cast<impl*>(self);
    if (store->options.autocheckpoint_pages > 0 && pages >= store->options.autocheckpoint_pages) {
      {
        const std::lock_guard guard(store->checkpoint_mutex);
        store->checkpoint_due = true;
      }
      store->checkpoint_wake.notify_one();
    }
    return SQLITE_OK;
  }

  void checkpoint_main() {
    std::unique_lock guard(checkpoint_mutex);
    for (;;) {
      checkpoint_wake.wait(guard, [this] { return checkpoint_stop || checkpoint_due; });
      if (checkpoint_stop) return;
      checkpoint_due = false;
      guard.unlock();
      // Best effort, as SQLite's own: a failure leaves the WAL longer, the next one shortens it.
      sqlite3_wal_checkpoint_v2(checkpointer.get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr,
                                nullptr);
      guard.lock();
    }
  }

  static sqlite_options complete(sqlite_options o) {
    if (o.path.empty()) throw store_error("sqlite job store: no path");
    if (!o.now) o.now = [] { return wall_clock::now(); };
    if (!o.random) o.random = default_unit_random();
    if (o.max_batch == 0) o.max_batch = 1;
    return o;
  }

  static void configure(connection& db, const sqlite_options& o) {
    sqlite3_busy_timeout(db.get(), static_cast<int>(o.busy_timeout.count()));
    if (db.pragma_text("PRAGMA journal_mode = WAL") != "wal") {
      throw store_error(o.path + ": cannot switch to WAL mode");
    }
    db.exec(o.synchronous == sqlite_options::sync_mode::full ? "PRAGMA synchronous = FULL"
                                                             : "PRAGMA synchronous = NORMAL");
    db.exec(("PRAGMA journal_size_limit = " + std::to_string(o.journal_size_limit)).c_str());
    migrate(db);
  }

  std::int64_t now_ms() const { return to_ms(options.now()); }

  // Runs `work` on the writer thread inside a transaction and returns its value once that
  // committed; a database failure arrives here as store_error. The transaction may be shared
  // with other calls and with a batch of enqueues (one commit for all of them), in a savepoint
  // of its own, so its failure undoes only its own writes.
  template <class Work>
  auto write(Work work, bool alone = false, bool lease = false) -> decltype(work()) {
    using result = decltype(work());
    using stored = std::conditional_t<std::is_void_v<result>, bool, result>;
    std::promise<result> promise;
    std::optional<stored> value;
    pending_task task{[&] {
                        if constexpr (std::is_void_v<result>) {
                          work();
                          value.emplace(true);
                        } else {
                          value.emplace(work());
                        }
                      },
                      [&](std::exception_ptr e) {
                        if (e) {
                          promise.set_exception(e);
                        } else if constexpr (std::is_void_v<result>) {
                          promise.set_value();
                        } else {
                          promise.set_value(std::move(*value));
                        }
                      },
                      alone, lease};
    auto future = promise.get_future();
    {
      const std::lock_guard guard(mutex);
      if (stopping) throw store_error("job store closed");
      tasks.push_back(&task);
    }
    wake.notify_one();
    return future.get();
  }

  enqueue_result enqueue(const job_request& job, const enqueue_options& opts) {
    pending_enqueue pending{&job, &opts, {}};
    auto future = pending.done.get_future();
    {
      const std::lock_guard guard(mutex);
      if (stopping) return answer(enqueue_result::kind::unavailable, {}, "store closed");
      if (enqueues.empty()) first_enqueue = std::chrono::steady_clock::now();
      enqueues.push_back(&pending);
    }
    wake.notify_one();
    return future.get();
  }

  // The writer thread: runs tasks in arrival order; a batch of enqueues is committed
  // `group_commit` after its first enqueue arrived (or as soon as max_batch are waiting).
  void run() {
    auto last_write = std::chrono::steady_clock::now();
    std::unique_lock guard(mutex);
    for (;;) {
      if (tasks.empty() && enqueues.empty()) {
        if (stopping) return;
        const bool woken = wake.wait_for(guard, options.checkpoint_interval, [this] {
          return stopping || !tasks.empty() || !enqueues.empty();
        });
        if (!woken &&
            std::chrono::steady_clock::now() - last_write >= options.checkpoint_interval) {
          guard.unlock();
          idle_checkpoint();
          guard.lock();
          last_write = std::chrono::steady_clock::now();
        }
        continue;
      }
      // One transaction commits every call waiting and, with them, the enqueues waiting, due
      // or not (the commit is paid anyway). Neither side waits behind the other for more than
      // one commit: under a stream of enqueues, claims and completions still get through at
      // once (they used to wait for a gap between batches, and the consumers starved), and a
      // stream of claims and heartbeats cannot hold enqueues (and their 202s) back.
      const auto deadline = first_enqueue + options.group_commit;
      const bool batch_due =
          !enqueues.empty() && (stopping || enqueues.size() >= options.max_batch ||
                                std::chrono::steady_clock::now() >= deadline);
      if (tasks.empty() && !batch_due) {
        wake.wait_until(guard, deadline, [this] {
          return stopping || !tasks.empty() || enqueues.size() >= options.max_batch;
        });
        continue;  // decide again: the window is over, or a task arrived meanwhile
      }
      if (!tasks.empty() && tasks.front()->alone) {
        pending_task* task = tasks.front();
        tasks.pop_front();
        guard.unlock();
        std::exception_ptr error;
        try {
          task->work();
        } catch (...) {
          error = std::current_exception();
        }
        task->done(error);
        guard.lock();
        last_write = std::chrono::steady_clock::now();
        continue;
      }
      std::vector<pending_task*> calls;
      bool leases_only = true;
      while (!tasks.empty() && !tasks.front()->alone && calls.size() < options.max_batch) {
        calls.push_back(tasks.front());
        leases_only = leases_only && calls.back()->lease;
        tasks.pop_front();
      }
      // With synchronous FULL, the consumers' lease writes commit in a transaction of their own
      // that does not wait for its fsync (NORMAL: durable across a process crash; the next FULL
      // commit, at the latest the next enqueue's, syncs it too). A freed slot's next job waits
      // for this commit, so under a stream of enqueues the group's rate was bounded by the
      // enqueue batches' commits (a consumer waited for a shared transaction and its fsync,
      // 2-3 ms per job at 13,000 enqueues/s). What a power loss can forget is the last
      // milliseconds of lease writes: those jobs are then run again (at least once, as after a
      // crash), never lost; a 202 is still sent only after its own fsync.
      const bool relaxed =
          !calls.empty() && leases_only && options.synchronous == sqlite_options::sync_mode::full;
      std::vector<pending_enqueue*> batch;
      while (!relaxed && !enqueues.empty() && batch.size() < options.max_batch) {
        batch.push_back(enqueues.front());
        enqueues.pop_front();
      }
      // Those left over (beyond max_batch) have waited a window already, and those a relaxed
      // commit left behind share the next one instead of their window: due at once.
      if (!enqueues.empty()) first_enqueue = {};
      guard.unlock();
      commit(calls, batch, relaxed);
      guard.lock();
      last_write = std::chrono::steady_clock::now();
    }
  }

  void idle_checkpoint() noexcept {
    // Best effort: a failure here leaves the WAL longer, which the next one shortens.
    sqlite3_wal_checkpoint_v2(writer.get(), nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
  }

  void commit(const std::vector<pending_task*>& calls, const std::vector<pending_enqueue*>& batch,
              bool relaxed = false) {
    std::vector<enqueue_result> results;
    results.reserve(batch.size());
    std::vector<std::exception_ptr> errors(calls.size());
    bool stored = false;
    try {
      const relaxed_sync no_fsync(writer, relaxed);
      transaction tx(writer);
      // Calls first: a completion frees its route's depth for the enqueues behind it.
      for (std::size_t i = 0; i < calls.size(); ++i) {
        writer.exec("SAVEPOINT call");
        try {
          calls[i]->work();
        } catch (...) {
          errors[i] = std::current_exception();
          writer.exec("ROLLBACK TO call");
        }
        writer.exec("RELEASE call");
      }
      const std::int64_t now = now_ms();
      // Depth per route as this transaction sees it, counted once per batch.
      std::unordered_map<std::string, std::size_t> depths;
      for (const pending_enqueue* p : batch) {
        results.push_back(enqueue_one(*p->job, *p->options, now, depths));
        stored = stored || results.back().result == enqueue_result::kind::created ||
                 results.back().result == enqueue_result::kind::duplicate;
      }
      tx.commit();
    } catch (const std::exception& e) {
      // Nothing is stored: the transaction rolled back (or never began).
      const auto failed = std::make_exception_ptr(store_error(e.what()));
      for (std::size_t i = 0; i < calls.size(); ++i) calls[i]->done(errors[i] ? errors[i] : failed);
      for (std::size_t i = 0; i < batch.size(); ++i) {
        batch[i]->done.set_value(answer(enqueue_result::kind::unavailable, {}, e.what()));
      }
      return;
    }
    if (stored) enqueue_commits.fetch_add(1, std::memory_order_relaxed);
    if (relaxed) relaxed_commits.fetch_add(1, std::memory_order_relaxed);
    for (std::size_t i = 0; i < calls.size(); ++i) calls[i]->done(errors[i]);
    for (std::size_t i = 0; i < batch.size(); ++i) batch[i]->done.set_value(results[i]);
  }

  enqueue_result enqueue_one(const job_request& job, const enqueue_options& opts, std::int64_t now,
                             std::unordered_map<std::string, std::size_t>& depths) {
    if (job.idempotency_key) {
      query found = writer.prepare(sql_find_key);
      found.bind(1, job.route).bind(2, job.tenant).bind(3, *job.idempotency_key);
      if (found.step()) {
        if (found.i64(2) > now) {
          if (found.text(0) == job.payload_hash) {
            return answer(enqueue_result::kind::duplicate, found.text(1));
          }
          return answer(enqueue_result::kind::conflict);
        }
        // Past its retention (prune has not run yet): forgotten, the key is free again.
        writer.prepare(sql_drop_key)
            .bind(1, job.route)
            .bind(2, job.tenant)
            .bind(3, *job.idempotency_key)
            .run();
      }
    }
    auto depth = depths.find(job.route);
    if (depth == depths.end()) {
      query count = writer.prepare(sql_depth);
      count.bind(1, job.route);
      count.step();
      depth = depths.emplace(job.route, static_cast<std::size_t>(count.i64(0))).first;
    }
    if (depth->second >= opts.max_depth) return answer(enqueue_result::kind::full);

    job_id id = new_job_id();
    writer.prepare(sql_insert_job)
        .bind(1, id)
        .bind(2, job.route)
        .bind(3, job.group)
        .bind(4, job.tenant)
        .bind(5, job.method)
        .bind(6, job.target)
        .bind_blob(7, encode_headers(job.headers))
        .bind_blob(8, job.body)
        .bind(9, std::int64_t{std::clamp(job.priority, 0, 15)})
        .bind(10, now)
        .run();
    if (job.idempotency_key) {
      const auto retention =
          std::chrono::duration_cast<std::chrono::milliseconds>(opts.key_retention).count();
      writer.prepare(sql_insert_key)
          .bind(1, job.route)
          .bind(2, job.tenant)
          .bind(3, *job.idempotency_key)
          .bind(4, job.payload_hash)
          .bind(5, id)
          .bind(6, now + retention)
          .run();
    }
    ++depth->second;
    return answer(enqueue_result::kind::created, std::move(id));
  }

  template <class Work>
  auto lease_write(Work work) -> decltype(work()) {
    return write(std::move(work), false, true);
  }

  std::vector<claimed_job> claim(const std::string& group, std::size_t limit,
                                 std::size_t group_limit, std::chrono::milliseconds lease) {
    return lease_write([&] { return claim_now(group, limit, group_limit, lease); });
  }

  // claim_now, complete_now, fail_now: the bodies of those writes, on the writer thread inside
  // its transaction.
  std::vector<claimed_job> claim_now(const std::string& group, std::size_t limit,
                                     std::size_t group_limit, std::chrono::milliseconds lease) {
    std::vector<claimed_job> out;
    query running = writer.prepare(sql_running);
    running.bind(1, group);
    running.step();
    const auto held = static_cast<std::size_t>(running.i64(0));
    const std::size_t room = group_limit > held ? std::min(limit, group_limit - held) : 0;
    if (room == 0) return out;
    const std::int64_t now = now_ms();
    std::vector<std::int64_t> rows;
    {
      query runnable = writer.prepare(sql_runnable);
      runnable.bind(1, group).bind(2, now).bind(3, static_cast<std::int64_t>(room));
      while (runnable.step()) rows.push_back(runnable.i64(0));
    }
    const std::int64_t until = now + lease.count();
    for (const std::int64_t row : rows) {
      query leased = writer.prepare(sql_lease);
      leased.bind(1, row).bind(2, until);
      if (!leased.step()) continue;
      claimed_job& job = out.emplace_back();
      job.id = leased.text(0);
      job.fence = static_cast<std::uint64_t>(leased.i64(1));
      job.attempt = static_cast<int>(leased.i64(2));
      job.lease_until = from_ms(until);
      job.request.route = leased.text(3);
      job.request.group = leased.text(4);
      job.request.tenant = leased.text(5);
      job.request.method = leased.text(6);
      job.request.target = leased.text(7);
      job.request.headers = decode_headers(leased.text(8));
      job.request.body = leased.text(9);
      job.request.priority = static_cast<int>(leased.i64(10));
    }
    return out;
  }

  bool heartbeat(const job_id& id, std::uint64_t fence, std::chrono::milliseconds lease) {
    return lease_write([&] {
      return writer.prepare(sql_heartbeat)
                 .bind(1, id)
                 .bind(2, static_cast<std::int64_t>(fence))
                 .bind(3, now_ms() + lease.count())
                 .run() == 1;
    });
  }

  bool complete(const job_id& id, std::uint64_t fence, const job_result& result) {
    return lease_write([&] { return complete_now(id, fence, result); });
  }

  bool complete_now(const job_id& id, std::uint64_t fence, const job_result& result) {
    return writer.prepare(sql_complete)
               .bind(1, id)
               .bind(2, static_cast<std::int64_t>(fence))
               .bind(3, now_ms())
               .bind(4, std::int64_t{result.status})
               .bind_blob(5, encode_headers(result.headers))
               .bind_blob(6, result.body)
               .run() == 1;
  }

  // A failed (or lost) run whose attempt number is `attempts`: another try, or dead.
  void retry_or_bury(const job_id& id, int attempts, const std::string& error,
                     const retry_policy& retry, std::int64_t now) {
    if (attempts >= retry.max_attempts) {
      writer.prepare(sql_bury).bind(1, id).bind(2, now).bind(3, error).run();
      return;
    }
    const auto delay = retry_delay(retry, attempts, options.random());
    writer.prepare(sql_retry).bind(1, id).bind(2, now + delay.count()).bind(3, error).run();
  }

  bool fail(const job_id& id, std::uint64_t fence, const std::string& error,
            const retry_policy& retry) {
    return lease_write([&] { return fail_now(id, fence, error, retry); });
  }

  bool fail_now(const job_id& id, std::uint64_t fence, const std::string& error,
                const retry_policy& retry) {
    int attempts = 0;
    {
      query leased = writer.prepare(sql_leased_attempts);
      leased.bind(1, id).bind(2, static_cast<std::int64_t>(fence));
      if (!leased.step()) return false;
      attempts = static_cast<int>(leased.i64(0));
    }
    retry_or_bury(id, attempts, error, retry, now_ms());
    return true;
  }

  // One write, so one savepoint: a failure anywhere undoes every settlement with the claim.
  settle_result settle_and_claim(std::span<const settlement> ended, const claim_request& next) {
    return lease_write([&] {
      settle_result out;
      out.accepted.reserve(ended.size());
      for (const settlement& s : ended) {
        out.accepted.push_back(s.what == settlement::kind::complete
                                   ? complete_now(s.id, s.fence, s.result)
                                   : fail_now(s.id, s.fence, s.error, s.retry));
      }
      if (next.limit != 0) {
        out.claimed = claim_now(next.group, next.limit, next.group_limit, next.lease);
      }
      return out;
    });
  }

  std::size_t requeue_expired(const retry_policy& retry) {
    return lease_write([&] {
      const std::int64_t now = now_ms();
      std::vector<std::pair<std::string, int>> expired;
      {
        query q = writer.prepare(sql_expired);
        q.bind(1, now);
        while (q.step()) expired.emplace_back(q.text(0), static_cast<int>(q.i64(1)));
      }
      for (const auto& [id, attempts] : expired) {
        // The worker is gone (or paused past its lease): its run counts as a failed attempt,
        // but the retry is not delayed — the crash was most likely not the job's fault.
        const std::string error = "lease expired during attempt " + std::to_string(attempts);
        if (attempts >= retry.max_attempts) {
          writer.prepare(sql_bury).bind(1, id).bind(2, now).bind(3, error).run();
        } else {
          writer.prepare(sql_retry).bind(1, id).bind(2, now).bind(3, error).run();
        }
      }
      return expired.size();
    });
  }

  std::size_t prune(std::chrono::seconds retention) {
    std::size_t total = 0;
    const std::int64_t before =
        now_ms() - std::chrono::duration_cast<std::chrono::milliseconds>(retention).count();
    for (const char* sql : {sql_prune_jobs, sql_prune_keys}) {
      for (;;) {
        const int deleted = write([&] {
          const std::int64_t bound = sql == sql_prune_keys ? now_ms() : before;
          return writer.prepare(sql).bind(1, bound).bind(2, std::int64_t{prune_chunk}).run();
        });
        total += static_cast<std::size_t>(deleted);
        if (deleted < prune_chunk) break;
      }
    }
    return total;
  }

  bool requeue_dead(const job_id& id) {
    return write(
        [&] { return writer.prepare(sql_requeue_dead).bind(1, id).bind(2, now_ms()).run() == 1; });
  }

  bool purge(const job_id& id) {
    return write([&] { return writer.prepare(sql_purge).bind(1, id).run() == 1; });
  }

  std::optional<job_status> status(const job_id& id) {
    const std::lock_guard guard(reader_mutex);
    query q = reader.prepare(sql_status);
    q.bind(1, id);
    if (!q.step()) return std::nullopt;
    job_status out;
    out.id = id;
    const std::int64_t state = q.i64(0);
    out.state = state == state_queued      ? job_state::queued
                : state == state_running   ? job_state::running
                : state == state_succeeded ? job_state::succeeded
                                           : job_state::dead;
    assert(state >= state_queued && state <= state_dead);
    out.attempts = static_cast<int>(q.i64(1));
    if (state == state_queued) out.run_at = from_ms(q.i64(2));
    out.last_error = q.text(3);
    out.created = from_ms(q.i64(4));
    if (!q.null(5)) out.finished = from_ms(q.i64(5));
    if (state == state_succeeded) {
      out.result = job_result{.status = static_cast<int>(q.i64(6)),
                              .headers = decode_headers(q.text(7)),
                              .body = q.text(8)};
    }
    return out;
  }

  std::size_t depth(const std::string& route) {
    const std::lock_guard guard(reader_mutex);
    query q = reader.prepare(sql_depth);
    q.bind(1, route);
    q.step();
    return static_cast<std::size_t>(q.i64(0));
  }

  void checkpoint() {
    write(
        [this] {
          const int rc = sqlite3_wal_checkpoint_v2(writer.get(), nullptr,
                                                   SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
          if (rc != SQLITE_OK) detail::throw_sqlite(writer.get(), rc, "wal_checkpoint(TRUNCATE)");
        },
        /*alone=*/true);
  }
};

sqlite_store::sqlite_store(sqlite_options options)
    : impl_(std::make_unique<impl>(std::move(options))) {}

sqlite_store::~sqlite_store() = default;

enqueue_result sqlite_store::enqueue(const job_request& job, const enqueue_options& options) {
  return impl_->enqueue(job, options);
}

std::vector<claimed_job> sqlite_store::claim(const std::string& group, std::size_t limit,
                                             std::size_t group_limit,
                                             std::chrono::milliseconds lease) {
  return impl_->claim(group, limit, group_limit, lease);
}

bool sqlite_store::heartbeat(const job_id& id, std::uint64_t fence,
                             std::chrono::milliseconds lease) {
  return impl_->heartbeat(id, fence, lease);
}

bool sqlite_store::complete(const job_id& id, std::uint64_t fence, const job_result& result) {
  return impl_->complete(id, fence, result);
}

bool sqlite_store::fail(const job_id& id, std::uint64_t fence, const std::string& error,
                        const retry_policy& retry) {
  return impl_->fail(id, fence, error, retry);
}

settle_result sqlite_store::settle_and_claim(std::span<const settlement> ended,
                                             const claim_request& next) {
  return impl_->settle_and_claim(ended, next);
}

std::optional<job_status> sqlite_store::status(const job_id& id) {
  return impl_->status(id);
}

std::size_t sqlite_store::requeue_expired(const retry_policy& retry) {
  return impl_->requeue_expired(retry);
}

std::size_t sqlite_store::prune(std::chrono::seconds jobs) {
  return impl_->prune(jobs);
}

bool sqlite_store::requeue_dead(const job_id& id) {
  return impl_->requeue_dead(id);
}

bool sqlite_store::purge(const job_id& id) {
  return impl_->purge(id);
}

std::size_t sqlite_store::depth(const std::string& route) {
  return impl_->depth(route);
}

void sqlite_store::checkpoint() {
  impl_->checkpoint();
}

std::uint64_t sqlite_store::lease_commits_without_fsync() const noexcept {
  return impl_->relaxed_commits.load(std::memory_order_relaxed);
}

std::uint64_t sqlite_store::enqueue_commits() const noexcept {
  return impl_->enqueue_commits.load(std::memory_order_relaxed);
}

}  // namespace qos::jobs

// The job store on PostgreSQL through libpq. Every value is bound as a parameter (PQexecParams);
// SQL text is constant. Each call is one short transaction on a pooled connection.
#include "qos/jobs/pg_store.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <thread>
#include <vector>

#include <libpq-events.h>
#include <libpq-fe.h>

#include "qos/jobs/backoff.hpp"
#include "qos/jobs/detail/header_blob.hpp"
#include "qos/jobs/job_id.hpp"

namespace qos::jobs {
namespace {

// Advisory locks of this store live in their own class (the first key of the two-int form),
// so they cannot collide with an application's own advisory locks on one-bigint keys.
constexpr int lock_class = 0x716f7331;  // "qos1"
constexpr int lock_migrate = 0;

// The schema, version 1.
//
// qos_jobs is a hot queue: every row is inserted, updated two or three times (claim,
// heartbeats, completion) and deleted at retention. Hence:
// - fillfactor 70 leaves room on each page for the new row versions of those updates. A
//   heartbeat touches only lease_until, which no index and no index predicate mentions, so it
//   is a HOT update (no index entries, pruned on the page itself); state changes move a row
//   between partial indexes and cannot be HOT, but still land on the same page.
// - autovacuum by absolute counts, not by the default 20 % of the table: the table also holds
//   the terminal jobs kept for their retention, so 20 % would let tens of thousands of dead
//   versions pile up in the small queued/running part that every claim scans. Insert-driven
//   vacuum keeps the visibility map current so the depth count stays an index-only scan. The
//   cost delay is lowered so a vacuum of this small, hot table ends quickly instead of being
//   throttled like one of a large cold table.
// Client-supplied strings (tenant, key, method, target, headers, body, errors) are bytea: HTTP
// does not promise UTF-8, and a text column would refuse such a request as a server error.
constexpr const char* migration_1 = R"sql(
CREATE TABLE qos_jobs (
  id             text PRIMARY KEY,
  route          text NOT NULL,
  grp            text NOT NULL,
  tenant         bytea NOT NULL,
  method         bytea NOT NULL,
  target         bytea NOT NULL,
  headers        bytea NOT NULL,
  body           bytea NOT NULL,
  priority       smallint NOT NULL CHECK (priority BETWEEN 0 AND 15),
  idem_key       bytea,
  payload_hash   bytea NOT NULL,
  state          text NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'succeeded', 'dead')),
  attempts       integer NOT NULL DEFAULT 0,
  fence          bigint NOT NULL DEFAULT 0,
  run_at         timestamptz NOT NULL DEFAULT now(),
  lease_until    timestamptz,
  created        timestamptz NOT NULL DEFAULT now(),
  finished       timestamptz,
  last_error     bytea NOT NULL DEFAULT '',
  result_status  integer,
  result_headers bytea,
  result_body    bytea
) WITH (fillfactor = 70,
        autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 500,
        autovacuum_vacuum_insert_scale_factor = 0.01,
        autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 1);
-- claim(): the runnable jobs of a group in claim order.
CREATE INDEX qos_jobs_claim ON qos_jobs (grp, priority DESC, run_at, id) WHERE state = 'queued';
-- claim() counts a group's leases; requeue_expired() scans every lease (few: bounded by N).
CREATE INDEX qos_jobs_running ON qos_jobs (grp) WHERE state = 'running';
-- depth() and the cap in enqueue().
CREATE INDEX qos_jobs_depth ON qos_jobs (route) WHERE state IN ('queued', 'running');
-- prune().
CREATE INDEX qos_jobs_finished ON qos_jobs (finished) WHERE state IN ('succeeded', 'dead');

CREATE TABLE qos_jobs_keys (
  route        text NOT NULL,
  tenant       bytea NOT NULL,
  key          bytea NOT NULL,
  payload_hash bytea NOT NULL,
  job_id       text NOT NULL,
  expires_at   timestamptz NOT NULL,
  CONSTRAINT qos_jobs_keys_scope UNIQUE (route, tenant, key)
) WITH (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_insert_scale_factor = 0.05);
CREATE INDEX qos_jobs_keys_expiry ON qos_jobs_keys (expires_at);
CREATE INDEX qos_jobs_keys_job ON qos_jobs_keys (job_id);
)sql";

// The columns a claim returns, in this order (see read_claimed).
constexpr const char* claimed_columns =
    "j.id, j.fence, j.attempts, (extract(epoch FROM j.lease_until) * 1000000)::bigint, "
    "j.route, j.grp, j.tenant, j.method, j.target, j.headers, j.body, j.priority, j.idem_key, "
    "j.payload_hash, (extract(epoch FROM j.run_at) * 1000000)::bigint";

// One generator for the process's retry jitter, seeded from getrandom.
double unit_random() {
  static const unit_random_fn draw = default_unit_random();
  return draw();
}

// Notification channels are identifiers of at most 63 bytes: a group's channel is a hash of its
// name (a collision only wakes a consumer for nothing).
std::string channel_of(const std::string& group) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : group) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "qos_jobs_%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// --- libpq plumbing ---

struct result_deleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using result = std::unique_ptr<PGresult, result_deleter>;

// A failed statement. `broken`: the connection is gone (the pool drops it).
struct db_error : std::runtime_error {
  db_error(const std::string& what, bool broken_) : std::runtime_error(what), broken(broken_) {}
  bool broken;
};

// Bound parameters: text values, bytea values (binary format, any bytes) or NULL.
class params {
 public:
  params& text(std::string v) { return add(std::move(v), 0, false); }
  params& bytes(std::string v) { return add(std::move(v), 1, false); }
  params& num(std::int64_t v) { return add(std::to_string(v), 0, false); }
  params& null() { return add({}, 0, true); }

  result exec(PGconn* c, const char* sql) const {
    std::vector<const char*> values(values_.size());
    std::vector<int> lengths(values_.size());
    for (std::size_t i = 0; i < values_.size(); ++i) {
      values[i] = null_[i] ? nullptr : values_[i].data();
      lengths[i] = static_cast<int>(values_[i].size());
    }
    result r{PQexecParams(c, sql, static_cast<int>(values_.size()), nullptr, values.data(),
                          lengths.data(), formats_.data(), 0)};
    check(c, r.get());
    return r;
  }

  // Queues the statement in pipeline mode (results read with read_segments()).
  void send(PGconn* c, const char* sql) const {
    std::vector<const char*> values(values_.size());
    std::vector<int> lengths(values_.size());
    for (std::size_t i = 0; i < values_.size(); ++i) {
      values[i] = null_[i] ? nullptr : values_[i].data();
      lengths[i] = static_cast<int>(values_[i].size());
    }
    if (PQsendQueryParams(c, sql, static_cast<int>(values_.size()), nullptr, values.data(),
                          lengths.data(), formats_.data(), 0) != 1) {
      throw db_error(PQerrorMessage(c), PQstatus(c) != CONNECTION_OK);
    }
  }

  // Queues an execution of the statement prepared as `name` in pipeline mode.
  void send_prepared(PGconn* c, const char* name) const {
    std::vector<const char*> values(values_.size());
    std::vector<int> lengths(values_.size());
    for (std::size_t i = 0; i < values_.size(); ++i) {
      values[i] = null_[i] ? nullptr : values_[i].data();
      lengths[i] = static_cast<int>(values_[i].size());
    }
    if (PQsendQueryPrepared(c, name, static_cast<int>(values_.size()), values.data(),
                            lengths.data(), formats_.data(), 0) != 1) {
      throw db_error(PQerrorMessage(c), PQstatus(c) != CONNECTION_OK);
    }
  }

  static void check(PGconn* c, PGresult* r) {
    const auto st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return;
    std::string msg = r ? PQresultErrorMessage(r) : "";
    if (msg.empty()) msg = PQerrorMessage(c);
    while (!msg.empty() && msg.back() == '\n') msg.pop_back();
    throw db_error(msg, PQstatus(c) != CONNECTION_OK);
  }

 private:
  params& add(std::string v, int format, bool is_null) {
    values_.push_back(std::move(v));
    formats_.push_back(format);
    null_.push_back(is_null);
    return *this;
  }
  std::vector<std::string> values_;
  std::vector<int> formats_;
  std::vector<bool> null_;
};

// A new job's first nine columns ($1 id .. $9 priority), as both enqueue statements bind them.
params job_params(const std::string& id, const job_request& job) {
  params p;
  p.text(id)
      .text(job.route)
      .text(job.group)
      .bytes(job.tenant)
      .bytes(job.method)
      .bytes(job.target)
      .bytes(detail::encode_headers(job.headers))
      .bytes(job.body)
      .num(std::clamp(job.priority, 0, 15));
  return p;
}

result exec(PGconn* c, const char* sql) {
  return params{}.exec(c, sql);
}

// The results of a pipeline up to its `syncs`-th sync point, one list per sync. A statement
// that failed has its error result in its list, and the statements after it up to that sync
// are PGRES_PIPELINE_ABORTED results. `statements`: how many were sent, which bounds the
// NULLs that separate their results. Throws db_error when the connection broke.
std::vector<std::vector<result>> read_segments(PGconn* c, int syncs, std::size_t statements) {
  std::vector<std::vector<result>> out(1);
  int seen = 0;
  std::size_t ends = 0;
  while (seen < syncs) {
    PGresult* r = PQgetResult(c);
    if (r == nullptr) {
      if (PQstatus(c) != CONNECTION_OK || ++ends > 2 * (statements + 4)) {
        throw db_error("pipeline: connection lost", true);
      }
      continue;
    }
    if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      if (++seen < syncs) out.emplace_back();
      continue;
    }
    out.back().emplace_back(r);
  }
  return out;
}

std::string col(PGresult* r, int row, int column) {
  return std::string(PQgetvalue(r, row, column),
                     static_cast<std::size_t>(PQgetlength(r, row, column)));
}
bool is_null(PGresult* r, int row, int column) {
  return PQgetisnull(r, row, column) != 0;
}
std::int64_t col_int(PGresult* r, int row, int column) {
  return std::stoll(PQgetvalue(r, row, column));
}
// A bytea column in text format (hex: \x...).
std::string col_bytes(PGresult* r, int row, int column) {
  std::size_t n = 0;
  unsigned char* raw =
      PQunescapeBytea(reinterpret_cast<const unsigned char*>(PQgetvalue(r, row, column)), &n);
  if (!raw) throw db_error("out of memory decoding bytea", false);
  std::string out(reinterpret_cast<char*>(raw), n);
  PQfreemem(raw);
  return out;
}
wall_time col_time(PGresult* r, int row, int column) {
  return wall_time(std::chrono::duration_cast<wall_clock::duration>(
      std::chrono::microseconds(col_int(r, row, column))));
}
std::size_t affected(PGresult* r) {
  const char* n = PQcmdTuples(r);
  return (n && *n) ? static_cast<std::size_t>(std::stoull(n)) : 0;
}

PGconn* connect(const std::string& conninfo, const char* app_name, std::string& error) {
  // fallback_application_name: the conninfo's own application_name, if any, wins.
  const char* keys[] = {"fallback_application_name", "client_encoding", "dbname", nullptr};
  const char* values[] = {app_name, "UTF8", conninfo.c_str(), nullptr};
  PGconn* c = PQconnectdbParams(keys, values, 1);
  if (!c) {
    error = "out of memory";
    return nullptr;
  }
  if (PQstatus(c) != CONNECTION_OK) {
    error = PQerrorMessage(c);
    while (!error.empty() && error.back() == '\n') error.pop_back();
    PQfinish(c);
    return nullptr;
  }
  // Server notices ("already exists, skipping") would go to stderr: the store has no use for
  // them, and errors come back as results.
  PQsetNoticeProcessor(
      c, [](void*, const char*) {}, nullptr);
  return c;
}

// --- Run slots: session-level advisory locks on a connection of their own ---

// A group's slot i is the two-int advisory lock (hashtext('qos.slot:' || group), i), held at
// session level on the holder's own connection: it lives exactly as long as that session, so
// a process that dies, or whose connection breaks, frees its slots at once. The session's
// idle_session_timeout is the lease: a holder that makes no call for that long (a stopped
// process) is disconnected by the server, and its slots freed. Two-int keys whose first half
// is a hash, unlike the store's other locks (lock_class): an application's own two-int
// advisory locks could collide with them, one-bigint locks cannot.
constexpr const char* sql_slots_take =
    "SELECT i FROM generate_series(0, $2::int - 1) AS i"
    " WHERE CASE WHEN i = ANY($3::int[]) THEN false"  // a session lock is re-entrant
    " ELSE pg_try_advisory_lock(hashtext('qos.slot:' || $1), i) END"
    " LIMIT $4::int";  // the filter runs row by row: no lock is taken past the limit
constexpr const char* sql_slots_give =
    "SELECT count(*) FILTER (WHERE pg_advisory_unlock(hashtext('qos.slot:' || $1), i))"
    " FROM unnest($2::int[]) AS i";
// A holder that got fewer slots than it asked for says so with a shared lock on the group's
// key and -1 (no slot's number): share() counts it with the holders, so a holder above its
// part gives slots back for it. Shared locks never wait for one another.
constexpr const char* sql_slots_enlist =
    "SELECT pg_try_advisory_lock_shared(hashtext('qos.slot:' || $1), -1)";
constexpr const char* sql_slots_withdraw =
    "SELECT pg_advisory_unlock_shared(hashtext('qos.slot:' || $1), -1)";
// The sessions that hold one of the group's slots or wait for one, and whether this is one of
// them. A two-int advisory lock shows its first key as classid (the same 32 bits as an oid)
// and objsubid 2.
constexpr const char* sql_slots_holders =
    "SELECT count(DISTINCT pid), coalesce(bool_or(pid = pg_backend_pid()), false) FROM pg_locks"
    " WHERE locktype = 'advisory' AND granted AND objsubid = 2"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid = hashtext('qos.slot:' || $1)::oid";

std::string int_array(const std::vector<int>& v) {
  std::string out = "{";
  for (std::size_t k = 0; k < v.size(); ++k) {
    if (k) out += ',';
    out += std::to_string(v[k]);
  }
  return out + '}';
}

class pg_run_slots final : public run_slots {
 public:
  pg_run_slots(std::string conninfo, std::string group, std::chrono::milliseconds lease)
      : conninfo_(std::move(conninfo)), group_(std::move(group)), lease_(lease) {}
  pg_run_slots(const pg_run_slots&) = delete;
  pg_run_slots& operator=(const pg_run_slots&) = delete;
  ~pg_run_slots() override {
    // The session's end frees every slot too, but only once its backend has noticed: give
    // them back first, so that another holder finds them free as soon as this returns.
    if (c_ != nullptr && (!held_.empty() || enlisted_)) {
      try {
        exec(c_, "SELECT pg_advisory_unlock_all()");
      } catch (...) {
      }
    }
    drop();
  }

  std::size_t acquire(std::size_t n, std::size_t want) override {
    if (want == 0 || n == 0) {
      if (enlisted_) withdraw();
      return 0;
    }
    for (int attempt = 0;; ++attempt) {
      try {
        open();
        result r = params{}
                       .text(group_)
                       .num(static_cast<std::int64_t>(std::min<std::size_t>(n, INT_MAX)))
                       .text(int_array(held_))
                       .num(static_cast<std::int64_t>(std::min<std::size_t>(want, INT_MAX)))
                       .exec(c_, sql_slots_take);
        const int rows = PQntuples(r.get());
        for (int row = 0; row < rows; ++row)
          held_.push_back(static_cast<int>(col_int(r.get(), row, 0)));
        const auto got = static_cast<std::size_t>(rows);
        if (got < want && !enlisted_) {
          params{}.text(group_).exec(c_, sql_slots_enlist);
          enlisted_ = true;
        } else if (got == want && enlisted_) {
          params{}.text(group_).exec(c_, sql_slots_withdraw);
          enlisted_ = false;
        }
        return got;
      } catch (const db_error& e) {
        // Holding nothing, a session the server closed meanwhile (idle for its lease while
        // this process had no use for slots) is no loss: once more, on a fresh one.
        if (e.broken && attempt == 0 && held_.empty()) {
          drop();
          continue;
        }
        lost(e);
      } catch (const std::exception& e) {
        lost(e);
      }
    }
  }

  void release(std::size_t count) override {
    count = std::min(count, held_.size());
    if (count == 0) return;
    std::sort(held_.begin(), held_.end());
    const std::vector<int> give(held_.end() - static_cast<std::ptrdiff_t>(count), held_.end());
    try {
      params{}.text(group_).text(int_array(give)).exec(c_, sql_slots_give);
      held_.resize(held_.size() - count);
      if (enlisted_) withdraw();  // giving slots back, it wants no more
    } catch (const std::exception& e) {
      lost(e);
    }
  }

  std::size_t share(std::size_t n) override {
    if (c_ == nullptr) return n;  // no session: it holds nothing, and knows of no other
    try {
      result r = params{}.text(group_).exec(c_, sql_slots_holders);
      std::size_t holders = static_cast<std::size_t>(col_int(r.get(), 0, 0));
      if (col(r.get(), 0, 1) != "t") ++holders;  // itself, about to take its part
      return (n + holders - 1) / holders;
    } catch (const std::exception& e) {
      if (held_.empty()) {
        drop();  // the server closed an idle session: nothing held, nothing lost
        return n;
      }
      lost(e);
    }
  }

  std::size_t held() const noexcept override { return held_.size(); }

 private:
  void open() {
    if (c_ != nullptr && PQstatus(c_) == CONNECTION_OK) return;
    drop();
    std::string error;
    c_ = connect(conninfo_, "qos-jobs-slots", error);
    if (c_ == nullptr) throw db_error(error, true);
    // The server's own watch over a holder that stopped calling: its slots go with it.
    const auto timeout = std::max<std::chrono::milliseconds>(lease_, std::chrono::seconds(1));
    const std::string set = "SET idle_session_timeout = " + std::to_string(timeout.count());
    exec(c_, set.c_str());
  }
  void withdraw() {
    try {
      params{}.text(group_).exec(c_, sql_slots_withdraw);
      enlisted_ = false;
    } catch (const std::exception& e) {
      lost(e);
    }
  }
  void drop() noexcept {
    if (c_ != nullptr) PQfinish(c_);
    c_ = nullptr;
    held_.clear();
    enlisted_ = false;
  }
  [[noreturn]] void lost(const std::exception& e) {
    // Whatever failed, ending the session is the one way to know what is held: nothing.
    drop();
    throw store_error(std::string("job store: run slots: ") + e.what());
  }

  const std::string conninfo_;
  const std::string group_;
  const std::chrono::milliseconds lease_;
  PGconn* c_ = nullptr;
  std::vector<int> held_;
  bool enlisted_ = false;  // holds the shared lock of a holder that wants more slots
};

// Connections for the calls: at most `max` open; callers beyond wait for one in arrival order.
// First come, first served on purpose: with more callers than connections (32 enqueuing
// threads on a pool of 8), a plain condition variable hands a freed connection to whichever
// thread wakes first, and an unlucky caller waits through many others' turns — a long
// latency tail while the median looks fine. Guarded by mutex_. A connection returns to the
// pool only when it is healthy, outside a transaction and out of pipeline mode.
class pool {
 public:
  pool(std::string conninfo, std::size_t max) : conninfo_(std::move(conninfo)), max_(max) {}
  ~pool() {
    for (PGconn* c : idle_) PQfinish(c);
  }

  class lease {
   public:
    lease(pool* p, PGconn* c) : pool_(p), conn_(c) {}
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    ~lease() {
      if (conn_) pool_->give_back(conn_);
    }
    PGconn* get() const { return conn_; }

   private:
    pool* pool_;
    PGconn* conn_;
  };

  // Throws db_error when no connection can be opened.
  lease take() {
    std::unique_lock lock(mutex_);
    if (!waiters_.empty() || available() <= granted_) {
      waiter w;
      waiters_.push_back(&w);
      w.turn.wait(lock, [&] { return w.granted; });
      --granted_;  // the grant is this caller's now: idle_ or a slot to open
    }
    while (!idle_.empty()) {
      PGconn* c = idle_.back();
      idle_.pop_back();
      // A connection the server closed while it sat idle (restart, pg_terminate_backend) has
      // its EOF waiting in the socket: find it now rather than fail the caller's first
      // statement.
      if (PQconsumeInput(c) != 0 && PQstatus(c) == CONNECTION_OK) return lease(this, c);
      PQfinish(c);
      --open_;
    }
    ++open_;
    lock.unlock();
    std::string error;
    PGconn* c = connect(conninfo_, "qos-jobs", error);
    if (!c) {
      lock.lock();
      --open_;
      grant_next();
      throw db_error(error, true);
    }
    return lease(this, c);
  }

 private:
  struct waiter {
    std::condition_variable turn;
    bool granted = false;
  };

  // Idle connections plus room to open more.
  std::size_t available() const { return idle_.size() + (max_ - open_); }

  // Hands what is available to the longest waiters, each its own.
  void grant_next() {
    while (!waiters_.empty() && available() > granted_) {
      waiter* w = waiters_.front();
      waiters_.pop_front();
      w->granted = true;
      ++granted_;
      w->turn.notify_one();
    }
  }

  void give_back(PGconn* c) {
    const bool healthy = PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE &&
                         PQpipelineStatus(c) == PQ_PIPELINE_OFF;
    if (!healthy) PQfinish(c);
    std::lock_guard lock(mutex_);
    if (healthy) {
      idle_.push_back(c);
    } else {
      --open_;
    }
    grant_next();
  }

  const std::string conninfo_;
  const std::size_t max_;
  std::mutex mutex_;
  std::vector<PGconn*> idle_;
  std::size_t open_ = 0;
  std::deque<waiter*> waiters_;  // in arrival order
  std::size_t granted_ = 0;      // granted to waiters not yet awake: not for newcomers
};

// A transaction, rolled back unless committed. When a statement fails the guard's
// destructor rolls back; on a broken connection there is nothing to roll back (the server has
// already aborted it) and the pool drops the connection.
class transaction {
 public:
  explicit transaction(PGconn* c) : conn_(c) { exec(c, "BEGIN"); }
  transaction(const transaction&) = delete;
  transaction& operator=(const transaction&) = delete;
  ~transaction() {
    if (!done_ && PQstatus(conn_) == CONNECTION_OK) result{PQexec(conn_, "ROLLBACK")};
  }
  void commit() {
    done_ = true;
    exec(conn_, "COMMIT");
  }
  void rollback() {
    done_ = true;
    exec(conn_, "ROLLBACK");
  }

 private:
  PGconn* conn_;
  bool done_ = false;
};

enum class retry_on : std::uint8_t {
  begin,  // writes: retried only when BEGIN failed, so nothing of it reached the server
  any,    // reads: retried after any broken connection
};

}  // namespace

// --- The listener: one connection that LISTENs, on a thread of its own ---

class pg_listener {
 public:
  explicit pg_listener(std::string conninfo) : conninfo_(std::move(conninfo)) {
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
    thread_ = std::thread([this] { run(); });
  }
  pg_listener(const pg_listener&) = delete;
  pg_listener& operator=(const pg_listener&) = delete;
  ~pg_listener() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    wake();
    thread_.join();
    ::close(wake_fd_);
  }

  bool wait(const std::string& group, std::chrono::milliseconds timeout) {
    const std::string ch = channel_of(group);
    std::unique_lock lock(mutex_);
    auto [it, added] = channels_.try_emplace(ch);
    if (added) {
      to_listen_.push_back(ch);
      wake();
    }
    bool& signalled = it->second;
    if (!changed_.wait_for(lock, timeout, [&] { return signalled || stop_; })) return false;
    const bool got = signalled;
    signalled = false;
    return got;
  }

  std::uint64_t connects() const { return connects_.load(); }

 private:
  void wake() {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
  }

  bool stopping() {
    std::lock_guard lock(mutex_);
    return stop_;
  }

  // LISTENs on `channels`; false when the connection broke.
  static bool listen(PGconn* c, const std::vector<std::string>& channels) {
    for (const auto& ch : channels) {
      // The channel is "qos_jobs_" and 16 hex digits of our own making: safe as an identifier.
      const std::string sql = "LISTEN " + ch;
      result r{PQexec(c, sql.c_str())};
      if (!r || PQresultStatus(r.get()) != PGRES_COMMAND_OK) return false;
    }
    return true;
  }

  void run() {
    PGconn* conn = nullptr;
    while (!stopping()) {
      if (!conn) {
        std::string error;
        conn = connect(conninfo_, "qos-jobs-listener", error);
        std::vector<std::string> all;
        {
          std::lock_guard lock(mutex_);
          to_listen_.clear();
          for (const auto& [ch, _] : channels_) all.push_back(ch);
        }
        if (conn && !listen(conn, all)) {
          PQfinish(conn);
          conn = nullptr;
        }
        if (!conn) {
          std::unique_lock lock(mutex_);
          changed_.wait_for(lock, std::chrono::milliseconds(200), [&] { return stop_; });
          continue;
        }
        // Notifications sent while no connection listened are lost: wake every waiter once so
        // it claims (the poll it would do at its timeout, done now).
        {
          std::lock_guard lock(mutex_);
          for (auto& [_, signalled] : channels_) signalled = true;
          connects_.fetch_add(1);
        }
        changed_.notify_all();
      }
      std::vector<std::string> fresh;
      {
        std::lock_guard lock(mutex_);
        fresh.swap(to_listen_);
      }
      if (!listen(conn, fresh)) {
        PQfinish(conn);
        conn = nullptr;
        continue;
      }
      pollfd fds[2] = {{PQsocket(conn), POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      const int n = ::poll(fds, 2, 1000);
      if (n < 0 && errno != EINTR) {
        PQfinish(conn);
        conn = nullptr;
        continue;
      }
      if (fds[1].revents & POLLIN) {
        std::uint64_t v;
        [[maybe_unused]] auto r = ::read(wake_fd_, &v, sizeof v);
      }
      if (fds[0].revents != 0) {
        if (PQconsumeInput(conn) == 0 || PQstatus(conn) != CONNECTION_OK) {
          PQfinish(conn);
          conn = nullptr;
          continue;
        }
        bool any = false;
        std::unique_lock lock(mutex_);
        while (PGnotify* note = PQnotifies(conn)) {
          if (auto it = channels_.find(note->relname); it != channels_.end()) {
            it->second = true;
            any = true;
          }
          PQfreemem(note);
        }
        lock.unlock();
        if (any) changed_.notify_all();
      }
    }
    if (conn) PQfinish(conn);
  }

  const std::string conninfo_;
  int wake_fd_ = -1;  // wakes poll() for a new channel or stop
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, bool> channels_;  // channel -> notified since a waiter last looked
  std::vector<std::string> to_listen_;    // channels added since the last LISTENs
  bool stop_ = false;
  std::atomic<std::uint64_t> connects_{0};
  std::thread thread_;  // last: starts once the members above exist
};

// --- Group commit of keyless enqueues ---

namespace {

// The wake-up goes after the commit, in a transaction of its own without a WAL flush wait:
// PostgreSQL serializes the commits of every transaction that sent a NOTIFY on one
// database-wide lock held through the commit's flush (PreCommit_Notify), so a NOTIFY inside
// the enqueue would cap all enqueues at one per fsync. A lost notification only delays a
// consumer until its poll.
constexpr const char* notify_sql =
    "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')";

// One keyless enqueue: the route's depth, counted only when $12 says so (LIMIT bounds the work
// to the cap; -1 when not counted), and the insert when that depth is below the cap. Answers
// (depth or -1, rows inserted). In a transaction of several, the count sees the rows the
// statements before it inserted, so the cap is exact row by row within it.
constexpr const char* enqueue_name = "qos_enqueue_1";
constexpr const char* enqueue_sql =
    "WITH d AS (SELECT CASE WHEN $12::boolean THEN (SELECT count(*) FROM"
    " (SELECT 1 FROM qos_jobs WHERE route = $2::text"
    " AND state IN ('queued', 'running') LIMIT $11::bigint) x) ELSE -1 END AS n),"
    " ins AS (INSERT INTO qos_jobs (id, route, grp, tenant, method, target,"
    " headers, body, priority, payload_hash)"
    " SELECT $1::text, $2::text, $3::text, $4::bytea, $5::bytea, $6::bytea,"
    " $7::bytea, $8::bytea, $9::smallint, $10::bytea FROM d"
    " WHERE d.n < $11::bigint RETURNING 1)"
    " SELECT (SELECT n FROM d), (SELECT count(*) FROM ins)";

// Whether enqueue_sql is prepared on a connection. The mark is the instance data of a libpq
// event procedure, so it lives and dies with the PGconn: a connection opened later, even at a
// recycled address, starts unmarked. The procedure has nothing to do on any event, and must
// say yes to all of them (a "no" to a result's creation would turn the result into an error).
int enqueue_prepared_event(PGEventId, void*, void*) {
  return 1;
}
bool enqueue_prepared(const PGconn* c) {
  return PQinstanceData(c, enqueue_prepared_event) != nullptr;
}
void mark_enqueue_prepared(PGconn* c) {
  static char mark;
  // Fails harmlessly when already registered (a prepare that failed before): the data is set.
  PQregisterEventProc(c, enqueue_prepared_event, "qos-enqueue-prepared", nullptr);
  PQsetInstanceData(c, enqueue_prepared_event, &mark);
}

// Batches keyless enqueues into shared transactions (pg_store.hpp says why). A caller queues
// its entry; whenever fewer than max_in_flight batches run, a queued caller leads one: it
// takes the longest-waiting entries (up to max_rows; its own among them unless more than
// max_rows wait before it), runs them outside the lock, answers them, and goes on until its
// own entry is answered. Every freed slot wakes the longest-waiting parked caller, and a
// leader that leaves a slot free wakes the next one, so no entry is left waiting while a slot
// is free. A batch is ended by an RAII guard whatever its runner does: every entry of it is
// answered (unavailable when the runner did not) and its slot is freed. Entries live on their
// callers' stacks and are pinned; only the mutex's holder touches their state.
class enqueue_batcher {
 public:
  struct entry {
    entry(const job_request& j, const enqueue_options& o) : job(j), options(o) {}
    entry(const entry&) = delete;
    entry& operator=(const entry&) = delete;

    const job_request& job;
    const enqueue_options& options;
    // Set by the batch's runner, outside the lock; read by the caller once `done`.
    enqueue_result out;
    bool answered = false;
    // Guarded by the batcher's mutex.
    bool queued = true;            // not yet taken into a batch
    bool done = false;             // `out` is final
    bool parked = false;           // its caller waits on `turn`
    bool called = false;           // woken to lead, not yet awake
    std::condition_variable turn;  // done, or a slot free for this caller to lead
  };
  using batch = std::vector<entry*>;

  enqueue_batcher(std::size_t max_in_flight, std::size_t max_rows)
      : max_in_flight_(std::max<std::size_t>(1, max_in_flight)),
        max_rows_(std::max<std::size_t>(1, max_rows)) {}
  enqueue_batcher(const enqueue_batcher&) = delete;
  enqueue_batcher& operator=(const enqueue_batcher&) = delete;
  ~enqueue_batcher() { close(); }

  // Returns e's answer once the batch that carried it has ended. run(batch) runs a batch and
  // sets each entry's `out` and `answered`; whatever it leaves unanswered (it threw) answers
  // `unavailable` with no error text.
  template <class Run>
  enqueue_result submit(entry& e, Run&& run) {
    std::unique_lock lock(mutex_);
    if (closing_) {
      e.out.error = "job store: closing";
      return e.out;
    }
    queue_.push_back(&e);
    const caller_inside inside(*this, e);
    while (!e.done) {
      if (e.queued && in_flight_ < max_in_flight_) {
        lead(lock, run);
      } else {
        e.parked = true;
        e.turn.wait(lock);
        e.parked = false;
        e.called = false;
      }
    }
    return std::move(e.out);
  }

  // Waits until every caller inside submit() has its answer (the ones still queued are led as
  // usual); callers arriving later answer `unavailable` at once.
  void close() {
    std::unique_lock lock(mutex_);
    closing_ = true;
    drained_.wait(lock, [&] { return inside_ == 0; });
  }

  pg_store_stats stats() const {
    std::lock_guard lock(mutex_);
    return {.enqueue_batches = batches_, .enqueue_rows = rows_, .enqueue_waiting = queue_.size()};
  }

 private:
  // A caller between its entry's queueing and its return: leaves the queue (only when an
  // exception ends the wait early) and lets close() go on after the last one.
  class caller_inside {
   public:
    caller_inside(enqueue_batcher& b, entry& e) : b_(b), e_(e) { ++b_.inside_; }
    caller_inside(const caller_inside&) = delete;
    caller_inside& operator=(const caller_inside&) = delete;
    ~caller_inside() {
      if (e_.queued) std::erase(b_.queue_, &e_);
      if (--b_.inside_ == 0 && b_.closing_) b_.drained_.notify_all();
    }

   private:
    enqueue_batcher& b_;
    entry& e_;
  };

  // A batch from its taking to its end: the destructor (with the lock held again) answers
  // every entry the runner did not, wakes each entry's caller and frees the slot.
  class batch_in_flight {
   public:
    batch_in_flight(enqueue_batcher& b, std::unique_lock<std::mutex>& lock, const batch& taken)
        : b_(b), lock_(lock), taken_(taken) {
      ++b_.in_flight_;
    }
    batch_in_flight(const batch_in_flight&) = delete;
    batch_in_flight& operator=(const batch_in_flight&) = delete;
    ~batch_in_flight() {
      if (!lock_.owns_lock()) lock_.lock();
      for (entry* x : taken_) {
        if (!x->answered) x->out = enqueue_result{};  // unavailable
        x->done = true;
        x->turn.notify_one();  // under the lock: x outlives the call
      }
      --b_.in_flight_;
      b_.wake_leader();
    }

   private:
    enqueue_batcher& b_;
    std::unique_lock<std::mutex>& lock_;
    const batch& taken_;
  };

  // With the lock held; returns with it held.
  template <class Run>
  void lead(std::unique_lock<std::mutex>& lock, Run& run) {
    batch taken;
    taken.reserve(std::min(queue_.size(), max_rows_));  // the only throw: before any change
    while (!queue_.empty() && taken.size() < max_rows_) {
      entry* x = queue_.front();
      queue_.pop_front();
      x->queued = false;
      taken.push_back(x);
    }
    ++batches_;
    rows_ += taken.size();
    const batch_in_flight ending(*this, lock, taken);
    wake_leader();  // more waiting than one batch takes, and another slot free
    lock.unlock();
    try {
      run(taken);
    } catch (...) {
      // ending answers whatever the runner left unanswered
    }
  }

  // With the lock held: a free slot and a queued entry, so its caller leads.
  // The longest-waiting caller that is parked and not called yet: a queued caller that is
  // leading another batch right now looks again when that one ends.
  void wake_leader() {
    if (in_flight_ >= max_in_flight_) return;
    for (entry* x : queue_) {
      if (x->parked && !x->called) {
        x->called = true;
        x->turn.notify_one();
        return;
      }
    }
  }

  const std::size_t max_in_flight_;
  const std::size_t max_rows_;
  mutable std::mutex mutex_;
  std::deque<entry*> queue_;  // queued entries, oldest first
  std::size_t in_flight_ = 0;
  std::size_t inside_ = 0;  // callers in submit()
  bool closing_ = false;
  std::condition_variable drained_;  // inside_ fell to 0 while closing_
  std::uint64_t batches_ = 0;
  std::uint64_t rows_ = 0;
};

}  // namespace

struct pg_store::impl {
  explicit impl(pg_store_options o)
      : options(std::move(o)),
        connections(options.conninfo, std::max<std::size_t>(1, options.pool_size)),
        batcher(std::clamp<std::size_t>(options.enqueue_batches, 1,
                                        std::max<std::size_t>(1, options.pool_size)),
                options.enqueue_batch_rows) {}
  // Before any member goes: the batches still running use the pool and the depth counts.
  ~impl() { batcher.close(); }
  impl(const impl&) = delete;
  impl& operator=(const impl&) = delete;

  // Runs fn(conn) on a pooled connection. A broken connection is retried once on a fresh one,
  // per `retry`. Throws db_error.
  template <class F>
  auto run(retry_on retry, F&& fn) {
    for (int attempt = 0;; ++attempt) {
      auto conn = connections.take();
      bool began = false;
      try {
        transaction t(conn.get());
        began = true;
        return fn(conn.get(), t);
      } catch (const db_error& e) {
        const bool retriable = e.broken && attempt == 0 && (retry == retry_on::any || !began);
        if (!retriable) throw;
      }
    }
  }

  // Runs fn(conn) on a pooled connection outside any transaction (fn sends its own, e.g. in
  // one pipeline). Not retried: once a statement was sent, a broken connection cannot say
  // whether it committed. Throws db_error.
  template <class F>
  auto run_plain(F&& fn) {
    auto conn = connections.take();
    return fn(conn.get());
  }

  // Whether an enqueue of `route` must count the route's depth in the database. Counting is
  // O(depth) (up to max_depth index entries, on every enqueue when the queue is long: the
  // moment bursts happen), so a count is reused while it is younger than depth_reuse and this
  // process's enqueues since then keep it below half the cap. Consumers only lower the depth
  // meanwhile; other processes' enqueues within depth_reuse may push it past the cap unseen.
  // `ahead`: enqueues of the route before this one in its batch, not yet counted() (they
  // may all be created).
  bool must_count(const std::string& route, std::size_t max_depth, std::size_t ahead = 0) {
    std::lock_guard lock(depth_mutex);
    const auto it = depths.find(route);
    if (it == depths.end()) return true;
    const auto& d = it->second;
    return std::chrono::steady_clock::now() - d.at >= depth_reuse ||
           d.counted + d.since + ahead >= max_depth / 2;
  }
  void counted(const std::string& route, std::optional<std::size_t> depth, bool created) {
    std::lock_guard lock(depth_mutex);
    if (depth) {
      depths[route] = {*depth + (created ? 1 : 0), std::chrono::steady_clock::now(), 0};
    } else if (auto it = depths.find(route); it != depths.end() && created) {
      ++it->second.since;
    }
  }

  void failed(const std::exception& e) {
    std::lock_guard lock(error_mutex);
    error = e.what();
  }
  // The contract's "no answer": every call but enqueue() throws store_error.
  [[noreturn]] void raise(const std::exception& e) {
    failed(e);
    throw store_error(std::string("job store: ") + e.what());
  }

  // Started by the first wait_for_work(): a gateway that only enqueues holds no listener.
  pg_listener& listener() {
    std::call_once(listener_started,
                   [&] { listen = std::make_unique<pg_listener>(options.conninfo); });
    return *listen;
  }

  // Runs a batch of keyless enqueues in one transaction (enqueue_batcher's runner).
  void enqueue_batch(const enqueue_batcher::batch& batch);
  // After a lost acknowledgement of a batch's COMMIT: which of `ids` were stored (into
  // `created`); false when none were or the store could not tell.
  bool committed_after_all(const std::vector<job_id>& ids, std::vector<char>& created);

  const pg_store_options options;
  pool connections;
  enqueue_batcher batcher;
  std::once_flag listener_started;
  std::unique_ptr<pg_listener> listen;
  mutable std::mutex error_mutex;
  std::string error;  // guarded by error_mutex

  struct route_depth {
    std::size_t counted = 0;  // queued + running at the last count, with that enqueue
    std::chrono::steady_clock::time_point at{};
    std::size_t since = 0;  // created here since
  };
  static constexpr std::chrono::milliseconds depth_reuse{1000};
  std::mutex depth_mutex;
  std::map<std::string, route_depth> depths;  // guarded by depth_mutex
};

pg_store::pg_store(pg_store_options options) : impl_(std::make_unique<impl>(std::move(options))) {
  if (impl_->options.migrate_on_start) migrate();
}

pg_store::~pg_store() = default;

void pg_store::migrate() {
  try {
    impl_->run(retry_on::begin, [](PGconn* c, transaction& t) {
      // Serializes migrations of concurrent processes: CREATE TABLE IF NOT EXISTS alone races.
      params{}
          .num(lock_class)
          .num(lock_migrate)
          .exec(c, "SELECT pg_advisory_xact_lock($1::int, $2::int)");
      exec(c,
           "CREATE TABLE IF NOT EXISTS qos_jobs_schema ("
           " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())");
      result v = exec(c, "SELECT coalesce(max(version), 0) FROM qos_jobs_schema");
      const auto current = col_int(v.get(), 0, 0);
      if (current > schema_version) {
        throw db_error("the database's job schema (version " + std::to_string(current) +
                           ") is newer than this build's (" + std::to_string(schema_version) + ")",
                       false);
      }
      if (current < 1) {
        // No parameters: PQexec runs the whole script.
        result r{PQexec(c, migration_1)};
        params::check(c, r.get());
        params{}.num(1).exec(c, "INSERT INTO qos_jobs_schema (version) VALUES ($1::int)");
      }
      t.commit();
      return 0;
    });
  } catch (const std::exception& e) {
    impl_->failed(e);
    throw pg_store_error(std::string("job store migration failed: ") + e.what());
  }
}

bool pg_store::impl::committed_after_all(const std::vector<job_id>& ids,
                                         std::vector<char>& created) {
  // The connection broke after COMMIT was sent: the transaction's outcome is settled once its
  // backend has gone (a commit in progress holds off the termination until it is written), and
  // the ids were chosen here, so a fresh connection can tell. Rows of a committed transaction
  // that are absent were refused by the cap. None found: nothing was stored (or every row was
  // refused), and `unavailable` is true either way.
  try {
    std::string list = "{";
    for (const auto& id : ids) list += (list.size() > 1 ? "," : "") + id;  // hex: no quoting
    list += "}";
    std::set<job_id> found;
    run(retry_on::any, [&](PGconn* c, transaction&) {
      result r = params{}.text(list).exec(c, "SELECT id FROM qos_jobs WHERE id = ANY($1::text[])");
      for (int i = 0; i < PQntuples(r.get()); ++i) found.insert(col(r.get(), i, 0));
      return 0;
    });
    for (std::size_t i = 0; i < ids.size(); ++i) created[i] = found.count(ids[i]) != 0;
    return !found.empty();
  } catch (const std::exception&) {
    return false;
  }
}

void pg_store::impl::enqueue_batch(const enqueue_batcher::batch& batch) {
  const std::size_t n = batch.size();
  std::vector<job_id> ids(n);
  std::vector<std::int64_t> seen(n, -1);  // the depth each row counted, -1: not counted
  std::vector<char> created(n);
  bool commit_sent = false;
  try {
    std::vector<char> count(n);
    std::map<std::string, std::size_t> ahead;  // per route, rows before this one in the batch
    for (std::size_t i = 0; i < n; ++i) {
      const auto& job = batch[i]->job;
      ids[i] = new_job_id();
      count[i] = must_count(job.route, batch[i]->options.max_depth, ahead[job.route]++);
    }
    auto lease = connections.take();
    PGconn* c = lease.get();
    // One round trip: [the statement's preparation, on a connection's first batch], then
    // BEGIN, one statement per enqueue and COMMIT, then the wake-ups of the batch's groups in
    // a transaction of their own (see notify_sql); a sync point after each part.
    const bool prepare = !enqueue_prepared(c);
    if (PQenterPipelineMode(c) != 1) throw db_error(PQerrorMessage(c), false);
    int syncs = 0;
    auto sync = [&] {
      if (PQpipelineSync(c) != 1) throw db_error(PQerrorMessage(c), true);
      ++syncs;
    };
    if (prepare) {
      if (PQsendPrepare(c, enqueue_name, enqueue_sql, 0, nullptr) != 1) {
        throw db_error(PQerrorMessage(c), PQstatus(c) != CONNECTION_OK);
      }
      sync();
    }
    params{}.send(c, "BEGIN");
    for (std::size_t i = 0; i < n; ++i) {
      const auto& job = batch[i]->job;
      job_params(ids[i], job)
          .bytes(job.payload_hash)
          .num(static_cast<std::int64_t>(batch[i]->options.max_depth))
          .text(count[i] ? "true" : "false")
          .send_prepared(c, enqueue_name);
    }
    params{}.send(c, "COMMIT");
    sync();
    commit_sent = true;
    std::set<std::string> groups;
    for (const auto* e : batch) groups.insert(e->job.group);
    for (const auto& g : groups) params{}.text(channel_of(g)).send(c, notify_sql);
    sync();
    const auto got = read_segments(c, syncs, (prepare ? 1 : 0) + n + 2 + groups.size());
    PQexitPipelineMode(c);  // fails only with results unread: the pool then drops it
    // After a failed statement the transaction (an explicit one) is still open, aborted: roll
    // it back so the connection can go back to the pool (it is dropped if this fails too).
    if (PQpipelineStatus(c) == PQ_PIPELINE_OFF && PQtransactionStatus(c) != PQTRANS_IDLE) {
      result{PQexec(c, "ROLLBACK")};
    }
    std::size_t part = 0;
    if (prepare) {
      // Prepared statements outlive transactions; "already exists" means prepared before.
      const auto& prepared = got[part++];
      PGresult* p = prepared.empty() ? nullptr : prepared[0].get();
      const char* state = p ? PQresultErrorField(p, PG_DIAG_SQLSTATE) : nullptr;
      if (p &&
          (PQresultStatus(p) == PGRES_COMMAND_OK || (state && std::strcmp(state, "42P05") == 0))) {
        mark_enqueue_prepared(c);
      }
    }
    if (got.size() <= part) throw db_error("enqueue batch: results missing", true);
    const auto& tx = got[part];
    for (const auto& r : tx) params::check(c, r.get());  // the first failure, then the skipped
    if (tx.size() != n + 2 || std::strcmp(PQcmdStatus(tx.back().get()), "COMMIT") != 0) {
      throw db_error("enqueue batch: the transaction did not commit", false);
    }
    for (std::size_t i = 0; i < n; ++i) {
      PGresult* row = tx[i + 1].get();
      seen[i] = col_int(row, 0, 0);
      created[i] = col_int(row, 0, 1) == 1;
    }
  } catch (const db_error& e) {
    failed(e);
    if (!(e.broken && commit_sent && committed_after_all(ids, created))) {
      for (auto* x : batch) {
        x->out.result = enqueue_result::kind::unavailable;
        x->out.error = e.what();
        x->answered = true;
      }
      return;
    }
    std::fill(seen.begin(), seen.end(), -1);  // the counts were not read: count again later
  } catch (const std::exception& e) {
    failed(e);
    for (auto* x : batch) {
      x->out.result = enqueue_result::kind::unavailable;
      x->out.error = e.what();
      x->answered = true;
    }
    return;
  }
  for (std::size_t i = 0; i < n; ++i) {
    auto& out = batch[i]->out;
    out.result = created[i] ? enqueue_result::kind::created : enqueue_result::kind::full;
    if (created[i]) out.id = ids[i];
    batch[i]->answered = true;
  }
  // In the batch's order: a row's count includes the rows before it.
  for (std::size_t i = 0; i < n; ++i) {
    counted(
        batch[i]->job.route,
        seen[i] >= 0 ? std::optional<std::size_t>(static_cast<std::size_t>(seen[i])) : std::nullopt,
        created[i] != 0);
  }
}

enqueue_result pg_store::enqueue(const job_request& job, const enqueue_options& options) {
  enqueue_result out;
  try {
    if (!job.idempotency_key) {
      enqueue_batcher::entry e(job, options);
      // The runner holds the impl, not this object: a leader may still run while the
      // destructor waits for it (see ~pg_store).
      out = impl_->batcher.submit(
          e, [im = impl_.get()](const enqueue_batcher::batch& b) { im->enqueue_batch(b); });
      if (out.result == enqueue_result::kind::unavailable && out.error.empty()) {
        out.error = "job store: the enqueue's batch ended without an answer";
      }
      return out;
    }
    const std::string id = new_job_id();
    const bool count = impl_->must_count(job.route, options.max_depth);
    std::optional<std::size_t> depth_seen;
    auto notify = [&](PGconn* c) {
      try {
        params{}.text(channel_of(job.group)).exec(c, notify_sql);
      } catch (const db_error&) {
      }
    };
    out = impl_->run(retry_on::begin, [&](PGconn* c, transaction& t) {
      enqueue_result r;
      {
        // A key past its retention is forgotten: this request starts a new job.
        params{}
            .text(job.route)
            .bytes(job.tenant)
            .bytes(*job.idempotency_key)
            .exec(c,
                  "DELETE FROM qos_jobs_keys WHERE route = $1 AND tenant = $2 AND key = $3"
                  " AND expires_at <= now()");
        // Concurrent duplicates wait here on the unique constraint for the first one's
        // transaction; when it commits they read its job back, when it rolls back (full)
        // one of them takes its place.
        result ins =
            params{}
                .text(job.route)
                .bytes(job.tenant)
                .bytes(*job.idempotency_key)
                .bytes(job.payload_hash)
                .text(id)
                .num(options.key_retention.count())
                .exec(c,
                      "INSERT INTO qos_jobs_keys"
                      " (route, tenant, key, payload_hash, job_id, expires_at)"
                      " VALUES ($1, $2, $3, $4, $5, now() + $6::bigint * interval '1 second')"
                      " ON CONFLICT ON CONSTRAINT qos_jobs_keys_scope DO NOTHING"
                      " RETURNING job_id");
        if (PQntuples(ins.get()) == 0) {
          result old = params{}
                           .text(job.route)
                           .bytes(job.tenant)
                           .bytes(*job.idempotency_key)
                           .exec(c,
                                 "SELECT payload_hash, job_id FROM qos_jobs_keys"
                                 " WHERE route = $1 AND tenant = $2 AND key = $3");
          t.rollback();
          if (PQntuples(old.get()) == 0) {
            // Pruned between the two statements: rare; the client's retry settles it.
            r.result = enqueue_result::kind::unavailable;
            r.error = "idempotency key pruned concurrently";
            return r;
          }
          if (col_bytes(old.get(), 0, 0) == job.payload_hash) {
            r.result = enqueue_result::kind::duplicate;
            r.id = col(old.get(), 0, 1);
          } else {
            r.result = enqueue_result::kind::conflict;
          }
          return r;
        }
      }
      // Not exact under concurrency (see the header): counted without a lock, in this
      // transaction's snapshot, and only when a recent count does not settle it (must_count).
      // LIMIT bounds the work to the cap.
      if (count) {
        result depth = params{}
                           .text(job.route)
                           .num(static_cast<std::int64_t>(options.max_depth))
                           .exec(c,
                                 "SELECT count(*) FROM (SELECT 1 FROM qos_jobs WHERE route = $1"
                                 " AND state IN ('queued', 'running') LIMIT $2::bigint) d");
        depth_seen = static_cast<std::size_t>(col_int(depth.get(), 0, 0));
        if (*depth_seen >= options.max_depth) {
          t.rollback();
          r.result = enqueue_result::kind::full;
          return r;
        }
      }
      params p = job_params(id, job);
      if (job.idempotency_key) {
        p.bytes(*job.idempotency_key);
      } else {
        p.null();
      }
      p.bytes(job.payload_hash);
      p.exec(c,
             "INSERT INTO qos_jobs (id, route, grp, tenant, method, target, headers, body,"
             " priority, idem_key, payload_hash)"
             " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::smallint, $10, $11)");
      t.commit();
      r.result = enqueue_result::kind::created;
      r.id = id;
      notify(c);
      return r;
    });
    impl_->counted(job.route, depth_seen, out.result == enqueue_result::kind::created);
  } catch (const std::exception& e) {
    impl_->failed(e);
    out = {};
    out.result = enqueue_result::kind::unavailable;
    out.error = e.what();
  }
  return out;
}

namespace {

claimed_job read_claimed(PGresult* r, int row) {
  claimed_job j;
  j.id = col(r, row, 0);
  j.fence = static_cast<std::uint64_t>(col_int(r, row, 1));
  j.attempt = static_cast<int>(col_int(r, row, 2));
  j.lease_until = col_time(r, row, 3);
  j.request.route = col(r, row, 4);
  j.request.group = col(r, row, 5);
  j.request.tenant = col_bytes(r, row, 6);
  j.request.method = col_bytes(r, row, 7);
  j.request.target = col_bytes(r, row, 8);
  j.request.headers = detail::decode_headers(col_bytes(r, row, 9));
  j.request.body = col_bytes(r, row, 10);
  j.request.priority = static_cast<int>(col_int(r, row, 11));
  if (!is_null(r, row, 12)) j.request.idempotency_key = col_bytes(r, row, 12);
  j.request.payload_hash = col_bytes(r, row, 13);
  return j;
}

// The claimed rows of a claim statement, in claim order (RETURNING has none).
std::vector<claimed_job> claimed_in_order(PGresult* r) {
  std::vector<std::pair<std::int64_t, claimed_job>> rows;
  for (int i = 0; i < PQntuples(r); ++i) rows.emplace_back(col_int(r, i, 14), read_claimed(r, i));
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    if (a.second.request.priority != b.second.request.priority) {
      return a.second.request.priority > b.second.request.priority;
    }
    if (a.first != b.first) return a.first < b.first;
    return a.second.id < b.second.id;
  });
  std::vector<claimed_job> out;
  out.reserve(rows.size());
  for (auto& [_, j] : rows) out.push_back(std::move(j));
  return out;
}

// Count-and-claim is atomic per group across processes: without the lock two claimers could
// both count N-1 leases and both take one. One lock per group, held for the claim's short
// transaction only (never while a job runs, so a crashed consumer holds nothing), and taken in
// its own statement: READ COMMITTED gives the claim statement a snapshot that includes the
// previous holder's committed claims. Parameters: the group.
params group_lock(const std::string& group) {
  return std::move(params{}.num(lock_class).text(group));
}
constexpr const char* sql_group_lock = "SELECT pg_advisory_xact_lock($1::int, hashtext($2))";

// Leases up to $2 of group $1's runnable jobs for $3 ms, but no more than bring the group's
// leases to $4: the count and the pick share the statement's snapshot, taken under the group's
// lock. Leases past their expiry still count until requeue_expired() takes them back (their
// worker may still be running); a lease this transaction released before (a settlement) no
// longer does.
const std::string& claim_sql() {
  static const std::string sql =
      std::string(
          "UPDATE qos_jobs j SET state = 'running', fence = j.fence + 1,"
          " attempts = j.attempts + 1,"
          " lease_until = now() + $3::bigint * interval '1 millisecond'"
          " FROM (SELECT id FROM qos_jobs WHERE grp = $1 AND state = 'queued'"
          " AND run_at <= now() ORDER BY priority DESC, run_at, id"
          " LIMIT least($2::bigint, greatest(0, $4::bigint - (SELECT count(*) FROM qos_jobs"
          " WHERE grp = $1 AND state = 'running')))"
          " FOR UPDATE SKIP LOCKED) picked"
          " WHERE j.id = picked.id RETURNING ") +
      claimed_columns;
  return sql;
}
params claim_params(const std::string& group, std::size_t limit, std::size_t group_limit,
                    std::chrono::milliseconds lease) {
  return std::move(params{}
                       .text(group)
                       .num(static_cast<std::int64_t>(limit))
                       .num(lease.count())
                       .num(static_cast<std::int64_t>(group_limit)));
}

// One row changed: the lease was this token's.
constexpr const char* sql_complete =
    "UPDATE qos_jobs SET state = 'succeeded', finished = now(),"
    " lease_until = NULL, last_error = '', result_status = $3::int,"
    " result_headers = $4, result_body = $5"
    " WHERE id = $1 AND fence = $2::bigint AND state = 'running'";
params complete_params(const job_id& id, std::uint64_t fence, const job_result& res) {
  return std::move(params{}
                       .text(id)
                       .num(static_cast<std::int64_t>(fence))
                       .num(res.status)
                       .bytes(detail::encode_headers(res.headers))
                       .bytes(res.body));
}

// A retry after retry_delay(), or dead after the last attempt, in one statement (so that it can
// be pipelined): the attempt number is the row's, so the delays of attempts 1..n (n up to 64,
// where retry_delay() stops doubling) are bound, all with one jitter draw, and the row picks its
// own. One row changed: the lease was this token's.
constexpr const char* sql_fail =
    "UPDATE qos_jobs SET"
    " state = CASE WHEN attempts >= $3::int THEN 'dead' ELSE 'queued' END,"
    " finished = CASE WHEN attempts >= $3::int THEN now() ELSE finished END,"
    " run_at = CASE WHEN attempts >= $3::int THEN run_at ELSE now() +"
    " ($5::bigint[])[greatest(1, least(attempts, cardinality($5::bigint[])))]"
    " * interval '1 millisecond' END,"
    " lease_until = NULL, last_error = $4"
    " WHERE id = $1 AND fence = $2::bigint AND state = 'running'";
params fail_params(const job_id& id, std::uint64_t fence, const std::string& error,
                   const retry_policy& retry) {
  const double unit = unit_random();
  const int n = std::clamp(retry.max_attempts, 2, 65) - 1;  // the delays a retry may use
  std::string delays = "{";
  for (int attempt = 1; attempt <= n; ++attempt) {
    if (attempt > 1) delays += ',';
    delays += std::to_string(retry_delay(retry, attempt, unit).count());
  }
  delays += '}';
  return std::move(params{}
                       .text(id)
                       .num(static_cast<std::int64_t>(fence))
                       .num(retry.max_attempts)
                       .bytes(error)
                       .text(std::move(delays)));
}

}  // namespace

std::vector<claimed_job> pg_store::claim(const std::string& group, std::size_t limit,
                                         std::size_t group_limit, std::chrono::milliseconds lease) {
  if (limit == 0 || group_limit == 0) return {};
  try {
    return impl_->run(retry_on::begin, [&](PGconn* c, transaction& t) {
      group_lock(group).exec(c, sql_group_lock);
      result r = claim_params(group, limit, group_limit, lease).exec(c, claim_sql().c_str());
      t.commit();
      return claimed_in_order(r.get());
    });
  } catch (const std::exception& e) {
    impl_->raise(e);
  }
}

bool pg_store::heartbeat(const job_id& id, std::uint64_t fence, std::chrono::milliseconds lease) {
  try {
    return impl_->run(retry_on::begin, [&](PGconn* c, transaction& t) {
      // A lease past its expiry but not yet taken back is still this token's: extending it is
      // safe, and requeue_expired() re-checks the expiry under the row lock.
      result r = params{}
                     .text(id)
                     .num(static_cast<std::int64_t>(fence))
                     .num(lease.count())
                     .exec(c,
                           "UPDATE qos_jobs SET lease_until = now() + $3::bigint * interval "
                           "'1 millisecond' WHERE id = $1 AND fence = $2::bigint AND state = "
                           "'running'");
      t.commit();
      return affected(r.get()) == 1;
    });
  } catch (const std::exception& e) {
    impl_->raise(e);
  }
}

bool pg_store::complete(const job_id& id, std::uint64_t fence, const job_result& res) {
  try {
    return impl_->run(retry_on::begin, [&](PGconn* c, transaction& t) {
      result r = complete_params(id, fence, res).exec(c, sql_complete);
      t.commit();
      return affected(r.get()) == 1;
    });
  } catch (const std::exception& e) {
    impl_->raise(e);
  }
}

bool pg_store::fail(const job_id& id, std::uint64_t fence, const std::string& error,
                    const retry_policy& retry) {
  try {
    return impl_->run(retry_on::begin, [&](PGconn* c, transaction& t) {
      result r = fail_params(id, fence, error, retry).exec(c, sql_fail);
      t.commit();
      return affected(r.get()) == 1;
    });
  } catch (const std::exception& e) {
    impl_->raise(e);
  }
}

settle_result pg_store::settle_and_claim(std::span<const settlement> ended,
                                         const claim_request& next) {
  const bool claiming = next.limit != 0 && next.group_limit != 0;
  if (ended.empty() && !claiming) return {};
  try {
    return impl_->run_plain([&](PGconn* c) {
      // One pipeline, one sync: BEGIN, the settlements, the group's lock, the claim, COMMIT.
      // The server runs them in order without waiting for us between them. Not retried on a
      // fresh connection: once sent, a broken connection cannot say whether COMMIT ran.
      if (PQenterPipelineMode(c) != 1) throw db_error(PQerrorMessage(c), false);
      params{}.send(c, "BEGIN");
      for (const settlement& s : ended) {
        if (s.what == settlement::kind::complete) {
          complete_params(s.id, s.fence, s.result).send(c, sql_complete);
        } else {
          fail_params(s.id, s.fence, s.error, s.retry).send(c, sql_fail);
        }
      }
      if (claiming) {
        group_lock(next.group).send(c, sql_group_lock);
        claim_params(next.group, next.limit, next.group_limit, next.lease)
            .send(c, claim_sql().c_str());
      }
      params{}.send(c, "COMMIT");
      if (PQpipelineSync(c) != 1) throw db_error(PQerrorMessage(c), true);
      std::vector<result> got =
          std::move(read_segments(c, 1, 2 + ended.size() + (claiming ? 2 : 0)).front());
      PQexitPipelineMode(c);  // fails only with results unread: the pool then drops it
      // A failed statement made the server skip the rest, COMMIT too, and left the
      // transaction aborted: end it, so that the connection can serve again.
      if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE) {
        result{PQexec(c, "ROLLBACK")};
      }
      for (const result& r : got) params::check(c, r.get());  // the first failure throws
      const std::size_t settled = 1 + ended.size();           // after BEGIN's
      if (got.size() != settled + (claiming ? 3 : 1)) {
        throw db_error("pipeline: results missing", true);
      }
      settle_result out;
      out.accepted.reserve(ended.size());
      for (std::size_t i = 1; i < settled; ++i) out.accepted.push_back(affected(got[i].get()) == 1);
      if (claiming) out.claimed = claimed_in_order(got[settled + 1].get());
      return out;
    });
  } catch (const std::exception& e) {
    impl_->raise(e);
  }
}

std::optional<job_status> pg_store::status(const job_id& id) {
  try {
    return impl_->run(retry_on::any, [&](PGconn* c, transaction& t) -> std::optional<job_status> {
      result r = params{}.text(id).exec(
          c,
          "SELECT state, attempts, (extract(epoch FROM run_at) * 1000000)::bigint,"
          " result_status, result_headers, result_body, last_error,"
          " (extract(epoch FROM created) * 1000000)::bigint,"
          " (extract(epoch FROM finished) * 1000000)::bigint"
          " FROM qos_jobs WHERE id = $1");
      t.commit();
      if (PQntuples(r.get()) == 0) return std::nullopt;
      PGresult* p = r.get();
      job_status s;
      s.id = id;
      const std::string state = col(p, 0, 0);
      s.state = state == "queued"      ? job_state::queued
                : state == "running"   ? job_state::running
                : state == "succeeded" ? job_state::succeeded
                                       : job_state::dead;
      s.attempts = static_cast<int>(col_int(p, 0, 1));
      if (s.state == job_state::queued) s.run_at = col_time(p, 0, 2);
      if (s.state == job_state::succeeded && !is_null(p, 0, 3)) {
        s.result = job_result{.status = static_cast<int>(col_int(p, 0, 3)),
                              .headers = detail::decode_headers(col_bytes(p, 0, 4)),
                              .body = col_bytes(p, 0, 5)};
      }
      s.last_error = col_bytes(p, 0, 6);
      s.created = col_time(p, 0, 7);
      if (!is_null(p, 0, 8)) s.finished = col_time(p, 0, 8);
      return s;
    });
  } catch (const std::exception& e) {
    impl_->raise(e);
  }
}

std::size_t pg_store::requeue_expired(const retry_policy& retry) {
  try {
    return impl_->run(retry_on::begin, [&](PGconn* c, transaction& t) {
      // The run counted at its claim; the next claim counts the next one (attempts + 1). The
      // expiry is re-checked on each row after its lock (a heartbeat that won the race keeps
      // its lease).
      result r =
          params{}
              .num(retry.max_attempts)
              .exec(c,
                    "UPDATE qos_jobs SET"
                    " state = CASE WHEN attempts >= $1::int THEN 'dead' ELSE 'queued' END,"
                    " finished = CASE WHEN attempts >= $1::int THEN now() END,"
                    " run_at = now(), lease_until = NULL,"
                    " last_error = convert_to('lease expired on attempt ' || attempts, 'UTF8')"
                    " WHERE state = 'running' AND lease_until < now()");
      t.commit();
      return affected(r.get());
    });
  } catch (const std::exception& e) {
    impl_->raise(e);
  }
}

std::size_t pg_store::prune(std::chrono::seconds jobs) {
  // Batches of 1000, one short transaction each: a long delete would hold its row locks and
  // its snapshot (holding back vacuum of the hot rows) for its whole length.
  constexpr std::int64_t batch = 1000;
  std::size_t deleted = 0;
  try {
    for (;;) {
      const std::size_t n = impl_->run(retry_on::begin, [&](PGconn* c, transaction& t) {
        result r = params{}
                       .num(jobs.count())
                       .num(batch)
                       .exec(c,
                             "DELETE FROM qos_jobs j USING (SELECT id FROM qos_jobs"
                             " WHERE state IN ('succeeded', 'dead')"
                             " AND finished < now() - $1::bigint * interval '1 second'"
                             " LIMIT $2::bigint FOR UPDATE SKIP LOCKED) old"
                             " WHERE j.id = old.id AND j.state IN ('succeeded', 'dead')");
        t.commit();
        return affected(r.get());
      });
      deleted += n;
      if (n < static_cast<std::size_t>(batch)) break;
    }
    for (;;) {
      const std::size_t n = impl_->run(retry_on::begin, [&](PGconn* c, transaction& t) {
        result r = params{}.num(batch).exec(
            c,
            "DELETE FROM qos_jobs_keys WHERE ctid IN (SELECT ctid FROM qos_jobs_keys"
            " WHERE expires_at <= now() LIMIT $1::bigint FOR UPDATE SKIP LOCKED)");
        t.commit();
        return affected(r.get());
      });
      if (n < static_cast<std::size_t>(batch)) break;
    }
  } catch (const std::exception& e) {
    impl_->raise(e);
  }
  return deleted;
}

bool pg_store::requeue_dead(const job_id& id) {
  try {
    return impl_->run(retry_on::begin, [&](PGconn* c, transaction& t) {
      result r = params{}.text(id).exec(
          c,
          "UPDATE qos_jobs SET state = 'queued', attempts = 0, run_at = now(), finished = NULL"
          " WHERE id = $1 AND state = 'dead'");
      t.commit();
      return affected(r.get()) == 1;
    });
  } catch (const std::exception& e) {
    impl_->raise(e);
  }
}

bool pg_store::purge(const job_id& id) {
  try {
    return impl_->run(retry_on::begin, [&](PGconn* c, transaction& t) {
      result r = params{}.text(id).exec(c, "DELETE FROM qos_jobs WHERE id = $1 AND state = 'dead'");
      const bool gone = affected(r.get()) == 1;
      if (gone) params{}.text(id).exec(c, "DELETE FROM qos_jobs_keys WHERE job_id = $1");
      t.commit();
      return gone;
    });
  } catch (const std::exception& e) {
    impl_->raise(e);
  }
}

std::size_t pg_store::depth(const std::string& route) {
  try {
    return impl_->run(retry_on::any, [&](PGconn* c, transaction& t) {
      result r = params{}.text(route).exec(
          c, "SELECT count(*) FROM qos_jobs WHERE route = $1 AND state IN ('queued', 'running')");
      t.commit();
      return static_cast<std::size_t>(col_int(r.get(), 0, 0));
    });
  } catch (const std::exception& e) {
    impl_->raise(e);
  }
}

bool pg_store::wait_for_work(const std::string& group, std::chrono::milliseconds timeout) {
  return impl_->listener().wait(group, timeout);
}

std::uint64_t pg_store::listener_connects() const {
  return impl_->listener().connects();
}

std::string pg_store::last_error() const {
  std::lock_guard lock(impl_->error_mutex);
  return impl_->error;
}

std::unique_ptr<run_slots> pg_store::slots(const std::string& group,
                                           std::chrono::milliseconds lease) {
  return std::make_unique<pg_run_slots>(impl_->options.conninfo, group, lease);
}

pg_store_stats pg_store::stats() const {
  return impl_->batcher.stats();
}

}  // namespace qos::jobs

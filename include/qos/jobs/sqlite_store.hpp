// The embedded job store: one SQLite file owned by one process (an exclusive flock on
// `<path>.lock`; the PostgreSQL store is the option for several processes or hosts).
// Thread-safe. Every write runs on one writer thread; enqueue() calls arriving within
// `group_commit` of each other share one transaction (group commit), and each caller returns
// after that transaction committed — or `unavailable` for all of them, with nothing stored,
// when it did not. status() and depth() read through a second connection and never wait for
// the writer (WAL readers do not block the writer, nor it them).
//
// Durability (`synchronous`):
// - full (default): each commit is fsynced before enqueue() returns: a 202 survives a process
//   crash, a kernel panic and a power loss.
// - normal: the WAL is fsynced only at checkpoints: a 202 survives a crash or kill -9 of the
//   process (the commit is in the OS page cache), but a power loss or kernel panic may lose the
//   last commits. Several times faster per commit.
// - With full, the consumers' lease writes (claim, heartbeat, complete, fail, requeue_expired,
//   settle_and_claim) commit in transactions of their own as with normal: a freed slot's next
//   job then waits for no fsync (under a stream of enqueues it waited for theirs, and the
//   group ran below N / service time). A power loss may forget the last of them: those jobs
//   run again (attempts + 1, as after a crash), none is lost, and every 202 still waited for
//   its fsync. Operator writes (requeue_dead, purge, prune) stay full.
//
// Where the contract leaves room, this store:
// - counts every running row of a group against claim()'s group_limit, an expired lease too
//   until requeue_expired() returns it (its worker may still be running, only paused);
// - accepts heartbeat()/complete()/fail() with the token of an expired lease nobody re-claimed
//   yet (it is still the job's current token);
// - requeues an expired lease for an immediate run (the crash was most likely not the job's
//   fault; max_attempts still bounds a job that kills its worker every time);
// - gives a requeued dead job a fresh set of attempts (attempts back to 0; last_error kept);
// - keeps an idempotency key until its own retention even when prune() removed its job: a
//   duplicate then gets the old id, whose status is gone (404), rather than a second run;
// - clamps priorities into 0..15;
// - throws store_error from every call but enqueue() when the database fails.
//
// WAL size: once a commit leaves `autocheckpoint_pages` of WAL, a checkpointer thread with a
// connection of its own copies pages back (PASSIVE, beside the writer's transactions: the
// writer never waits for the copy, as it would with SQLite's own autocheckpoint); that cannot
// shrink the file, so after `checkpoint_interval` without writes the idle writer runs
// wal_checkpoint(TRUNCATE), and journal_size_limit caps what a reset WAL keeps on disk after a
// burst.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "qos/jobs/backoff.hpp"
#include "qos/jobs/job_store.hpp"
#include "qos/jobs/store_error.hpp"

namespace qos::jobs {

struct sqlite_options {
  std::string path{};  // the database file; `<path>.lock` is the process lock beside it
  enum class sync_mode : std::uint8_t { full, normal };
  sync_mode synchronous = sync_mode::full;
  // How long the writer collects enqueues after the first one before committing them together.
  // 0: none; enqueues that arrive while a commit runs still share the next one (measured in
  // bench/RESULTS.md: a window only adds its length to every enqueue's wait unless commits are
  // expensive and enqueues sparse).
  std::chrono::microseconds group_commit{0};
  std::size_t max_batch = 512;  // enqueues per transaction at most
  // How long a statement waits for a SQLite lock (a checkpoint, the reader) before failing.
  std::chrono::milliseconds busy_timeout{5000};
  int autocheckpoint_pages = 1000;  // 0: no checkpoint but the idle one
  std::chrono::milliseconds checkpoint_interval{30000};
  std::int64_t journal_size_limit = 64 * 1024 * 1024;  // bytes kept by a reset WAL
  now_fn now{};                                        // empty: system_clock::now
  unit_random_fn random{};                             // retry jitter; empty: default_unit_random()
};

class sqlite_store final : public job_store {
 public:
  // Opens (creating and migrating the schema when needed) or throws store_error: another
  // process owns the file, the file is not a database, or it was written by a newer schema.
  explicit sqlite_store(sqlite_options options);
  // Drains the writer's queue (every call already made gets its answer), then closes.
  ~sqlite_store() override;
  sqlite_store(const sqlite_store&) = delete;
  sqlite_store& operator=(const sqlite_store&) = delete;

  enqueue_result enqueue(const job_request& job, const enqueue_options& options) override;
  std::vector<claimed_job> claim(const std::string& group, std::size_t limit,
                                 std::size_t group_limit, std::chrono::milliseconds lease) override;
  bool heartbeat(const job_id& id, std::uint64_t fence, std::chrono::milliseconds lease) override;
  bool complete(const job_id& id, std::uint64_t fence, const job_result& result) override;
  bool fail(const job_id& id, std::uint64_t fence, const std::string& error,
            const retry_policy& retry) override;
  // One call to the writer thread: the settlements and the claim share one savepoint, so a
  // failure undoes all of them (store_error), and one commit.
  settle_result settle_and_claim(std::span<const settlement> ended,
                                 const claim_request& next) override;
  std::optional<job_status> status(const job_id& id) override;
  std::size_t requeue_expired(const retry_policy& retry) override;
  std::size_t prune(std::chrono::seconds jobs) override;
  bool requeue_dead(const job_id& id) override;
  bool purge(const job_id& id) override;
  std::size_t depth(const std::string& route) override;
  // The store's file lock keeps every other process out.
  bool exclusive_to_process() const noexcept override { return true; }

  // wal_checkpoint(TRUNCATE) now, on the writer thread. Throws store_error.
  void checkpoint();
  // Transactions that committed enqueues (created or duplicate) so far: with group commit,
  // fewer than the enqueue() calls that made them.
  std::uint64_t enqueue_commits() const noexcept;
  // Transactions of lease writes alone committed without waiting for an fsync (synchronous
  // full only; see "Durability").
  std::uint64_t lease_commits_without_fsync() const noexcept;

  // The schema this build writes (PRAGMA user_version).
  static constexpr int schema_version = 2;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace qos::jobs

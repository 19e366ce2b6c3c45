// The job store on PostgreSQL 15 through libpq, for gateways and consumers on several hosts
// sharing one queue. Thread-safe: calls borrow a connection from a small pool; wait_for_work()
// is served by one listener connection on a thread of its own.
//
// Differences from the embedded store, within the job_store contract:
// - Every time (run_at, leases, retries, retention, key expiry) is the server's clock (now()),
//   never this host's, so hosts with skewed clocks agree on when a lease expires. There is no
//   now_fn: tests that need time to pass use short leases and bounded waits.
// - Enqueues without an idempotency key (the common case) are committed in batches: callers
//   that arrive while enqueue_batches transactions are in flight wait, and the first of them
//   to find a slot free takes every waiting keyless enqueue (up to enqueue_batch_rows) into one
//   transaction on one pooled connection, pipelined in one round trip: one commit and one WAL
//   flush for the whole batch instead of one per enqueue. Every caller still gets its own
//   answer, only after the commit; when the transaction fails, every enqueue of the batch
//   answers `unavailable` and none of it is stored. An enqueue that finds a slot free goes at
//   once: a quiet store adds no wait. A caller waits for its batch however long the database
//   takes (a statement_timeout in the conninfo's options bounds it). With a key, an enqueue
//   is a short transaction of its own.
// - The depth cap is checked row by row in the enqueue's statement, and the rows of a batch
//   see the rows before them in the same transaction, so within a batch the cap is exact.
//   Across concurrent transactions it is checked without a lock: enqueuers of one route
//   committing at once (this process's batches in flight, other processes, keyed enqueues)
//   may exceed max_depth by at most their number. An exact cap would serialize a route's
//   enqueues through their commits' WAL flushes, one at a time. Counting costs up to
//   max_depth index entries, so a process reuses its count for up to a second while its own
//   enqueues since keep it below half the cap; other processes' enqueues within that second
//   may then pass the cap unseen (by what they enqueue in that second).
// - claim() serializes count-and-claim per group with a transaction-level advisory lock, so the
//   group_limit bound holds across every process sharing the database.
// - Run slots (slots()): the group's N as N session-level advisory locks, each holder on a
//   connection of its own, so a consumer can hand a slot from one job to the next without a
//   round trip and lease jobs ahead of it (consumer.hpp). The server frees a holder's slots
//   when its session ends: the process died, the connection broke, or it was silent for its
//   lease (idle_session_timeout), as a stopped process is.
// - On a lost connection (or any failed statement) enqueue() answers `unavailable` and every
//   other call throws store_error, as the contract says (a broken connection is retried once
//   on a fresh one when nothing of the call reached the server). heartbeat()/complete()/fail()
//   return false only when the lease is no longer the token's. last_error() says why the last
//   call failed. A commit whose acknowledgement is lost with the connection is reported as a
//   failure although it may have committed (as with any networked database): an enqueue
//   retried with its idempotency key then comes back `duplicate`, and the consumer checks a
//   refused retry of complete() against status().
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "qos/jobs/job_store.hpp"
#include "qos/jobs/store_error.hpp"

namespace qos::jobs {

struct pg_store_options {
  // A libpq connection string ("host=/run/postgresql dbname=app connect_timeout=2"); give it a
  // connect_timeout, or a host that does not answer blocks a call for libpq's default (forever).
  std::string conninfo;
  // Connections for the calls (wait_for_work() has its own). Keyless enqueues take at most
  // enqueue_batches of them; keyed enqueues and every other call take one each, and callers
  // beyond the pool queue for one in arrival order.
  std::size_t pool_size = 4;
  // Run migrate() in the constructor (throws pg_store_error when it fails).
  bool migrate_on_start = true;
  // Transactions of batched keyless enqueues in flight at once (1..pool_size; clamped). More
  // than one, so that one batch's statements run while another's commit waits for its WAL
  // flush and a slow commit does not hold everyone; few, because each batch in flight splits
  // the waiting callers into smaller transactions that each pay a commit, and the server's
  // CPUs are shared by all of them. Each also holds a pooled connection while it runs.
  std::size_t enqueue_batches = 2;
  // Enqueues per transaction at most: bounds one round trip's size and a transaction's
  // lifetime (and so the wait of the callers in it).
  std::size_t enqueue_batch_rows = 64;
};

// What the batching of keyless enqueues has done so far (tests, metrics).
struct pg_store_stats {
  std::uint64_t enqueue_batches = 0;  // transactions started
  std::uint64_t enqueue_rows = 0;     // enqueues they carried (rows > batches: they shared commits)
  std::size_t enqueue_waiting = 0;    // keyless enqueues waiting for a transaction right now
};

// What the constructor and migrate() throw; a store_error like every other failure.
class pg_store_error : public store_error {
 public:
  using store_error::store_error;
};

class pg_store final : public job_store {
 public:
  explicit pg_store(pg_store_options options);
  pg_store(const pg_store&) = delete;
  pg_store& operator=(const pg_store&) = delete;
  // Waits until the keyless enqueues already waiting or in flight are answered (one that
  // would start meanwhile, a caller's bug, answers `unavailable`), stops the listener thread,
  // closes every connection.
  ~pg_store() override;

  // Creates or upgrades the schema to this build's version; idempotent, safe to run from
  // several processes at once (serialized by an advisory lock). Throws pg_store_error.
  void migrate();
  static constexpr int schema_version = 1;

  enqueue_result enqueue(const job_request& job, const enqueue_options& options) override;
  std::vector<claimed_job> claim(const std::string& group, std::size_t limit,
                                 std::size_t group_limit, std::chrono::milliseconds lease) override;
  bool heartbeat(const job_id& id, std::uint64_t fence, std::chrono::milliseconds lease) override;
  bool complete(const job_id& id, std::uint64_t fence, const job_result& result) override;
  bool fail(const job_id& id, std::uint64_t fence, const std::string& error,
            const retry_policy& retry) override;
  // One transaction in one round trip (a libpq pipeline with one sync): BEGIN, the
  // settlements, the group's lock and the claim, COMMIT. A failure anywhere rolls all of it
  // back (store_error); a broken connection is not retried, since COMMIT may have run.
  settle_result settle_and_claim(std::span<const settlement> ended,
                                 const claim_request& next) override;
  std::optional<job_status> status(const job_id& id) override;
  std::size_t requeue_expired(const retry_policy& retry) override;
  // Returns how many jobs it deleted (keys are not counted). Deletes in batches, one short
  // transaction each. A key outlives a pruned job on purpose: a late retry with it is still
  // recognized (`duplicate`, and its status is then 404), not run a second time.
  std::size_t prune(std::chrono::seconds jobs) override;
  bool requeue_dead(const job_id& id) override;  // attempts start again from 0
  bool purge(const job_id& id) override;         // the dead job and its idempotency keys
  std::size_t depth(const std::string& route) override;
  // Session-level advisory locks on a connection of the holder's own (opened at its first
  // acquire()), with idle_session_timeout = max(lease, 1 s). See job_store.hpp.
  std::unique_ptr<run_slots> slots(const std::string& group,
                                   std::chrono::milliseconds lease) override;

  // Blocks until an enqueue into `group` is notified (true) or `timeout` passes (false). The
  // notification is a hint, never the only way work is found: callers claim() after every
  // return, whatever it says (a notification is lost when the listener's connection drops, or
  // when it is sent between a claim that found nothing and this call's first LISTEN). After the
  // listener reconnects, every group is woken once, since notifications may have been missed.
  bool wait_for_work(const std::string& group, std::chrono::milliseconds timeout);
  // How many times the listener has (re)connected and re-issued its LISTENs (starts it).
  std::uint64_t listener_connects() const;

  // Why the last failing call failed (for logs; never sent to a client).
  std::string last_error() const;

  pg_store_stats stats() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace qos::jobs

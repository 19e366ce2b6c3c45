// The durable job queue behind accept-mode routes (202 Accepted): what a store must do, whatever
// holds it (SQLite embedded, PostgreSQL shared by several hosts). The contract:
//
// - enqueue() returns only after the job is committed (durable as the store's settings say);
//   on any failure it stores nothing and says `unavailable`. A route's queue depth is capped:
//   `full` stores nothing.
// - Idempotency keys are scoped per (route, tenant): the same key with the same payload hash
//   returns the first job's id (`duplicate`), with another payload `conflict`; a key is
//   forgotten after its retention. Concurrent duplicates create exactly one job.
// - claim() hands out at most `limit` jobs of a group, counting every lease of that group held
//   by any process sharing the store, so at most N run at once across all of them (a store
//   with run slots may be asked for N plus the jobs leased ahead: the slots bound what runs).
//   Higher priority first, then oldest run_at. A claim is a lease with a fencing token: heartbeat()
//   extends it, and complete()/fail() are accepted only with the current token (a worker paused
//   past its lease cannot overwrite the result of the re-claimed run).
// - settle_and_claim() is complete()/fail() of every job that ended, then claim(), in one call
//   and, where the store has them, one transaction: a slot freed by a settlement is claimed
//   again without a round trip of its own, and the claim counts the group's leases after the
//   settlements (never before their release is committed, or the bound could be passed).
// - requeue_expired() returns expired leases to the queue (attempt counted), so a crashed
//   worker's job runs again; any live process may call it.
// - fail() retries with capped exponential backoff and jitter (retry_policy); after
//   max_attempts the job is `dead`, kept with its last error until requeued or purged.
// - prune() deletes terminal jobs (succeeded, dead) and keys older than their retention, never
//   a queued or running job.
//
// - Three answers, the same from every store. A call that could not reach or use its
//   database throws store_error (qos/jobs/store_error.hpp): nothing can be concluded from it
//   (a write may or may not have committed when its acknowledgement was lost). Only enqueue()
//   never throws: it answers `unavailable`. heartbeat()/complete()/fail() return false only
//   when the lease is no longer this token's (expired and re-claimed or requeued, or the job
//   finished): a refusal is final, whereas after a store_error the lease may still be ours
//   and the caller tries again (see consumer.hpp). status() returns nullopt only for an
//   unknown (or pruned) id, requeue_dead()/purge() false only for a job that is not dead.
//
// Times are wall-clock (system_clock): they are stored and shared between processes. Every
// call may block on I/O: call it from a blocking pool or a thread of its own, never from a
// reactor or a fiber. Implementations are thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace qos::jobs {

using wall_clock = std::chrono::system_clock;
using wall_time = wall_clock::time_point;
// The store's idea of now; tests inject a manual one.
using now_fn = std::function<wall_time()>;

// Unguessable: 128 random bits, as 32 lowercase hex digits.
using job_id = std::string;

enum class job_state : std::uint8_t { queued, running, succeeded, dead };

// What a 202 stored: the request as the handler will see it.
struct job_request {
  std::string route;   // the accept route's name (its policy, its group)
  std::string group;   // the limit group whose N bounds the consumers
  std::string tenant;  // scopes idempotency keys; empty: none
  std::string method;
  std::string target;                                        // path and query
  std::vector<std::pair<std::string, std::string>> headers;  // those the route keeps
  std::string body;
  int priority = 0;  // 0..15, higher first
  std::optional<std::string> idempotency_key;
  std::string payload_hash;  // of method, target, kept headers and body: a key's reuse check
};

// What the job's handler answered, kept for GET /jobs/{id}.
struct job_result {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

struct enqueue_result {
  enum class kind : std::uint8_t { created, duplicate, conflict, full, unavailable };
  kind result = kind::unavailable;
  job_id id;          // created, duplicate
  std::string error;  // unavailable: why (logged, never sent to the client)
};

struct enqueue_options {
  std::size_t max_depth = 10000;  // queued + running jobs of the route; beyond: full
  std::chrono::seconds key_retention{24 * 3600};
};

struct claimed_job {
  job_id id;
  std::uint64_t fence = 0;  // the lease's token: complete() and fail() must present it
  int attempt = 1;          // 1 on the first run
  wall_time lease_until{};
  job_request request;
};

struct retry_policy {
  int max_attempts = 5;
  std::chrono::milliseconds base{1000};   // first retry after about this long
  std::chrono::milliseconds cap{300000};  // of base * 2^(attempt-1), before the jitter
  double jitter = 0.2;  // ± this fraction, uniformly (capped delays too, so they do not bunch)
};

// How a held job ended, for settle_and_claim(): complete(id, fence, result) or
// fail(id, fence, error, retry).
struct settlement {
  enum class kind : std::uint8_t { complete, fail };
  kind what = kind::complete;
  job_id id;
  std::uint64_t fence = 0;
  job_result result{};   // complete
  std::string error{};   // fail
  retry_policy retry{};  // fail
};

// The claim that follows the settlements: claim(group, limit, group_limit, lease). limit 0:
// settle only.
struct claim_request {
  std::string group;
  std::size_t limit = 0;
  std::size_t group_limit = 0;
  std::chrono::milliseconds lease{30000};
};

struct settle_result {
  // One per settlement, in order: what complete()/fail() would have answered (false: refused,
  // the lease is no longer that token's).
  std::vector<bool> accepted;
  std::vector<claimed_job> claimed;
};

struct job_status {
  job_id id;
  job_state state = job_state::queued;
  int attempts = 0;                  // runs started so far
  std::optional<wall_time> run_at;   // queued: not before
  std::optional<job_result> result;  // succeeded
  std::string last_error;            // dead, or a retry pending
  wall_time created{};
  wall_time finished{};  // succeeded, dead
};

// A group's N as N numbered run slots, for a store that processes share: a holder (one per
// consumer) takes slots, runs one job per slot it holds, and hands a slot from a job that ended
// straight to the next without asking the store, so the bound across processes does not have
// to count leases and a consumer may lease jobs ahead of its slots. Slots are tied to the
// holder's session with the store: when it ends (the process died, the connection broke, or
// the holder made no call for `lease`, as a stopped process would not), the store frees them.
// Holders that want slots share them: share() is a holder's even part, and a holder above it
// gives slots back as their jobs end, so that one holder with work cannot keep every slot.
// Every call may block on I/O; one thread at a time per holder.
class run_slots {
 public:
  virtual ~run_slots() = default;  // gives back every slot held
  // Takes up to `want` more of the slots numbered 0..n-1 that no holder holds; returns how
  // many it took. Taking fewer than `want` makes this holder one that waits for slots (share()
  // counts it) until an acquire() that takes all it asks for (`want` 0 included) or a
  // release(). Throws store_error: it took none, and every slot it held is lost (held() 0).
  virtual std::size_t acquire(std::size_t n, std::size_t want) = 0;
  // Gives back `count` of the slots held, the highest numbers first. Throws store_error: every
  // slot held is lost (held() 0), which frees them as well.
  virtual void release(std::size_t count) = 0;
  // This holder's even part of n slots: n over the holders that hold slots or wait for one,
  // itself included, rounded up. Keeps the session alive: call it more often than every
  // `lease`. Throws store_error: the session ended and every slot held is lost (held() 0);
  // holding none, it loses nothing and answers n.
  virtual std::size_t share(std::size_t n) = 0;
  virtual std::size_t held() const noexcept = 0;
};

class job_store {
 public:
  virtual ~job_store() = default;

  virtual enqueue_result enqueue(const job_request& job, const enqueue_options& options) = 0;

  // Leases up to `limit` runnable jobs of `group`, but never so many that the group's leases
  // across every process exceed `group_limit`.
  virtual std::vector<claimed_job> claim(const std::string& group, std::size_t limit,
                                         std::size_t group_limit,
                                         std::chrono::milliseconds lease) = 0;
  // False: the lease is no longer this token's (expired and re-claimed, or finished).
  // heartbeat(), complete() and fail() throw store_error when the store could not answer.
  virtual bool heartbeat(const job_id& id, std::uint64_t fence,
                         std::chrono::milliseconds lease) = 0;
  virtual bool complete(const job_id& id, std::uint64_t fence, const job_result& result) = 0;
  // Schedules a retry per `retry`, or makes the job dead after its last attempt.
  virtual bool fail(const job_id& id, std::uint64_t fence, const std::string& error,
                    const retry_policy& retry) = 0;

  // The settlements in order, then the claim, which counts the group's leases as the
  // settlements left them. Throws store_error: no answer for any of them (neither accepted nor
  // refused; stores that override this apply all or nothing, or the acknowledgement of all was
  // lost). This default makes the calls one by one, so a store_error may follow settlements
  // that were applied: to a caller that is the same lost acknowledgement.
  virtual settle_result settle_and_claim(std::span<const settlement> ended,
                                         const claim_request& next) {
    settle_result out;
    out.accepted.reserve(ended.size());
    for (const settlement& s : ended) {
      out.accepted.push_back(s.what == settlement::kind::complete
                                 ? complete(s.id, s.fence, s.result)
                                 : fail(s.id, s.fence, s.error, s.retry));
    }
    if (next.limit != 0) {
      out.claimed = claim(next.group, next.limit, next.group_limit, next.lease);
    }
    return out;
  }

  virtual std::optional<job_status> status(const job_id& id) = 0;
  // Expired leases back to queued (or dead when that was the last attempt). Returns how many.
  virtual std::size_t requeue_expired(const retry_policy& retry) = 0;
  // Terminal jobs finished before now - `jobs`; idempotency keys past their retention.
  virtual std::size_t prune(std::chrono::seconds jobs) = 0;

  // Operator actions on dead jobs.
  virtual bool requeue_dead(const job_id& id) = 0;
  virtual bool purge(const job_id& id) = 0;

  // queued + running jobs of a route.
  virtual std::size_t depth(const std::string& route) = 0;

  // True when no other process can claim from this store while it is open (sqlite_store locks
  // its file): the process's own admission bound is then the group's bound everywhere, and a
  // consumer may lease jobs beyond group_limit to have them ready (consumer_options::prefetch).
  virtual bool exclusive_to_process() const noexcept { return false; }

  // A holder of `group`'s run slots for one consumer, or nullptr when the store has none (an
  // exclusive store needs none; without slots a shared store's bound is its leases). `lease`:
  // how long the holder may go without a call before its slots are freed.
  virtual std::unique_ptr<run_slots> slots(const std::string& group,
                                           std::chrono::milliseconds lease) {
    (void)group;
    (void)lease;
    return nullptr;
  }
};

}  // namespace qos::jobs

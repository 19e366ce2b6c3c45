// The consumer of one limit group's durable job queue: it claims queued jobs from a job_store
// and runs each through the same admission lifecycle as a guarded request of its route, so a
// route's synchronous and queued traffic share one N. The contract:
//
// - Bound. The consumer claims only while the group has free permits here (limit - in use -
//   waiting - reserved, over the route's cost), and asks the store for at most that many with
//   group_limit = the group's current limit, which the store counts over every process sharing
//   it. A claimed job is then submitted to admission under its route's policy (its priority is
//   the request's level), takes a permit like a request, and runs its handler on a fiber or the
//   group's blocking pool, within max_exec. A blocking job, whose verdict nobody awaits before
//   its end, runs on its pool thread from its permit to its verdict with no fiber waiting for
//   it, and is judged against max_exec when its handler returns (transport::answer_awaited).
//   So synchronous requests and jobs of one group never
//   run more than N at once here, and jobs never hold more than N leases across processes
//   (unless they lease ahead, below). A job's lease lasts until the store settles it: its
//   permit is free from the end of its handler, so a claim in between may lease one job more
//   than the free permits while the store's count of leases keeps the N.
//   Queued work runs in the group's spare capacity: a permit released to a parked synchronous
//   request is never free for a claim, so a burst of synchronous traffic has precedence and the
//   queue waits (polled every poll_interval, and at once whenever one of its jobs ends).
// - Leasing ahead. With a store no other process can claim from (exclusive_to_process():
//   sqlite_store), admission's N is the only bound there is, and the consumer also leases
//   `prefetch` jobs beyond the free permits (default: one more round, the group's limit;
//   group_limit is raised by as many). They wait in admission like parked requests, so a permit
//   a job gives back goes at once to the next one, instead of waiting for the store to settle
//   the job that ended and claim another (about 2 ms per job when the cores are busy: 4 % of a
//   50 ms job's rate). They show as running in the store meanwhile (about one round at most),
//   and synchronous requests that arrive meanwhile queue behind them (FIFO within a priority).
//   None before the group has measured its service time, nor while a route's max_wait is
//   under two service times (the job would time out waiting and be given back, spending an
//   attempt). Off with a rate (the bucket paces claims) or prefetch = 0.
// - Run slots. With a store that processes share and that has run slots (store.slots():
//   pg_store), leases are no longer the bound: the group's N is N slots that the processes'
//   consumers hold, and a job enters admission only on a slot held here. The consumer takes
//   slots when it has work and free permits, gives back those no job will use at the end of
//   each round, and leases up to `prefetch` jobs (at most two per slot held: a process with
//   its part of the slots keeps about one round of N ahead) ahead: they wait here, not in
//   admission, and the end of a job hands its slot straight to the first of them on the thread
//   where it ended, so across processes at most N handlers run while the next jobs are already
//   leased (group_limit = 3 N counts the leases: N running, at most 2 N ahead). The slots' session
//   is checked every min(lease/3, 1 s); when the store ended it (a restart, a broken connection, or
//   this process silent for a whole lease, e.g. stopped), the slots are lost: jobs running on them
//   finish without handing them on, and the ready ones wait for slots taken again. Until the
//   loss is noticed (min(lease/3, 1 s) at most) jobs that end still hand their slots on, so another
//   process that took the freed slots may run up to N more meanwhile. Slots are the bound
//   whatever `prefetch` and the rate say (so that every process sharing the store counts the
//   same way); with prefetch = 0 or a rate nothing is leased ahead of them.
// - Results. The handler's response (any status) is the job's result: complete(). A handler
//   that throws, or that runs past max_exec, fails this attempt: fail() with `retry` (capped
//   exponential backoff, dead after max_attempts). The store is told only once the handler
//   really ended (admission's done()), so a job is never queued again while its handler still
//   runs here; its permit is back by then. Every job that ended since the loop's last round and
//   the claim of the permits free now go to the store in one call (settle_and_claim(): one
//   transaction and one commit in both stores), so a freed slot waits for one commit before its
//   next job, however many ended with it.
// - Fallbacks (no permit within max_wait, queue full, shutdown, executor refused, or stopping
//   before the handler started): the job did not run, and is given back with fail() under a
//   retry policy that never makes it dead (max_attempts unlimited, a fixed `fallback_delay`).
//   The store contract has no "release": its attempt count went up at the claim and stays up,
//   so a fallback spends one of the job's attempts; claiming only with free permits (and one
//   round ahead) keeps fallbacks to races with synchronous traffic and to stopping. Lease expiry
//   would do the same later, and could make the job dead.
// - Leases. Every job held here (waiting for its permit or running) is heartbeaten every
//   lease/3. A heartbeat, complete() or fail() refused (false) means the job was fenced out
//   (its lease expired and it may be running elsewhere): logged once and counted in
//   fenced_out(); the store keeps the other run's result. Every consumer calls
//   requeue_expired() every requeue_interval, so a crashed process's jobs run again
//   (attempts + 1).
// - Store without an answer (a call throws store_error): not a refusal, the lease may still be
//   ours. A failed heartbeat is tried again at the next beat. A result (or a failure, or a
//   give-back) that could not be stored is kept and stored again every min(lease/3, 1 s) while
//   the lease is heartbeaten, so a short outage of the store neither loses a finished job's
//   result nor runs the job a second time. When a retry is refused after a try that got no
//   answer, the store's status() says whether that earlier try committed after all (its
//   acknowledgement lost): the job is this run's if its attempts are unchanged. After a whole
//   lease without an answer the result is dropped (counted in abandoned()) and the job left
//   to lease expiry, as if this process had crashed: failing it back is impossible without the
//   store, and the re-run after expiry is fenced against this one.
// - Rate. Optionally a token bucket (jobs/s, burst) limits claims. Priorities apply to
//   claiming (the store hands out higher priority first).
// - Wake-ups. The loop claims again at once after a full claim or when a job ends, after
//   poll_interval otherwise; `wait_for_work` (e.g. pg_store::wait_for_work) may wake it early.
// - Spread over processes. One that ends a job hands its run slot to the next job it leased
//   ahead, so a slot it holds never shows as free while it has work. With run slots, the
//   processes that hold slots or wait for one share them evenly instead (run_slots::share):
//   each checks its part every min(lease/3, 1 s) while it holds slots, and gives back those
//   above it as their jobs end. A process that starts while another holds every slot runs
//   its part within about a second; when it leaves, the others take its slots back within
//   the same. Without run slots (a shared store that has none) a process settles an ended job
//   and claims the freed lease in one transaction, so another finds a lease free only when a
//   holder has no job for it or the queue runs dry: the group's N holds across processes, the
//   spread of the work is not even.
// - Stop. stop(grace) stops claiming; jobs not started yet are given back (as above); running
//   handlers get `grace` to end, their results stored and their leases heartbeaten meanwhile.
//   Jobs still running after it are left to lease expiry, not failed back: failing one back
//   would let another process start a second run while this one still runs, whereas after
//   expiry the store re-runs it and fences this run's late result out. The late results are
//   dropped (counted in abandoned()).
//
// Store calls happen on the consumer's own thread only (the store may block on I/O), never on
// a fiber or in a handler. Construct after the admission (qos::runtime) and stop before it is
// drained; the store must outlive stop(). Thread-safe: stop(), poke() and the counters may be
// called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "qos/admission/admission.hpp"
#include "qos/admission/transport.hpp"
#include "qos/core/clock.hpp"
#include "qos/jobs/job_store.hpp"

namespace qos::jobs {

// A job's handler: its response is the stored result; throw to fail this attempt. Runs where
// its route's handler_kind says (a fiber: fiber-aware waits only; blocking: the group's pool).
using job_handler = std::function<response(const claimed_job&)>;

struct job_route {
  std::string name;  // a route of the admission, in the consumer's group
  job_handler handler;
  handler_kind kind = handler_kind::blocking;  // fiber or blocking (reactor is refused)
};

// Claims per second, and the most claimed at once after a quiet spell.
struct steady_rate {
  double per_second = 0;  // > 0
  double burst = 1;       // >= 1
};

struct consumer_options {
  std::string group;
  std::vector<job_route> routes;
  std::chrono::milliseconds lease{30000};  // heartbeaten every lease/3
  std::chrono::milliseconds poll_interval{1000};
  std::chrono::milliseconds requeue_interval{0};  // 0: lease/2
  retry_policy retry{};
  std::chrono::milliseconds fallback_delay{1000};  // a job given back runs again after this
  std::optional<steady_rate> rate{};
  // Jobs leased ahead of the group's free permits (with run slots: of the slots held), so that
  // a job's end starts the next at once instead of after a store round trip (settle and
  // claim). Used only with a store exclusive to this process (sqlite_store) or one with run
  // slots (pg_store), no rate, and routes whose max_wait is at least two of the group's service
  // times; nullopt: as many as the group's current limit; 0: none.
  std::optional<std::size_t> prefetch{};
  // Blocks until work for the group is announced (true) or the timeout passes; called on a
  // thread of its own in a loop, with timeouts of at most 200 ms so that stop() is prompt.
  std::function<bool(const std::string& group, std::chrono::milliseconds timeout)> wait_for_work{};
  // The clock of the heartbeat schedule and the token bucket; tests inject a manual one.
  std::function<time_point()> now{};
};

// A token bucket on an explicit clock: starts full. Not thread-safe.
class token_bucket {
 public:
  token_bucket(steady_rate rate, time_point now);
  // Whole tokens available at `now`.
  std::size_t available(time_point now);
  void take(std::size_t n, time_point now);
  // How long from `now` until one token is available (zero when one is).
  duration until_one(time_point now);

 private:
  void refill(time_point now);
  steady_rate rate_;
  double tokens_;
  time_point last_;
};

class consumer {
 public:
  // Throws std::invalid_argument for an unknown group, a route not in admission or not in the
  // group, a reactor handler, a missing handler, or durations/rates out of range. Starts the
  // consumer's thread (and the wake-up thread with wait_for_work).
  consumer(job_store& store, admission& adm, consumer_options options);
  consumer(const consumer&) = delete;
  consumer& operator=(const consumer&) = delete;
  ~consumer();  // stop(0) if not stopped yet

  // See the contract. Returns true when no job of this consumer is left running (every result
  // stored or given back). Idempotent; only the first call waits.
  bool stop(std::chrono::milliseconds grace);
  // Wakes the loop now (a job was enqueued here; a test moved its clock).
  void poke() noexcept;

  // Counters (monotonic, for metrics).
  std::uint64_t claimed() const noexcept { return counters_->claimed; }
  std::uint64_t succeeded() const noexcept { return counters_->succeeded; }
  std::uint64_t failed() const noexcept { return counters_->failed; }          // threw, or max_exec
  std::uint64_t given_back() const noexcept { return counters_->given_back; }  // fallbacks
  std::uint64_t fenced_out() const noexcept { return counters_->fenced_out; }
  std::uint64_t heartbeats() const noexcept { return counters_->heartbeats; }
  std::uint64_t requeued() const noexcept { return counters_->requeued; }  // expired leases
  // Left at stop, or whose result the store could not take within a lease.
  std::uint64_t abandoned() const noexcept { return counters_->abandoned; }
  // Jobs held now (waiting for a permit, running, or ended and not yet settled in the store).
  // A job leaves held() before succeeded(), fenced_out() or abandoned() counts it.
  std::size_t held() const noexcept { return counters_->held; }
  // Run slots held now (a store with run slots; 0 otherwise), as of the loop's last round.
  std::size_t run_slots_held() const noexcept { return counters_->run_slots; }

  struct counters {
    std::atomic<std::uint64_t> claimed{0}, succeeded{0}, failed{0}, given_back{0}, fenced_out{0},
        heartbeats{0}, requeued{0}, abandoned{0};
    std::atomic<std::size_t> held{0};
    std::atomic<std::size_t> run_slots{0};
  };
  struct shared;  // what the jobs' transports share with the loop

 private:
  void loop();
  void watch();

  job_store& store_;
  admission& adm_;
  consumer_options options_;
  std::shared_ptr<counters> counters_;
  std::shared_ptr<shared> shared_;
  std::mutex stop_mutex_;
  bool stopped_ = false;  // guarded by stop_mutex_
  bool all_done_ = true;  // written by the loop before it ends
  std::thread thread_;
  std::thread watcher_;
};

}  // namespace qos::jobs

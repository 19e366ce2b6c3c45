// The job consumer against an in-memory store and a real admission (executor, limit group,
// blocking pool): the shared N bound with synchronous requests, results, failures, fallbacks,
// heartbeats and fencing on a manual clock, the token bucket, and stop(grace); and the store
// calls of the loop counted on their way to a real SQLite store.
#include "qos/jobs/consumer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

#include <boost/fiber/operations.hpp>

#include "job_test_support.hpp"
#include "qos/jobs/sqlite_store.hpp"
#include "support/eventually.hpp"
#include "support/memory_job_store.hpp"

namespace qos::jobs {
namespace {

using namespace std::chrono_literals;
using qos::test::eventually;
using qos::test::memory_job_store;

// The clock the consumer's heartbeat schedule and token bucket read: moves only when told.
struct shared_clock {
  std::atomic<time_point::rep> ticks{0};
  time_point now() const { return time_point(duration(ticks.load())); }
  void advance(duration d) { ticks += d.count(); }
};

struct fixture {
  explicit fixture(std::size_t n, duration max_wait = 5s,
                   std::optional<duration> max_exec = std::nullopt)
      : exec({.threads = 2, .inbox = 1024}),
        adm({{.name = "db", .limiter = {.max_concurrent = n, .max_queue = 100}}},
            {{.name = "orders", .group = "db", .max_wait = max_wait, .max_exec = max_exec}}, exec),
        group(*adm.find_group("db")) {}
  ~fixture() { exec.stop(); }

  job_id add(std::string body = "{}", int priority = 0) {
    return store.add({.route = "orders",
                      .group = "db",
                      .method = "POST",
                      .target = "/orders",
                      .body = std::move(body),
                      .priority = priority});
  }
  consumer_options options(job_handler h, handler_kind kind = handler_kind::blocking) {
    return {.group = "db",
            .routes = {{.name = "orders", .handler = std::move(h), .kind = kind}},
            .lease = 3000ms,
            .poll_interval = 5ms,
            .retry = {.max_attempts = 3, .base = 0ms, .cap = 0ms, .jitter = 0},
            .fallback_delay = 0ms};
  }

  memory_job_store store;
  executor exec;
  admission adm;
  limit_group& group;
};

// Counts handlers running at once, and the most ever seen.
struct gauge {
  std::atomic<int> now{0}, most{0};
  void enter() {
    const int n = ++now;
    int m = most.load();
    while (n > m && !most.compare_exchange_weak(m, n)) {
    }
  }
  void leave() { --now; }
};

TEST(consumer_test, success_completes_with_the_handlers_result) {
  fixture f(2);
  const job_id id = f.add("hello");
  consumer c(f.store, f.adm, f.options([](const claimed_job& j) {
    return response{.status = 201,
                    .body = "done:" + j.request.body + ":" + std::to_string(j.attempt),
                    .content_type = "text/plain"};
  }));
  ASSERT_TRUE(eventually([&] { return f.store.count(job_state::succeeded) == 1; }));
  const auto j = f.store.get(id);
  ASSERT_TRUE(j.result.has_value());
  EXPECT_EQ(j.result->status, 201);
  EXPECT_EQ(j.result->body, "done:hello:1");
  ASSERT_EQ(j.result->headers.size(), 1u);
  EXPECT_EQ(j.result->headers[0].first, "Content-Type");
  EXPECT_EQ(j.result->headers[0].second, "text/plain");
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(c.claimed(), 1u);
  EXPECT_EQ(c.succeeded(), 1u);
  EXPECT_EQ(c.failed(), 0u);
  EXPECT_EQ(c.held(), 0u);
  EXPECT_EQ(f.group.stats().in_use, 0u);
}

TEST(consumer_test, a_throw_fails_the_attempt_with_the_retry_policy_and_the_retry_runs) {
  fixture f(1);
  const job_id id = f.add();
  std::atomic<int> runs{0};
  consumer c(f.store, f.adm,
             f.options(
                 [&](const claimed_job& j) {
                   ++runs;
                   if (j.attempt == 1) throw std::runtime_error("backend down");
                   return response{.body = "ok"};
                 },
                 handler_kind::fiber));
  ASSERT_TRUE(eventually([&] { return f.store.count(job_state::succeeded) == 1; }));
  EXPECT_TRUE(c.stop(1s));
  const auto fails = f.store.fail_calls();
  ASSERT_EQ(fails.size(), 1u);
  EXPECT_EQ(fails[0].id, id);
  EXPECT_EQ(fails[0].error, "backend down");
  EXPECT_EQ(fails[0].retry.max_attempts, 3);  // the consumer's retry policy, not the give-back
  EXPECT_EQ(f.store.get(id).attempts, 2);
  EXPECT_EQ(runs.load(), 2);
  EXPECT_EQ(c.failed(), 1u);
  EXPECT_EQ(c.succeeded(), 1u);
}

// A blocking job runs to its end on its pool thread and is judged against max_exec when it
// returns; a fiber job has a timer. Either way an overrun is a failed attempt, retried.
TEST(consumer_test, a_job_that_runs_past_max_exec_fails_its_attempt_on_either_kind) {
  for (const handler_kind kind : {handler_kind::blocking, handler_kind::fiber}) {
    SCOPED_TRACE(kind == handler_kind::blocking ? "blocking" : "fiber");
    fixture f(1, 5s, 30ms);
    const job_id id = f.add();
    consumer c(f.store, f.adm,
               f.options(
                   [](const claimed_job& j) {
                     if (j.attempt == 1) boost::this_fiber::sleep_for(120ms);
                     return response{.body = "attempt " + std::to_string(j.attempt)};
                   },
                   kind));
    ASSERT_TRUE(eventually([&] { return f.store.count(job_state::succeeded) == 1; }));
    EXPECT_TRUE(c.stop(1s));
    const auto fails = f.store.fail_calls();
    ASSERT_EQ(fails.size(), 1u);
    EXPECT_EQ(fails[0].error, "ran past max_exec");
    const auto j = f.store.get(id);
    EXPECT_EQ(j.attempts, 2);
    ASSERT_TRUE(j.result.has_value());
    EXPECT_EQ(j.result->body, "attempt 2");
    EXPECT_EQ(c.failed(), 1u);
    EXPECT_EQ(c.succeeded(), 1u);
    EXPECT_EQ(f.group.stats().in_use, 0u);
  }
}

TEST(consumer_test, a_job_that_always_throws_ends_dead_after_max_attempts) {
  fixture f(1);
  const job_id id = f.add();
  consumer c(f.store, f.adm,
             f.options([](const claimed_job&) -> response { throw std::runtime_error("no"); }));
  ASSERT_TRUE(eventually([&] { return f.store.count(job_state::dead) == 1; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(f.store.get(id).attempts, 3);
  EXPECT_EQ(f.store.get(id).last_error, "no");
  EXPECT_EQ(c.failed(), 3u);
}

TEST(consumer_test, never_more_than_n_jobs_at_once) {
  fixture f(3);
  for (int i = 0; i < 30; ++i) f.add();
  gauge g;
  consumer c(f.store, f.adm, f.options([&](const claimed_job&) {
    g.enter();
    std::this_thread::sleep_for(2ms);
    g.leave();
    return response{};
  }));
  ASSERT_TRUE(eventually([&] { return f.store.count(job_state::succeeded) == 30; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_LE(g.most.load(), 3);
  EXPECT_GE(g.most.load(), 2);  // it does run them side by side
  EXPECT_LE(f.store.max_leased, 3u);
  EXPECT_EQ(c.succeeded(), 30u);
}

// Run slots in memory, shared by the holders of one test as a database's sessions would share
// its advisory locks. kill() ends a holder's "session": its slots are free at once, and it
// learns of it at its next call.
class slot_table {
 public:
  class holder final : public run_slots {
   public:
    explicit holder(slot_table& t) : t_(t) {
      const std::lock_guard lock(t_.m_);
      t_.holders_.push_back(this);
    }
    ~holder() override {
      const std::lock_guard lock(t_.m_);
      free_all();
      std::erase(t_.holders_, this);
    }
    std::size_t acquire(std::size_t n, std::size_t want) override {
      const std::lock_guard lock(t_.m_);
      if (dead_) reconnect();
      std::size_t got = 0;
      for (std::size_t i = 0; i < n && got < want; ++i) {
        if (t_.taken_.emplace(i, this).second) {
          held_.push_back(i);
          ++got;
        }
      }
      t_.most_ = std::max(t_.most_, t_.taken_.size());
      waiting_ = got < want;
      return got;
    }
    void release(std::size_t count) override {
      const std::lock_guard lock(t_.m_);
      if (dead_) {
        reconnect();
        throw store_error("run slots: session ended");
      }
      std::sort(held_.begin(), held_.end());
      for (; count != 0 && !held_.empty(); --count) {
        t_.taken_.erase(held_.back());
        held_.pop_back();
      }
      waiting_ = false;
    }
    std::size_t share(std::size_t n) override {
      const std::lock_guard lock(t_.m_);
      if (dead_) {
        reconnect();
        throw store_error("run slots: session ended");
      }
      std::size_t holders = 0;
      for (const holder* h : t_.holders_) {
        if (h == this || !h->held_.empty() || h->waiting_) ++holders;
      }
      return (n + holders - 1) / holders;
    }
    std::size_t held() const noexcept override {
      const std::lock_guard lock(t_.m_);
      return held_.size();
    }

   private:
    friend class slot_table;
    void free_all() {
      for (const std::size_t i : held_) t_.taken_.erase(i);
      held_.clear();
      waiting_ = false;
    }
    void reconnect() { dead_ = false; }
    slot_table& t_;
    std::vector<std::size_t> held_;
    bool waiting_ = false;  // took fewer than it asked for at its last acquire()
    bool dead_ = false;
  };

  // Every holder's session ends.
  void kill_all() {
    const std::lock_guard lock(m_);
    for (holder* h : holders_) {
      h->free_all();
      h->dead_ = true;
    }
  }
  std::size_t taken() const {
    const std::lock_guard lock(m_);
    return taken_.size();
  }
  std::size_t most() const {
    const std::lock_guard lock(m_);
    return most_;
  }
  // How many slots each holder holds now, fewest first.
  std::vector<std::size_t> split() const {
    const std::lock_guard lock(m_);
    std::vector<std::size_t> out;
    for (const holder* h : holders_) out.push_back(h->held_.size());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  mutable std::mutex m_;
  std::map<std::size_t, holder*> taken_;  // slot → its holder
  std::vector<holder*> holders_;
  std::size_t most_ = 0;
};

// Counts the store calls on their way to another store, keeps the group's lease count as the
// answers change it (one consumer, no expiry: every lease is its), and can hold
// requeue_expired() (the loop's call when nothing else is due) until the test lets it go.
class counting_store final : public job_store {
 public:
  struct settle_call {
    std::size_t ended = 0;
    std::size_t limit = 0;
    std::size_t claimed = 0;
  };

  // `exclusive`: says it is this process's alone, as sqlite_store does (the consumer leases
  // ahead then).
  // `slots`: offers run slots from it, as a store that processes share (pg_store) does.
  explicit counting_store(job_store& inner, bool exclusive = false, slot_table* slots = nullptr)
      : inner_(inner), exclusive_(exclusive), slots_(slots) {}

  bool exclusive_to_process() const noexcept override { return exclusive_; }
  std::unique_ptr<run_slots> slots(const std::string&, std::chrono::milliseconds) override {
    if (slots_ == nullptr) return nullptr;
    return std::make_unique<slot_table::holder>(*slots_);
  }

  settle_result settle_and_claim(std::span<const settlement> ended,
                                 const claim_request& next) override {
    wait_if(held_call::settle_and_claim);
    settle_result r = inner_.settle_and_claim(ended, next);
    const std::lock_guard lock(m_);
    calls_.push_back({ended.size(), next.limit, r.claimed.size()});
    leases_ -= static_cast<std::size_t>(std::count(r.accepted.begin(), r.accepted.end(), true));
    leased(r.claimed.size());
    return r;
  }
  std::vector<claimed_job> claim(const std::string& group, std::size_t limit,
                                 std::size_t group_limit,
                                 std::chrono::milliseconds lease) override {
    auto r = inner_.claim(group, limit, group_limit, lease);
    const std::lock_guard lock(m_);
    ++separate_;
    leased(r.size());
    return r;
  }
  bool complete(const job_id& id, std::uint64_t fence, const job_result& result) override {
    const bool ok = inner_.complete(id, fence, result);
    const std::lock_guard lock(m_);
    ++separate_;
    if (ok) --leases_;
    return ok;
  }
  bool fail(const job_id& id, std::uint64_t fence, const std::string& error,
            const retry_policy& retry) override {
    const bool ok = inner_.fail(id, fence, error, retry);
    const std::lock_guard lock(m_);
    ++separate_;
    if (ok) --leases_;
    return ok;
  }
  std::size_t requeue_expired(const retry_policy& retry) override {
    wait_if(held_call::requeue_expired);
    return inner_.requeue_expired(retry);
  }
  enqueue_result enqueue(const job_request& job, const enqueue_options& options) override {
    return inner_.enqueue(job, options);
  }
  bool heartbeat(const job_id& id, std::uint64_t fence, std::chrono::milliseconds lease) override {
    return inner_.heartbeat(id, fence, lease);
  }
  std::optional<job_status> status(const job_id& id) override { return inner_.status(id); }
  std::size_t prune(std::chrono::seconds jobs) override { return inner_.prune(jobs); }
  bool requeue_dead(const job_id& id) override { return inner_.requeue_dead(id); }
  bool purge(const job_id& id) override { return inner_.purge(id); }
  std::size_t depth(const std::string& route) override { return inner_.depth(route); }

  enum class held_call : std::uint8_t { none, requeue_expired, settle_and_claim };
  // The next call of that kind waits for release().
  void hold(held_call which = held_call::requeue_expired) {
    const std::lock_guard lock(m_);
    hold_ = which;
  }
  // Whether the loop is waiting in the held call (within 10 s).
  bool wait_held() {
    std::unique_lock lock(m_);
    return cv_.wait_for(lock, 10s, [&] { return held_; });
  }
  void release() {
    {
      const std::lock_guard lock(m_);
      hold_ = held_call::none;
    }
    cv_.notify_all();
  }

  std::vector<settle_call> calls() {
    const std::lock_guard lock(m_);
    return calls_;
  }
  std::size_t separate_calls() {
    const std::lock_guard lock(m_);
    return separate_;
  }
  std::size_t max_leases() {
    const std::lock_guard lock(m_);
    return max_leases_;
  }
  std::size_t leases() {
    const std::lock_guard lock(m_);
    return leases_;
  }

 private:
  void wait_if(held_call which) {
    std::unique_lock lock(m_);
    if (hold_ != which) return;
    held_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return hold_ != which; });
    held_ = false;
  }
  void leased(std::size_t n) {
    leases_ += n;
    max_leases_ = std::max(max_leases_, leases_);
  }

  job_store& inner_;
  const bool exclusive_;
  slot_table* const slots_;
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<settle_call> calls_;  // guarded by m_, and so is everything below
  std::size_t separate_ = 0;        // claim(), complete() and fail() calls
  std::size_t leases_ = 0;
  std::size_t max_leases_ = 0;
  held_call hold_ = held_call::none;
  bool held_ = false;
};

// `n` orders in the store; false when one was not created.
bool enqueue_orders(job_store& store, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    if (store.enqueue(test::order(std::to_string(i)), {}).result != enqueue_result::kind::created)
      return false;
  }
  return true;
}

// N jobs that end together cost one store call: their settlements and the claim of the N
// slots they freed, not N completions and a claim. The loop is held inside a store call while
// they end, so that their verdicts are all waiting when it comes back.
TEST(consumer_test, jobs_that_end_together_are_settled_with_the_next_claim_in_one_store_call) {
  constexpr std::size_t n = 4;
  fixture f(n);
  test::temp_dir dir;
  sqlite_store db({.path = dir.file("jobs.db")});
  counting_store store(db);
  ASSERT_TRUE(enqueue_orders(store, 3 * n));
  shared_clock clk;
  gauge g;
  std::atomic<bool> hold{true};
  auto o = f.options([&](const claimed_job&) {
    g.enter();
    const auto until = clock::now() + 10s;
    while (hold.load() && clock::now() < until) std::this_thread::sleep_for(1ms);
    g.leave();
    return response{.body = "done"};
  });
  o.now = [&] { return clk.now(); };
  o.requeue_interval = 10ms;  // on clk: due only when the test moves it
  consumer c(store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return g.now.load() == static_cast<int>(n); }));

  store.hold();
  clk.advance(10ms);
  c.poke();
  ASSERT_TRUE(store.wait_held());
  const std::size_t before = store.calls().size();
  hold = false;
  // Every job's admission has ended (its run on the pool returned): its verdict is posted.
  ASSERT_TRUE(eventually([&] { return f.exec.live() == 0 && f.group.pool().busy() == 0; }));
  store.release();

  ASSERT_TRUE(eventually([&] { return c.succeeded() == 3 * n; }));
  EXPECT_TRUE(c.stop(1s));
  const auto calls = store.calls();
  ASSERT_GT(calls.size(), before);
  EXPECT_EQ(calls[before].ended, n);
  EXPECT_EQ(calls[before].limit, n);
  EXPECT_EQ(calls[before].claimed, n);
  std::size_t settled = 0;
  for (const auto& call : calls) settled += call.ended;
  EXPECT_EQ(settled, 3 * n);
  EXPECT_EQ(store.separate_calls(), 0u);  // no complete(), fail() or claim() of their own
  EXPECT_LE(g.most.load(), static_cast<int>(n));
  EXPECT_EQ(g.most.load(), static_cast<int>(n));  // the bound was reached, and held
  EXPECT_LE(store.max_leases(), n);
  EXPECT_EQ(db.depth("orders"), 0u);
  EXPECT_EQ(c.claimed(), 3 * n);
  EXPECT_EQ(c.fenced_out(), 0u);
}

// A handler whose second job holds its permit until the test ends it: the job leased behind it
// waits meanwhile. Counts the jobs started and the most running at once.
struct second_job_held {
  job_handler handler() {
    return [this](const claimed_job&) {
      g.enter();
      const int nth = ++started;
      const auto until = clock::now() + 10s;
      while (nth == 2 && hold.load() && clock::now() < until) std::this_thread::sleep_for(1ms);
      g.leave();
      return response{.body = "done"};
    };
  }
  // Ends the second job while the store holds its settle-and-claim: the third starts before the
  // store answers (on the permit, or the run slot, the second hands on).
  void end_second_while_the_store_settles(counting_store& store) {
    store.hold(counting_store::held_call::settle_and_claim);
    hold = false;
    ASSERT_TRUE(store.wait_held());  // settling the second: no answer until release()
    ASSERT_TRUE(eventually([&] { return started.load() == 3; }));
    store.release();
  }
  gauge g;
  std::atomic<int> started{0};
  std::atomic<bool> hold{true};
};

// With a store no other process can claim from, the consumer leases one round ahead (once the
// group has a service time): the job after the one that holds the permit waits in admission,
// and starts when that one ends, while the store is still settling it. Never more than N run;
// leases stay within N + prefetch.
TEST(consumer_test, with_a_store_of_its_own_the_next_job_starts_before_the_store_answers) {
  fixture f(1);
  test::temp_dir dir;
  sqlite_store db({.path = dir.file("jobs.db")});
  counting_store store(db, /*exclusive=*/true);
  second_job_held jobs;
  consumer c(store, f.adm, f.options(jobs.handler()));
  // The first job gives the group its service time; nothing was leased ahead before it.
  ASSERT_TRUE(enqueue_orders(store, 1));
  ASSERT_TRUE(eventually([&] { return c.succeeded() == 1; }));
  EXPECT_EQ(store.max_leases(), 1u);

  ASSERT_TRUE(enqueue_orders(store, 3));
  // The second runs; the third is leased too, waiting for the one permit.
  ASSERT_TRUE(eventually([&] { return jobs.started.load() == 2 && store.max_leases() == 2; }));
  EXPECT_EQ(f.group.stats().in_use, 1u);
  jobs.end_second_while_the_store_settles(store);

  ASSERT_TRUE(eventually([&] { return c.succeeded() == 4; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(jobs.g.most.load(), 1);
  EXPECT_LE(store.max_leases(), 2u);
  EXPECT_EQ(c.given_back(), 0u);
  EXPECT_EQ(db.depth("orders"), 0u);
}

// A job leased ahead waits about one service time: with a max_wait under two of them it would
// time out and be given back, so nothing is leased ahead.
TEST(consumer_test, no_job_is_leased_ahead_when_max_wait_is_under_two_service_times) {
  fixture f(1, 20ms);
  test::temp_dir dir;
  sqlite_store db({.path = dir.file("jobs.db")});
  counting_store store(db, /*exclusive=*/true);
  ASSERT_TRUE(enqueue_orders(store, 6));
  consumer c(store, f.adm, f.options([&](const claimed_job&) {
    std::this_thread::sleep_for(15ms);
    return response{.body = "done"};
  }));
  ASSERT_TRUE(eventually([&] { return c.succeeded() == 6; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(store.max_leases(), 1u);
  EXPECT_EQ(c.given_back(), 0u);
}

// prefetch 0, or a store other processes share: leases never exceed N.
TEST(consumer_test, without_prefetch_leases_stay_within_n) {
  fixture f(2);
  test::temp_dir dir;
  sqlite_store db({.path = dir.file("jobs.db")});
  counting_store store(db, /*exclusive=*/true);
  ASSERT_TRUE(enqueue_orders(store, 12));
  auto o = f.options([&](const claimed_job&) {
    std::this_thread::sleep_for(2ms);
    return response{.body = "done"};
  });
  o.prefetch = 0;
  consumer c(store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return c.succeeded() == 12; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_LE(store.max_leases(), 2u);
  EXPECT_EQ(store.max_leases(), 2u);
}

// With a store other processes share, run slots are the bound: the job behind a running one is
// leased ahead and starts when that one ends, on the slot it hands on, before the store has
// answered the loop's settle-and-claim.
TEST(consumer_test, with_run_slots_the_next_job_starts_before_the_store_answers) {
  fixture f(1);
  test::temp_dir dir;
  sqlite_store db({.path = dir.file("jobs.db")});
  slot_table slots;
  counting_store store(db, /*exclusive=*/false, &slots);
  second_job_held jobs;
  consumer c(store, f.adm, f.options(jobs.handler()));
  ASSERT_TRUE(enqueue_orders(store, 1));
  ASSERT_TRUE(eventually([&] { return c.succeeded() == 1; }));
  EXPECT_EQ(store.max_leases(), 1u);
  // Idle, the process gives its slot back for others to take.
  ASSERT_TRUE(eventually([&] { return slots.taken() == 0; }));

  ASSERT_TRUE(enqueue_orders(store, 3));
  ASSERT_TRUE(eventually([&] { return jobs.started.load() == 2 && store.max_leases() == 2; }));
  EXPECT_EQ(slots.taken(), 1u);
  EXPECT_TRUE(eventually([&] { return c.run_slots_held() == 1; }));
  jobs.end_second_while_the_store_settles(store);

  ASSERT_TRUE(eventually([&] { return c.succeeded() == 4; }));
  ASSERT_TRUE(eventually([&] { return slots.taken() == 0; }));
  EXPECT_TRUE(eventually([&] { return c.run_slots_held() == 0; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(jobs.g.most.load(), 1);
  EXPECT_EQ(slots.most(), 1u);
  // The claim's cap with run slots, 3 N: one running, one leased ahead (prefetch auto: N), and
  // one whose handler ended while its settlement had not reached the store yet.
  EXPECT_LE(store.max_leases(), 3u);
  EXPECT_EQ(c.given_back(), 0u);
  EXPECT_EQ(db.depth("orders"), 0u);
}

// Two processes, each with its admission of N and its view of one store, sharing run slots.
struct two_processes {
  explicit two_processes(std::size_t n) : a(n), b(n) {}
  auto parts() { return std::tie(a, b, db, slots, store_a, store_b); }
  fixture a, b;
  test::temp_dir dir;
  sqlite_store db{{.path = dir.file("jobs.db")}};
  slot_table slots;
  counting_store store_a{db, false, &slots}, store_b{db, false, &slots};
};

// Two processes' consumers (two admissions of N each) sharing a store and its slots: each
// leases ahead, and never more than N run at once across both.
TEST(consumer_test, consumers_sharing_run_slots_never_run_more_than_n_together) {
  constexpr std::size_t n = 3;
  constexpr std::size_t jobs = 60;
  two_processes p(n);
  auto [a, b, db, slots, store_a, store_b] = p.parts();  // references
  ASSERT_TRUE(enqueue_orders(db, jobs));
  gauge g;
  auto handler = [&](const claimed_job&) {
    g.enter();
    std::this_thread::sleep_for(3ms);
    g.leave();
    return response{.body = "done"};
  };
  consumer ca(store_a, a.adm, a.options(handler));
  consumer cb(store_b, b.adm, b.options(handler));
  ASSERT_TRUE(eventually([&] { return ca.succeeded() + cb.succeeded() == jobs; }, 30s));
  ASSERT_TRUE(eventually([&] { return slots.taken() == 0; }));
  EXPECT_TRUE(ca.stop(1s));
  EXPECT_TRUE(cb.stop(1s));
  EXPECT_LE(g.most.load(), static_cast<int>(n));
  EXPECT_GE(g.most.load(), 2);
  EXPECT_LE(slots.most(), n);
  EXPECT_EQ(ca.given_back() + cb.given_back(), 0u);
  EXPECT_EQ(ca.fenced_out() + cb.fenced_out(), 0u);
  EXPECT_EQ(db.depth("orders"), 0u);
}

// A process that starts while another holds every slot gets its part: the first gives back
// the slots above half as their jobs end, and both run jobs at once from then on.
TEST(consumer_test, consumers_sharing_run_slots_split_them_evenly) {
  constexpr std::size_t n = 4;
  constexpr std::size_t jobs = 400;
  two_processes p(n);
  auto [a, b, db, slots, store_a, store_b] = p.parts();  // references
  ASSERT_TRUE(enqueue_orders(db, jobs));
  gauge g, in_a, in_b;
  std::atomic<int> together{0};  // most jobs of a and of b running at one moment, the lesser
  auto handler = [&](gauge& mine, gauge& theirs) {
    return [&](const claimed_job&) {
      g.enter();
      mine.enter();
      const int both = std::min(mine.now.load(), theirs.now.load());
      for (int was = together.load(); both > was && !together.compare_exchange_weak(was, both);) {
      }
      std::this_thread::sleep_for(10ms);
      mine.leave();
      g.leave();
      return response{.body = "done"};
    };
  };
  auto oa = a.options(handler(in_a, in_b));
  auto ob = b.options(handler(in_b, in_a));
  oa.lease = ob.lease = 300ms;  // parts checked every 100 ms
  consumer ca(store_a, a.adm, oa);
  ASSERT_TRUE(eventually([&] { return ca.run_slots_held() == n; }));
  consumer cb(store_b, b.adm, ob);
  EXPECT_TRUE(eventually(
      [&] {
        return slots.split() == std::vector<std::size_t>{n / 2, n / 2};
      },
      10s));
  EXPECT_TRUE(eventually([&] { return together.load() == static_cast<int>(n / 2); }, 10s));
  ASSERT_TRUE(eventually([&] { return ca.succeeded() + cb.succeeded() == jobs; }, 30s));
  EXPECT_TRUE(ca.stop(1s));
  EXPECT_TRUE(cb.stop(1s));
  EXPECT_LE(g.most.load(), static_cast<int>(n));
  EXPECT_LE(slots.most(), n);
  EXPECT_GT(cb.succeeded(), 0u);
  EXPECT_EQ(ca.given_back() + cb.given_back(), 0u);
  EXPECT_EQ(db.depth("orders"), 0u);
}

// With its part of the slots (N / 2 each), a process still leases about one round of N
// ahead: two jobs per slot it holds, not one (which left two processes short of ready jobs
// under load).
TEST(consumer_test, a_process_with_part_of_the_slots_leases_two_jobs_ahead_per_slot) {
  constexpr std::size_t n = 4;
  two_processes p(n);
  auto [a, b, db, slots, store_a, store_b] = p.parts();  // references
  ASSERT_TRUE(enqueue_orders(db, 400));
  std::atomic<bool> hold{false};
  gauge g;
  auto handler = [&](const claimed_job&) {
    g.enter();
    const auto until = clock::now() + 10s;
    do {
      std::this_thread::sleep_for(2ms);
    } while (hold.load() && clock::now() < until);
    g.leave();
    return response{.body = "done"};
  };
  auto oa = a.options(handler), ob = b.options(handler);
  oa.lease = ob.lease = 300ms;  // parts checked every 100 ms
  consumer ca(store_a, a.adm, oa);
  consumer cb(store_b, b.adm, ob);
  // Both have measured their service time (leasing ahead waits for it) and split the slots.
  ASSERT_TRUE(eventually(
      [&] {
        return ca.succeeded() >= 5 && cb.succeeded() >= 5 &&
               slots.split() == std::vector<std::size_t>{n / 2, n / 2};
      },
      10s));
  hold = true;
  // Each: 2 jobs running on its 2 slots, 2 x 2 leased ahead (prefetch auto: N = 4).
  EXPECT_TRUE(eventually([&] { return store_a.leases() == 6 && store_b.leases() == 6; }, 10s))
      << store_a.leases() << " and " << store_b.leases() << " leased";
  EXPECT_TRUE(eventually([&] { return g.now.load() == static_cast<int>(n); }));
  hold = false;
  EXPECT_TRUE(ca.stop(1s));
  EXPECT_TRUE(cb.stop(1s));
  EXPECT_LE(g.most.load(), static_cast<int>(n));
  EXPECT_EQ(ca.fenced_out() + cb.fenced_out(), 0u);
}

// The store ended the holder's session (a database restart): the consumer notices at its next
// call, takes slots again, and every job still ends.
TEST(consumer_test, jobs_go_on_after_the_run_slots_were_lost) {
  fixture f(2);
  test::temp_dir dir;
  sqlite_store db({.path = dir.file("jobs.db")});
  slot_table slots;
  counting_store store(db, false, &slots);
  ASSERT_TRUE(enqueue_orders(store, 20));
  std::atomic<int> done{0};
  auto o = f.options([&](const claimed_job&) {
    std::this_thread::sleep_for(5ms);
    if (++done == 5) slots.kill_all();
    return response{.body = "done"};
  });
  o.lease = 300ms;  // its session is checked every 100 ms
  consumer c(store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return c.succeeded() == 20; }, 20s));
  ASSERT_TRUE(eventually([&] { return slots.taken() == 0; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(c.fenced_out(), 0u);
  EXPECT_EQ(db.depth("orders"), 0u);
}

// A synchronous request of the same route, as the HTTP gate submits it, holding its permit.
class held_request final : public transport {
 public:
  held_request(gauge& g, std::atomic<bool>& hold, std::atomic<int>& answered)
      : g_(g), hold_(hold), answered_(answered) {}
  bool connected() noexcept override { return true; }
  std::optional<response> handle() override {
    g_.enter();
    const auto until = clock::now() + 10s;
    while (hold_.load() && clock::now() < until) std::this_thread::sleep_for(1ms);
    g_.leave();
    return response{};
  }
  void answer(response) noexcept override { ++answered_; }
  void fallback(outcome) noexcept override { ++answered_; }
  void fail(std::exception_ptr) noexcept override { ++answered_; }

 private:
  gauge& g_;
  std::atomic<bool>& hold_;
  std::atomic<int>& answered_;
};

TEST(consumer_test, synchronous_requests_and_jobs_share_one_n) {
  fixture f(3);
  gauge g;  // synchronous handlers and job handlers together
  std::atomic<bool> hold{true};
  std::atomic<int> answered{0};
  const auto& route = *f.adm.find_route("orders");
  for (int i = 0; i < 2; ++i) {
    f.adm.submit(route, {.arrival = clock::now()}, handler_kind::blocking,
                 std::make_unique<held_request>(g, hold, answered));
  }
  ASSERT_TRUE(eventually([&] { return g.now.load() == 2; }));
  for (int i = 0; i < 20; ++i) f.add();
  gauge jobs_only;
  consumer c(f.store, f.adm, f.options([&](const claimed_job&) {
    g.enter();
    jobs_only.enter();
    std::this_thread::sleep_for(1ms);
    jobs_only.leave();
    g.leave();
    return response{};
  }));
  // Two permits are the synchronous requests': the jobs run one at a time in the third.
  // Claimed for the free permit only, so no job ever waits in the group for one.
  std::size_t most_waiting = 0;
  ASSERT_TRUE(eventually([&] {
    most_waiting = std::max(most_waiting, f.group.stats().waiting);
    return f.store.count(job_state::succeeded) >= 10;
  }));
  EXPECT_EQ(jobs_only.most.load(), 1);
  EXPECT_LE(g.most.load(), 3);
  EXPECT_EQ(most_waiting, 0u);
  // A job stays leased until the loop settles it, after its permit went to the next one
  // (admission gives it back just before the verdict reaches the loop): the leases may count
  // jobs that ended, never more than the group's N.
  EXPECT_LE(f.store.max_leased, 3u);
  hold = false;
  ASSERT_TRUE(eventually([&] { return f.store.count(job_state::succeeded) == 20; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(answered.load(), 2);
  EXPECT_LE(g.most.load(), 3);
}

TEST(consumer_test, jobs_claim_by_priority) {
  fixture f(1);
  f.add("low", 0);
  f.add("high", 9);
  f.add("mid", 4);
  std::mutex m;
  std::vector<std::string> order;
  consumer c(f.store, f.adm, f.options([&](const claimed_job& j) {
    const std::lock_guard lock(m);
    order.push_back(j.request.body);
    return response{};
  }));
  ASSERT_TRUE(eventually([&] { return f.store.count(job_state::succeeded) == 3; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(order, (std::vector<std::string>{"high", "mid", "low"}));
}

TEST(consumer_test, long_jobs_are_heartbeaten_every_third_of_the_lease) {
  fixture f(1);
  shared_clock clk;
  f.add();
  std::atomic<bool> hold{true};
  auto o = f.options([&](const claimed_job&) {
    const auto until = clock::now() + 10s;
    while (hold.load() && clock::now() < until) std::this_thread::sleep_for(1ms);
    return response{};
  });
  o.now = [&] { return clk.now(); };
  consumer c(f.store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return c.held() == 1; }));
  std::this_thread::sleep_for(30ms);  // several loop turns: the clock stands, so no heartbeat
  EXPECT_EQ(c.heartbeats(), 0u);
  clk.advance(999ms);
  c.poke();
  std::this_thread::sleep_for(30ms);
  EXPECT_EQ(c.heartbeats(), 0u);  // lease 3 s: due at 1 s
  clk.advance(1ms);
  c.poke();
  ASSERT_TRUE(eventually([&] { return c.heartbeats() == 1; }));
  clk.advance(1000ms);
  c.poke();
  ASSERT_TRUE(eventually([&] { return c.heartbeats() == 2; }));
  hold = false;
  ASSERT_TRUE(eventually([&] { return c.succeeded() == 1; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(c.fenced_out(), 0u);
}

TEST(consumer_test, a_fenced_out_run_is_logged_counted_and_its_result_refused) {
  fixture f(1);
  shared_clock clk;
  const job_id id = f.add();
  std::atomic<bool> hold{true};
  auto o = f.options([&](const claimed_job&) {
    const auto until = clock::now() + 10s;
    while (hold.load() && clock::now() < until) std::this_thread::sleep_for(1ms);
    return response{.body = "late"};
  });
  o.now = [&] { return clk.now(); };
  consumer c(f.store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return c.held() == 1; }));
  f.store.steal(id);  // its lease went elsewhere
  clk.advance(1s);
  c.poke();
  ASSERT_TRUE(eventually([&] { return c.fenced_out() == 1; }));
  hold = false;
  ASSERT_TRUE(eventually([&] { return c.held() == 0; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(c.fenced_out(), 1u);  // once per run, though its completion was refused too
  EXPECT_EQ(c.succeeded(), 0u);
  EXPECT_EQ(f.store.refused.load(), 1u);
  EXPECT_FALSE(f.store.get(id).result.has_value());
}

// The store without an answer (store_error) is not a refusal: the result is kept and stored at
// a later try, the job is neither fenced out nor run again.
TEST(consumer_test, a_result_the_store_could_not_take_is_stored_at_a_retry) {
  fixture f(1);
  shared_clock clk;
  const job_id id = f.add("x");
  f.store.complete_errors = 2;
  std::atomic<int> runs{0};
  auto o = f.options([&](const claimed_job&) {
    ++runs;
    return response{.body = "done"};
  });
  o.now = [&] { return clk.now(); };
  consumer c(f.store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return f.store.complete_calls.load() == 1; }));
  std::this_thread::sleep_for(30ms);  // several loop turns: the clock stands, so no retry yet
  EXPECT_EQ(f.store.complete_calls.load(), 1u);
  EXPECT_EQ(c.held(), 1u);
  EXPECT_EQ(f.store.get(id).state, job_state::running);
  clk.advance(1s);  // lease 3 s: retried every second, and heartbeaten meanwhile
  c.poke();
  ASSERT_TRUE(eventually([&] { return f.store.complete_calls.load() == 2; }));
  ASSERT_TRUE(eventually([&] { return c.heartbeats() == 1; }));
  clk.advance(1s);
  c.poke();
  ASSERT_TRUE(eventually([&] { return c.succeeded() == 1; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(f.store.complete_calls.load(), 3u);
  EXPECT_EQ(f.store.get(id).state, job_state::succeeded);
  EXPECT_EQ(f.store.get(id).result->body, "done");
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(c.fenced_out(), 0u);
  EXPECT_EQ(c.abandoned(), 0u);
  EXPECT_EQ(c.held(), 0u);
}

TEST(consumer_test, a_completion_whose_acknowledgement_was_lost_counts_as_stored) {
  fixture f(1);
  shared_clock clk;
  const job_id id = f.add();
  f.store.complete_lost_acks = 1;  // commits, then throws
  auto o = f.options([](const claimed_job&) { return response{.body = "once"}; });
  o.now = [&] { return clk.now(); };
  consumer c(f.store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return f.store.complete_calls.load() == 1; }));
  EXPECT_EQ(f.store.get(id).state, job_state::succeeded);
  clk.advance(1s);
  c.poke();
  // The retry is refused (the job is no longer running); status() shows the job succeeded
  // with this run's attempt, so nobody else ran it: this run's result, not a fencing.
  ASSERT_TRUE(eventually([&] { return c.succeeded() == 1; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(f.store.complete_calls.load(), 2u);
  EXPECT_EQ(c.fenced_out(), 0u);
  EXPECT_EQ(f.store.get(id).result->body, "once");
}

TEST(consumer_test, a_heartbeat_without_an_answer_is_not_a_fencing) {
  fixture f(1);
  shared_clock clk;
  const job_id id = f.add();
  f.store.heartbeat_errors = 1;
  std::atomic<bool> hold{true};
  auto o = f.options([&](const claimed_job&) {
    const auto until = clock::now() + 10s;
    while (hold.load() && clock::now() < until) std::this_thread::sleep_for(1ms);
    return response{.body = "kept"};
  });
  o.now = [&] { return clk.now(); };
  consumer c(f.store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return c.held() == 1; }));
  clk.advance(1s);
  c.poke();
  ASSERT_TRUE(eventually([&] { return f.store.heartbeat_calls.load() == 1; }));
  EXPECT_EQ(c.heartbeats(), 0u);
  clk.advance(1s);
  c.poke();
  ASSERT_TRUE(eventually([&] { return c.heartbeats() == 1; }));  // still heartbeaten
  hold = false;
  ASSERT_TRUE(eventually([&] { return c.succeeded() == 1; }));
  EXPECT_TRUE(c.stop(1s));
  EXPECT_EQ(c.fenced_out(), 0u);
  EXPECT_EQ(f.store.get(id).result->body, "kept");
}

TEST(consumer_test, a_result_the_store_cannot_take_for_a_whole_lease_is_left_to_expiry) {
  fixture f(1);
  shared_clock clk;
  const job_id id = f.add();
  f.store.complete_errors = -1;
  f.store.heartbeat_errors = -1;
  auto o = f.options([](const claimed_job&) { return response{}; });
  o.now = [&] { return clk.now(); };
  consumer c(f.store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return f.store.complete_calls.load() == 1; }));
  for (int i = 2; i <= 3; ++i) {
    clk.advance(1s);
    c.poke();
    ASSERT_TRUE(
        eventually([&] { return f.store.complete_calls.load() == static_cast<size_t>(i); }));
    EXPECT_EQ(c.held(), 1u);
  }
  clk.advance(1s);  // a lease (3 s) after the first try
  c.poke();
  ASSERT_TRUE(eventually([&] { return c.abandoned() == 1; }));
  EXPECT_EQ(c.held(), 0u);
  EXPECT_EQ(c.fenced_out(), 0u);
  EXPECT_EQ(c.succeeded(), 0u);
  // Nothing was failed back: the job stays leased until its lease expires in the store.
  EXPECT_EQ(f.store.get(id).state, job_state::running);
  EXPECT_TRUE(f.store.fail_calls().empty());
  EXPECT_TRUE(c.stop(1s));
}

TEST(consumer_test, a_failure_the_store_could_not_take_is_stored_at_a_retry) {
  fixture f(1);
  shared_clock clk;
  const job_id id = f.add();
  f.store.fail_errors = 1;
  std::atomic<int> runs{0};
  auto o = f.options([&](const claimed_job& j) {
    ++runs;
    if (j.attempt == 1) throw std::runtime_error("backend down");
    return response{.body = "second"};
  });
  o.now = [&] { return clk.now(); };
  consumer c(f.store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return c.failed() == 1; }));
  std::this_thread::sleep_for(30ms);
  EXPECT_TRUE(f.store.fail_calls().empty());  // the try that threw stored nothing
  EXPECT_EQ(f.store.get(id).state, job_state::running);
  clk.advance(1s);
  c.poke();
  ASSERT_TRUE(eventually([&] { return c.succeeded() == 1; }));
  EXPECT_TRUE(c.stop(1s));
  ASSERT_EQ(f.store.fail_calls().size(), 1u);
  EXPECT_TRUE(f.store.fail_calls()[0].accepted);
  EXPECT_EQ(f.store.fail_calls()[0].error, "backend down");
  EXPECT_EQ(c.failed(), 1u);  // one failed run, though stored at the second try
  EXPECT_EQ(c.fenced_out(), 0u);
  EXPECT_EQ(runs.load(), 2);
  EXPECT_EQ(f.store.get(id).attempts, 2);
}

TEST(token_bucket_test, starts_full_refills_at_the_rate_and_caps_at_the_burst) {
  const time_point t0{};
  token_bucket b({.per_second = 10, .burst = 3}, t0);
  EXPECT_EQ(b.available(t0), 3u);
  b.take(3, t0);
  EXPECT_EQ(b.available(t0), 0u);
  EXPECT_EQ(b.until_one(t0), 100ms + duration(1));
  EXPECT_EQ(b.available(t0 + 99ms), 0u);
  EXPECT_EQ(b.available(t0 + 100ms), 1u);
  EXPECT_EQ(b.available(t0 + 250ms), 2u);
  EXPECT_EQ(b.available(t0 + 10s), 3u);  // never more than the burst
}

TEST(consumer_test, the_token_bucket_limits_claims) {
  fixture f(8);
  shared_clock clk;
  for (int i = 0; i < 10; ++i) f.add();
  auto o = f.options([](const claimed_job&) { return response{}; });
  o.now = [&] { return clk.now(); };
  o.rate = steady_rate{.per_second = 2, .burst = 3};
  consumer c(f.store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return c.succeeded() == 3; }));  // the burst
  std::this_thread::sleep_for(50ms);                            // the clock stands: no token
  EXPECT_EQ(c.claimed(), 3u);
  clk.advance(499ms);
  c.poke();
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(c.claimed(), 3u);
  clk.advance(1ms);  // one token
  c.poke();
  ASSERT_TRUE(eventually([&] { return c.claimed() == 4; }));
  clk.advance(1s);  // two more
  c.poke();
  ASSERT_TRUE(eventually([&] { return c.claimed() == 6; }));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(c.claimed(), 6u);
  EXPECT_TRUE(c.stop(1s));
}

TEST(consumer_test, a_job_admission_refuses_is_given_back_without_going_dead) {
  fixture f(1);
  const job_id id = f.add();
  f.adm.close();  // every submit now meets `shutdown`
  auto o = f.options([](const claimed_job&) { return response{}; });
  o.retry.max_attempts = 1;  // a real failure would make it dead
  o.fallback_delay = 60s;    // given back for later: not claimed again in this test
  consumer c(f.store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return c.given_back() == 1; }));
  EXPECT_TRUE(c.stop(1s));
  const auto fails = f.store.fail_calls();
  ASSERT_EQ(fails.size(), 1u);
  EXPECT_EQ(fails[0].error, "not run: shutdown");
  EXPECT_EQ(fails[0].retry.base, 60s);
  EXPECT_GT(fails[0].retry.max_attempts, 1000);
  EXPECT_EQ(f.store.get(id).state, job_state::queued);
  EXPECT_EQ(c.failed(), 0u);
  EXPECT_EQ(c.claimed(), 1u);
}

TEST(consumer_test, stop_lets_a_job_finish_within_the_grace) {
  fixture f(2);
  f.add();
  std::atomic<bool> started{false};
  consumer c(f.store, f.adm, f.options([&](const claimed_job&) {
    started = true;
    std::this_thread::sleep_for(100ms);
    return response{.body = "finished"};
  }));
  ASSERT_TRUE(eventually([&] { return started.load(); }));
  EXPECT_TRUE(c.stop(5s));
  EXPECT_EQ(c.succeeded(), 1u);
  EXPECT_EQ(f.store.count(job_state::succeeded), 1u);
  const auto claims = f.store.claim_calls.load();
  f.add();
  std::this_thread::sleep_for(30ms);
  EXPECT_EQ(f.store.claim_calls.load(), claims);  // no claim after stop
}

TEST(consumer_test, stop_leaves_a_job_that_outlives_the_grace_to_lease_expiry) {
  fixture f(2);
  const job_id id = f.add();
  std::atomic<bool> hold{true};
  std::atomic<bool> started{false};
  auto o = f.options([&](const claimed_job&) {
    started = true;
    const auto until = clock::now() + 10s;
    while (hold.load() && clock::now() < until) std::this_thread::sleep_for(1ms);
    return response{};
  });
  o.lease = 30ms;  // heartbeats every 10 ms while the grace lasts
  auto c = std::make_unique<consumer>(f.store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return started.load(); }));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(c->stop(100ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 100ms);
  EXPECT_GE(c->heartbeats(), 3u);  // the lease was kept while the grace lasted
  EXPECT_EQ(c->abandoned(), 1u);
  const auto beats = f.store.heartbeat_calls.load();
  EXPECT_EQ(f.store.get(id).state, job_state::running);  // neither completed nor failed back
  EXPECT_TRUE(f.store.fail_calls().empty());
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(f.store.heartbeat_calls.load(), beats);  // no heartbeat after stop: it will expire
  hold = false;                                      // its late result goes nowhere
  c.reset();
  EXPECT_TRUE(eventually([&] { return f.group.stats().in_use == 0; }));
  EXPECT_EQ(f.store.get(id).state, job_state::running);
}

TEST(consumer_test, stop_claims_nothing_more_and_lets_the_running_job_end) {
  fixture f(1);
  const job_id first = f.add();
  const job_id second = f.add();
  std::atomic<bool> hold{true};
  std::atomic<int> runs{0};
  // max_wait far away: the second job waits in the group behind the first.
  consumer c(f.store, f.adm, f.options([&](const claimed_job&) {
    ++runs;
    const auto until = clock::now() + 10s;
    while (hold.load() && clock::now() < until) std::this_thread::sleep_for(1ms);
    return response{};
  }));
  ASSERT_TRUE(eventually([&] { return runs.load() == 1; }));
  EXPECT_EQ(c.held(), 1u);  // no free permit: the second is not claimed
  (void)second;
  std::thread release([&] {
    std::this_thread::sleep_for(50ms);
    hold = false;
  });
  EXPECT_TRUE(c.stop(5s));
  release.join();
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(f.store.get(first).state, job_state::succeeded);
  EXPECT_EQ(f.store.get(second).state, job_state::queued);
}

TEST(consumer_test, every_consumer_requeues_expired_leases) {
  fixture f(1);
  f.add();
  auto o = f.options([](const claimed_job&) { return response{}; });
  o.requeue_interval = 5ms;
  consumer c(f.store, f.adm, o);
  ASSERT_TRUE(eventually([&] { return f.store.requeue_calls.load() >= 3; }));
  EXPECT_TRUE(c.stop(1s));
}

TEST(consumer_test, refuses_bad_options) {
  fixture f(1);
  auto ok = f.options([](const claimed_job&) { return response{}; });
  auto bad_group = ok;
  bad_group.group = "nope";
  EXPECT_THROW(consumer(f.store, f.adm, bad_group), std::invalid_argument);
  auto bad_route = ok;
  bad_route.routes[0].name = "nope";
  EXPECT_THROW(consumer(f.store, f.adm, bad_route), std::invalid_argument);
  auto reactor = ok;
  reactor.routes[0].kind = handler_kind::reactor;
  EXPECT_THROW(consumer(f.store, f.adm, reactor), std::invalid_argument);
  auto no_handler = ok;
  no_handler.routes[0].handler = nullptr;
  EXPECT_THROW(consumer(f.store, f.adm, no_handler), std::invalid_argument);
  auto rate = ok;
  rate.rate = steady_rate{.per_second = 0, .burst = 1};
  EXPECT_THROW(consumer(f.store, f.adm, rate), std::invalid_argument);
}

}  // namespace
}  // namespace qos::jobs

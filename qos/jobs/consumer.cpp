// The consumer's loop (one thread: every store call), the transport of one job (admission's
// side: records the verdict, hands it to the loop once the handler really ended), and the
// optional wake-up thread.
#include "qos/jobs/consumer.hpp"

#include <algorithm>
#include <climits>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "qos/core/outcome.hpp"
#include "qos/ops/log.hpp"

namespace qos::jobs {

// ---------------------------------------------------------------------------- token_bucket

token_bucket::token_bucket(steady_rate rate, time_point now)
    : rate_(rate), tokens_(rate.burst), last_(now) {}

void token_bucket::refill(time_point now) {
  if (now <= last_) return;
  const double elapsed = std::chrono::duration<double>(now - last_).count();
  tokens_ = std::min(rate_.burst, tokens_ + elapsed * rate_.per_second);
  last_ = now;
}

std::size_t token_bucket::available(time_point now) {
  refill(now);
  return tokens_ < 1 ? 0 : static_cast<std::size_t>(tokens_);
}

void token_bucket::take(std::size_t n, time_point now) {
  refill(now);
  tokens_ = std::max(0.0, tokens_ - static_cast<double>(n));
}

duration token_bucket::until_one(time_point now) {
  refill(now);
  if (tokens_ >= 1) return duration::zero();
  return std::chrono::duration_cast<duration>(
             std::chrono::duration<double>((1 - tokens_) / rate_.per_second)) +
         duration(1);  // round up: waking a hair early would find no token yet
}

// ---------------------------------------------------------------------------- shared state

namespace {

// How one held job ended, as its transport saw it.
struct verdict {
  enum class kind : std::uint8_t { succeeded, failed, given_back };
  job_id id;
  kind what = kind::given_back;
  job_result result{};
  std::string error{};
};

std::string describe(std::exception_ptr e) {
  try {
    std::rethrow_exception(std::move(e));
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown exception";
  }
}

}  // namespace

namespace {
class job_transport;
}  // namespace

struct consumer::shared {
  std::map<std::string, job_route, std::less<>> routes;  // const after construction
  std::atomic<bool> stopping{false};                     // read by transports' connected()
  admission* adm = nullptr;                              // const after construction

  // With run slots (a store shared by processes): a job leased beyond the slots held waits
  // here, and the end of a job hands its slot to the first of them (slot_back()) on the
  // thread that ended it, with no store call in between.
  struct pending {
    const admission::route* route = nullptr;
    request_info info{};
    handler_kind kind = handler_kind::blocking;
    std::unique_ptr<job_transport> job;
  };
  std::uint64_t slot_gen = 1;  // guarded by mutex; a new one once the slots held were lost
  std::size_t slots_held = 0;  // guarded by mutex
  std::size_t slots_used = 0;  // guarded by mutex: jobs of this generation in admission
  std::size_t slot_cap = 0;    // guarded by mutex: the group's limit at the loop's last round
  std::deque<pending> ready;   // guarded by mutex

  // A job that held a slot of generation `gen` ended (any thread, no lock held).
  void slot_back(std::uint64_t gen) noexcept;
  // To admission with a slot of generation `gen` (no lock held).
  void launch(pending p, std::uint64_t gen) noexcept;

  std::mutex mutex;
  std::condition_variable cv;
  std::deque<verdict> ended;                            // guarded by mutex
  bool wake = false;                                    // guarded by mutex
  std::chrono::steady_clock::time_point grace_until{};  // guarded by mutex; set by stop()

  void post(verdict v) {
    {
      const std::lock_guard lock(mutex);
      ended.push_back(std::move(v));
    }
    cv.notify_all();
  }
  void poke() noexcept {
    {
      const std::lock_guard lock(mutex);
      wake = true;
    }
    cv.notify_all();
  }
};

namespace {

// One job as admission drives it. Admission calls answer/fallback/fail at most once, then
// done() once the handler really ended (after a max_exec overrun too): only then does the loop
// learn the verdict, so the store never requeues a job whose handler still runs here.
class job_transport final : public transport {
 public:
  job_transport(std::shared_ptr<consumer::shared> s, const job_route& route, claimed_job job)
      : s_(std::move(s)), route_(route), job_(std::move(job)) {
    v_.id = job_.id;
    v_.error = "not run";
  }
  job_transport(const job_transport&) = delete;
  job_transport& operator=(const job_transport&) = delete;
  ~job_transport() override { post(); }  // a path without done() still gives the job back

  // A job not started when stop() came is given back instead of started.
  bool connected() noexcept override { return !s_->stopping.load(std::memory_order_acquire); }

  std::optional<response> handle() override { return route_.handler(job_); }
  // The verdict is read at done(): a blocking job runs to its end on its pool thread.
  bool answer_awaited() const noexcept override { return false; }

  void answer(response r) noexcept override {
    try {
      job_result out{
          .status = r.status, .headers = std::move(r.headers), .body = std::move(r.body)};
      if (!r.content_type.empty()) out.headers.emplace_back("Content-Type", r.content_type);
      v_.result = std::move(out);
      v_.what = verdict::kind::succeeded;
    } catch (...) {
      v_.what = verdict::kind::failed;  // bad_alloc copying the result: run it again later
      v_.error = "could not keep the result";
    }
  }

  void fallback(outcome why) noexcept override {
    if (why == outcome::exec_timeout) {
      // It ran and overran: a failed attempt, like a throw.
      v_.what = verdict::kind::failed;
      v_.error = "ran past max_exec";
      return;
    }
    v_.what = verdict::kind::given_back;
    v_.error = std::string("not run: ") + std::string(to_string(why));
  }

  void fail(std::exception_ptr error) noexcept override {
    v_.what = verdict::kind::failed;
    try {
      v_.error = describe(std::move(error));
    } catch (...) {
    }
  }

  void done(const request_report&) noexcept override { post(); }

  // It runs on a run slot of this generation, handed on when it ends.
  void hold_slot(std::uint64_t gen) noexcept { slot_ = gen; }

 private:
  void post() noexcept {
    if (posted_) return;
    posted_ = true;
    // The slot first: the next job starts now, and the loop woken below sees the slots as
    // they are after it.
    if (slot_ != 0) s_->slot_back(slot_);
    try {
      s_->post(std::move(v_));
    } catch (...) {
      // Out of memory: the job stays held until its lease expires elsewhere.
    }
  }

  std::shared_ptr<consumer::shared> s_;
  const job_route& route_;  // in s_->routes, which s_ keeps alive
  claimed_job job_;
  verdict v_;
  bool posted_ = false;
  std::uint64_t slot_ = 0;  // 0: none (no run slots, or not started)
};

time_point real_now() {
  return clock::now();
}

}  // namespace

void consumer::shared::slot_back(std::uint64_t gen) noexcept {
  std::optional<pending> next;
  {
    const std::lock_guard lock(mutex);
    if (gen != slot_gen) return;  // lost meanwhile: nothing of it is left to hand on
    --slots_used;
    if (!ready.empty() && !stopping.load(std::memory_order_relaxed) &&
        slots_used < std::min(slots_held, slot_cap)) {
      next.emplace(std::move(ready.front()));
      ready.pop_front();
      ++slots_used;
    }
  }
  if (next) launch(std::move(*next), gen);
}

void consumer::shared::launch(pending p, std::uint64_t gen) noexcept {
  p.job->hold_slot(gen);
  p.info.arrival = clock::now();  // its wait for a permit starts now
  adm->submit(*p.route, p.info, p.kind, std::move(p.job));
}

// ---------------------------------------------------------------------------- consumer

consumer::consumer(job_store& store, admission& adm, consumer_options options)
    : store_(store),
      adm_(adm),
      options_(std::move(options)),
      counters_(std::make_shared<counters>()),
      shared_(std::make_shared<shared>()) {
  shared_->adm = &adm_;
  auto* group = adm_.find_group(options_.group);
  if (group == nullptr)
    throw std::invalid_argument("consumer: unknown group '" + options_.group + "'");
  if (options_.routes.empty()) throw std::invalid_argument("consumer: no route");
  for (const auto& r : options_.routes) {
    const auto* route = adm_.find_route(r.name);
    if (route == nullptr) throw std::invalid_argument("consumer: unknown route '" + r.name + "'");
    if (route->group != group) {
      throw std::invalid_argument("consumer: route '" + r.name + "' is not in group '" +
                                  options_.group + "'");
    }
    if (!r.handler) throw std::invalid_argument("consumer: route '" + r.name + "' has no handler");
    if (r.kind == handler_kind::reactor) {
      throw std::invalid_argument("consumer: route '" + r.name +
                                  "': a job handler runs on a fiber or the blocking pool");
    }
    if (!shared_->routes.emplace(r.name, r).second) {
      throw std::invalid_argument("consumer: duplicate route '" + r.name + "'");
    }
  }
  if (options_.lease < std::chrono::milliseconds(3)) {
    throw std::invalid_argument("consumer: lease must be at least 3 ms");
  }
  if (options_.poll_interval <= std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("consumer: poll_interval must be positive");
  }
  if (options_.requeue_interval < std::chrono::milliseconds::zero() ||
      options_.fallback_delay < std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("consumer: negative interval");
  }
  if (options_.requeue_interval == std::chrono::milliseconds::zero()) {
    options_.requeue_interval = options_.lease / 2;
  }
  if (options_.retry.max_attempts < 1) {
    throw std::invalid_argument("consumer: retry.max_attempts must be at least 1");
  }
  if (options_.rate && (!(options_.rate->per_second > 0) || !(options_.rate->burst >= 1))) {
    throw std::invalid_argument("consumer: rate needs per_second > 0 and burst >= 1");
  }
  if (!options_.now) options_.now = real_now;
  thread_ = std::thread([this] { loop(); });
  if (options_.wait_for_work) watcher_ = std::thread([this] { watch(); });
}

consumer::~consumer() {
  stop(std::chrono::milliseconds::zero());
}

void consumer::poke() noexcept {
  shared_->poke();
}

bool consumer::stop(std::chrono::milliseconds grace) {
  const std::lock_guard once(stop_mutex_);
  if (!stopped_) {
    stopped_ = true;
    {
      const std::lock_guard lock(shared_->mutex);
      shared_->grace_until = std::chrono::steady_clock::now() + grace;
      shared_->stopping.store(true, std::memory_order_release);
    }
    shared_->cv.notify_all();
    if (watcher_.joinable()) watcher_.join();
    if (thread_.joinable()) thread_.join();
  }
  return all_done_;
}

void consumer::watch() {
  const auto timeout = std::min(options_.poll_interval, std::chrono::milliseconds(200));
  while (!shared_->stopping.load(std::memory_order_acquire)) {
    bool work = false;
    try {
      work = options_.wait_for_work(options_.group, timeout);
    } catch (const std::exception& e) {
      logger()->warn("jobs consumer {}: wait_for_work failed: {}", options_.group, e.what());
      std::unique_lock lock(shared_->mutex);
      shared_->cv.wait_for(lock, timeout, [&] { return shared_->stopping.load(); });
    }
    if (work) poke();
  }
}

void consumer::loop() {
  struct held_job {
    std::uint64_t fence = 0;
    int attempt = 1;
    time_point next_beat{};
    bool fenced = false;  // a heartbeat was refused: counted and logged already
    // The handler ended: kept until the store took it (retried after a store_error).
    std::optional<verdict> ended{};
    time_point retry_at{};
    time_point give_up_at{};  // a lease after the first failed try
    bool uncertain = false;   // a try failed: it may have committed all the same
  };
  std::map<job_id, held_job> jobs;
  auto& c = *counters_;
  auto& s = *shared_;
  limit_group& group = *adm_.find_group(options_.group);
  const auto now = options_.now;
  const duration beat_every = options_.lease / 3;
  const duration retry_every = std::min<duration>(beat_every, std::chrono::seconds(1));
  const retry_policy give_back{.max_attempts = INT_MAX,
                               .base = options_.fallback_delay,
                               .cap = options_.fallback_delay,
                               .jitter = 0.2};
  std::optional<token_bucket> bucket;
  if (options_.rate) bucket.emplace(*options_.rate, now());
  time_point next_requeue = now();

  auto fenced_out_of = [&](const job_id& id, const char* what) {
    ++c.fenced_out;
    logger()->warn(
        "jobs consumer {}: job {} fenced out ({} refused: its lease expired and it may have run "
        "again elsewhere); this run's result is not stored",
        options_.group, id, what);
  };
  auto fenced_out = [&](const job_id& id, held_job& j, const char* what) {
    if (j.fenced) return;
    j.fenced = true;
    fenced_out_of(id, what);
  };
  // Store calls never throw out of the loop. For requeue_expired, status and the claim a throw
  // is "nothing this time"; for the lease calls (settlements too) it is no answer, not a
  // refusal (ask(), and the settle_and_claim call below).
  auto guarded = [&](const char* what, auto&& call) -> decltype(call()) {
    try {
      return call();
    } catch (const std::exception& e) {
      logger()->error("jobs consumer {}: {} failed: {}", options_.group, what, e.what());
    } catch (...) {
      logger()->error("jobs consumer {}: {} failed", options_.group, what);
    }
    return {};
  };
  // A lease call's three answers: accepted, refused (fenced out), or no answer (store_error or
  // any other exception: the store could not say, and the lease may still be ours).
  enum class answer : std::uint8_t { yes, no, unknown };
  auto ask = [&](const char* what, const job_id& id, auto&& call) {
    try {
      return call() ? answer::yes : answer::no;
    } catch (const std::exception& e) {
      logger()->warn("jobs consumer {}: job {}: {} got no answer from the store: {}",
                     options_.group, id, what, e.what());
    } catch (...) {
      logger()->warn("jobs consumer {}: job {}: {} got no answer from the store", options_.group,
                     id, what);
    }
    return answer::unknown;
  };
  auto drop = [&](std::map<job_id, held_job>::iterator it) {
    jobs.erase(it);
    --c.held;
  };

  auto what_of = [](const verdict& v) {
    switch (v.what) {
      case verdict::kind::succeeded:
        return "complete";
      case verdict::kind::failed:
        return "fail";
      case verdict::kind::given_back:
        break;
    }
    return "give back";
  };
  // What the store answered for an ended job. Refused: fenced out. No answer: the result is
  // kept and retried every retry_every while the lease is heartbeaten, for one lease at most;
  // then it is left to lease expiry, as if this process had crashed.
  auto settled = [&](std::map<job_id, held_job>::iterator it, answer a, time_point t) {
    const job_id& id = it->first;
    held_job& j = it->second;
    const verdict& v = *j.ended;
    // held falls before an outcome counter rises: whoever sees the outcome sees the job gone.
    switch (a) {
      case answer::yes: {
        const bool succeeded = v.what == verdict::kind::succeeded;
        drop(it);
        if (succeeded) ++c.succeeded;
        return;
      }
      case answer::no: {
        const job_id gone = id;
        const char* what = what_of(v);
        const bool counted = !j.fenced;
        drop(it);
        if (counted) fenced_out_of(gone, what);
        return;
      }
      case answer::unknown:
        break;
    }
    if (!j.uncertain) {
      j.uncertain = true;
      j.give_up_at = t + options_.lease;
    }
    if (t >= j.give_up_at) {
      logger()->error(
          "jobs consumer {}: job {}: its result could not be stored for a whole lease; left to "
          "lease expiry (it runs again, and this run's result is refused if it comes late)",
          options_.group, id);
      drop(it);
      ++c.abandoned;
      return;
    }
    j.retry_at = t + retry_every;
  };
  // How an ended job is told to the store.
  auto settlement_of = [&](const job_id& id, const held_job& j) {
    const verdict& v = *j.ended;
    settlement out{.id = id, .fence = j.fence};
    switch (v.what) {
      case verdict::kind::succeeded:
        out.what = settlement::kind::complete;
        out.result = v.result;
        break;
      case verdict::kind::failed:
        out.what = settlement::kind::fail;
        out.error = v.error;
        out.retry = options_.retry;
        break;
      case verdict::kind::given_back:
        out.what = settlement::kind::fail;
        out.error = v.error;
        out.retry = give_back;
        break;
    }
    return out;
  };

  // A retry of a result that got no answer before: a call of its own. When the retry is
  // refused, the store's status() says whether that earlier try committed after all (its
  // acknowledgement lost): nobody re-claimed the job if its attempts are still this run's.
  auto store_result = [&](std::map<job_id, held_job>::iterator it, time_point t) {
    const job_id& id = it->first;
    held_job& j = it->second;
    const verdict& v = *j.ended;
    const settlement s = settlement_of(id, j);
    answer a = ask(what_of(v), id, [&] {
      return s.what == settlement::kind::complete ? store_.complete(id, s.fence, s.result)
                                                  : store_.fail(id, s.fence, s.error, s.retry);
    });
    if (a == answer::no && j.uncertain) {
      const auto st = guarded("status", [&] { return store_.status(id); });
      const bool ours = st && st->attempts == j.attempt &&
                        (v.what == verdict::kind::succeeded ? st->state == job_state::succeeded
                                                            : st->state != job_state::running);
      if (ours) a = answer::yes;
    }
    settled(it, a, t);
  };

  // A verdict in: counted, and kept with its job until the store took it.
  auto finish = [&](verdict& v) {
    auto it = jobs.find(v.id);
    if (it == jobs.end()) return it;
    switch (v.what) {
      case verdict::kind::succeeded:
        break;
      case verdict::kind::failed:
        ++c.failed;
        logger()->info("jobs consumer {}: job {} failed: {}", options_.group, v.id, v.error);
        break;
      case verdict::kind::given_back:
        ++c.given_back;
        break;
    }
    it->second.ended = std::move(v);
    return it;
  };

  // How many jobs to lease beyond the group's limit (prefetch), to wait in admission. A job
  // leased ahead waits about one service time for its permit, so none while a route's max_wait
  // is under two of them (it would time out and be given back, spending an attempt), nor before
  // the group has measured its service time.
  // A store shared by processes bounds the group by its leases, unless it has run slots: then
  // the slots are the bound (in every process sharing it, whatever its prefetch or rate, so
  // that all of them count the same way), and this process may lease ahead of the ones it
  // holds.
  const bool may_prefetch = !options_.rate && options_.prefetch.value_or(1) != 0;
  std::unique_ptr<run_slots> slots;
  if (!store_.exclusive_to_process()) {
    slots = guarded("run slots", [&] { return store_.slots(options_.group, options_.lease); });
  }
  const bool slotted = slots != nullptr;
  const bool prefetching = may_prefetch && (store_.exclusive_to_process() || slotted);
  time_point next_probe = now() + beat_every;
  // This process's even part of the slots (run_slots::share), checked every share_every while
  // it holds some: above it, slots go back as their jobs end, for a process that waits.
  const duration share_every = std::min<duration>(beat_every, std::chrono::seconds(1));
  time_point next_share = now() + share_every;
  std::size_t part = SIZE_MAX;
  bool slots_lost_logged = false;
  // The slots held are gone (the store's session ended): the jobs still running on them end
  // without handing them on, and the ready ones wait for slots taken again.
  auto lose_slots = [&](const char* what) {
    {
      const std::lock_guard lock(s.mutex);
      ++s.slot_gen;
      s.slots_held = 0;
      s.slots_used = 0;
    }
    c.run_slots = 0;
    if (!slots_lost_logged) {
      slots_lost_logged = true;
      logger()->warn(
          "jobs consumer {}: run slots lost ({}): jobs running on them finish, others wait for "
          "slots taken again",
          options_.group, what);
    }
  };
  // Ready jobs into the slots free now (under s.mutex), to be launched after it.
  auto fill = [&](std::vector<shared::pending>& out) {
    while (!s.ready.empty() && s.slots_used < std::min(s.slots_held, s.slot_cap)) {
      out.push_back(std::move(s.ready.front()));
      s.ready.pop_front();
      ++s.slots_used;
    }
  };
  auto launch_all = [&](std::vector<shared::pending>& go, std::uint64_t gen) {
    for (auto& p : go) s.launch(std::move(p), gen);
    go.clear();
  };
  constexpr std::size_t ahead_per_slot = 2;  // with run slots; see slotted_round
  auto ahead_of = [&](const group_stats& st) -> std::size_t {
    if (!prefetching || st.service_time <= duration::zero()) return 0;
    for (const auto& [name, r] : s.routes) {
      const auto* route = adm_.find_route(name);
      if (route == nullptr || route->policy()->max_wait < 2 * st.service_time) return 0;
    }
    return options_.prefetch.value_or(st.limit);
  };
  // How many jobs to claim now: free permits of the group here (and `ahead` more) over the
  // routes' cost, within the token bucket. Sets `next_wake` when the bucket holds claims back.
  auto claimable = [&](time_point t, const group_stats& st, std::size_t ahead,
                       time_point& next_wake) {
    std::uint32_t cost = 1;
    for (const auto& [name, r] : s.routes) {
      if (const auto* route = adm_.find_route(name)) cost = std::max(cost, route->policy()->cost);
    }
    const std::size_t busy = st.in_use + st.waiting + st.reserved;
    const std::size_t room = st.limit + ahead * cost;
    const std::size_t free_units = room > busy ? room - busy : 0;
    std::size_t k = free_units / cost;
    if (bucket && k != 0) {
      const std::size_t tokens = bucket->available(t);
      if (tokens < k) {
        k = tokens;
        if (k == 0) next_wake = std::min(next_wake, t + bucket->until_one(t));
      }
    }
    return k;
  };

  // Claimed jobs to admission, as requests of their routes (with run slots: those that find
  // a slot free; the others wait for one in `ready`).
  auto start = [&](std::vector<claimed_job>& got, time_point t) {
    std::vector<shared::pending> go;
    for (auto& job : got) {
      ++c.claimed;
      const auto route_it = s.routes.find(job.request.route);
      const auto* route = adm_.find_route(job.request.route);
      if (route_it == s.routes.end() || route == nullptr) {
        // Claimed by group, but this process has no handler for it (a route added by a
        // newer deployment): fail it, so a process that has one may run it after backoff.
        ++c.failed;
        const std::string why = "no handler for route '" + job.request.route + "' here";
        logger()->warn("jobs consumer {}: job {}: {}", options_.group, job.id, why);
        guarded("fail", [&] { return store_.fail(job.id, job.fence, why, options_.retry); });
        continue;
      }
      jobs.emplace(
          job.id,
          held_job{.fence = job.fence, .attempt = job.attempt, .next_beat = t + beat_every});
      ++c.held;
      const request_info info{
          .level = static_cast<priority>(std::clamp(job.request.priority, 0, int{max_priority})),
          .arrival = clock::now()};
      const handler_kind kind = route_it->second.kind;
      auto t = std::make_unique<job_transport>(shared_, route_it->second, std::move(job));
      if (!slotted) {
        adm_.submit(*route, info, kind, std::move(t));
        continue;
      }
      const std::lock_guard lock(s.mutex);
      s.ready.push_back({.route = route, .info = info, .kind = kind, .job = std::move(t)});
    }
    if (slotted) {
      std::uint64_t gen = 0;
      {
        const std::lock_guard lock(s.mutex);
        fill(go);
        gen = s.slot_gen;
      }
      launch_all(go, gen);
    }
  };

  // With run slots, before the claim: gives the ready jobs back when stopping, checks that the
  // slots held are still ours and what this process's part of them is, takes those worth
  // holding (one per job here or ready and one per free permit, up to its part), and returns
  // how many jobs to claim: one per free slot, plus `ahead` (at most two per slot held), less
  // the jobs ready already. Two: a process holding its part of the slots (N / processes) then
  // still has about one round of the group's N ahead. With one per slot, two processes with 4
  // of 8 slots each completed 1-4 % fewer jobs under load (bench/RESULTS.md, "Sixth round"):
  // their ready jobs could run out before a loaded machine answered their claims.
  auto slotted_round = [&](time_point t, const group_stats& st, std::size_t ahead, bool stopping,
                           time_point& next_wake) -> std::size_t {
    std::deque<shared::pending> back;
    std::size_t held = 0, used = 0, waiting = 0;
    {
      const std::lock_guard lock(s.mutex);
      if (stopping) back.swap(s.ready);
      held = s.slots_held;
    }
    back.clear();  // given back: each transport tells the loop "not run"
    if (held == 0) {
      part = st.limit;  // it takes what is free, and learns its part within share_every
    } else if (t >= next_probe || t >= next_share) {
      try {
        part = std::max<std::size_t>(1, slots->share(st.limit));
      } catch (const std::exception& e) {
        lose_slots(e.what());
        part = st.limit;
      }
      next_probe = t + beat_every;
      next_share = t + share_every;
    }
    {
      const std::lock_guard lock(s.mutex);
      s.slot_cap = std::min<std::size_t>(st.limit, part);
      held = s.slots_held;
      used = s.slots_used;
      waiting = s.ready.size();
    }
    if (stopping) return 0;
    const std::size_t room = claimable(t, st, 0, next_wake);
    const std::size_t want =
        std::min<std::size_t>(std::min<std::size_t>(st.limit, part), used + waiting + room);
    if (want <= held) {
      try {
        slots->acquire(st.limit, 0);  // no longer waiting for slots, if it was
      } catch (const std::exception& e) {
        lose_slots(e.what());
      }
    } else {
      std::size_t got = 0;
      try {
        got = slots->acquire(st.limit, want - held);
      } catch (const std::exception& e) {
        lose_slots(e.what());
      }
      next_probe = t + beat_every;
      std::vector<shared::pending> go;
      std::uint64_t gen = 0;
      {
        const std::lock_guard lock(s.mutex);
        s.slots_held += got;
        fill(go);
        gen = s.slot_gen;
      }
      launch_all(go, gen);
    }
    {
      const std::lock_guard lock(s.mutex);
      held = std::min(s.slots_held, s.slot_cap);  // those above its part go back as jobs end
      used = s.slots_used;
      waiting = s.ready.size();
    }
    const std::size_t ahead_here = std::min(ahead, ahead_per_slot * held);
    const std::size_t slots_for = (held > used ? held - used : 0) + ahead_here;
    const std::size_t k = slots_for > waiting ? slots_for - waiting : 0;
    return std::min(k, claimable(t, st, ahead_here, next_wake));
  };
  // With run slots, after the claim: the slots no job will use now go back to the store (all
  // idle ones when no job is ready; beyond its part, or the group's limit when it fell).
  auto release_idle = [&](time_point t, time_point& next_wake) {
    std::size_t give = 0, held = 0;
    {
      const std::lock_guard lock(s.mutex);
      const std::size_t idle = s.slots_held > s.slots_used ? s.slots_held - s.slots_used : 0;
      if (s.ready.empty()) {
        give = idle;
      } else if (s.slots_held > s.slot_cap) {
        give = std::min(idle, s.slots_held - s.slot_cap);
      }
      s.slots_held -= give;
      held = s.slots_held;
    }
    c.run_slots = held;
    if (give != 0) {
      try {
        slots->release(give);
      } catch (const std::exception& e) {
        lose_slots(e.what());
      }
      next_probe = t + beat_every;
    }
    if (held != 0) next_wake = std::min({next_wake, next_probe, next_share});
  };

  for (;;) {
    std::deque<verdict> ended;
    bool stopping = false;
    std::chrono::steady_clock::time_point grace_until;
    {
      const std::lock_guard lock(s.mutex);
      ended.swap(s.ended);
      s.wake = false;
      stopping = s.stopping.load(std::memory_order_relaxed);
      grace_until = s.grace_until;
    }
    time_point t = now();
    time_point next_wake = t + options_.poll_interval;

    // Every job that ended since the last round, then the claim of the slots free now, in one
    // store call: a freed slot waits for one commit before its next job, not one per job that
    // ended plus the claim's. The store applies the settlements before the claim counts the
    // group's leases, so the bound holds as with separate calls.
    std::vector<std::map<job_id, held_job>::iterator> fresh;
    for (auto& v : ended) {
      if (const auto it = finish(v); it != jobs.end()) fresh.push_back(it);
    }
    const group_stats st = group.stats();
    const std::size_t ahead = ahead_of(st);
    std::size_t k = 0;
    if (!slotted) {
      k = stopping ? 0 : claimable(t, st, ahead, next_wake);
    } else {
      k = slotted_round(t, st, ahead, stopping, next_wake);
    }
    bool again = false;  // a full claim: there may be more work and permits
    if (!fresh.empty() || k != 0) {
      std::vector<settlement> batch;
      batch.reserve(fresh.size());
      for (const auto it : fresh) batch.push_back(settlement_of(it->first, it->second));
      const claim_request next{
          .group = options_.group,
          .limit = k,
          // with run slots every process leases at most two jobs
          // ahead per slot it holds: 3 N in all, whatever each one's
          // `ahead` is now (a smaller cap would keep a process that
          // holds a free slot from claiming a job for it)
          .group_limit = slotted ? (1 + ahead_per_slot) * st.limit : st.limit + ahead,
          .lease = options_.lease};
      std::optional<settle_result> got;
      try {
        got = store_.settle_and_claim(batch, next);
      } catch (const std::exception& e) {
        logger()->warn("jobs consumer {}: settle and claim ({} ended) got no answer: {}",
                       options_.group, batch.size(), e.what());
      } catch (...) {
        logger()->warn("jobs consumer {}: settle and claim ({} ended) got no answer",
                       options_.group, batch.size());
      }
      for (std::size_t i = 0; i < fresh.size(); ++i) {
        // No answer (or none for this one): the lease may still be ours; retried alone.
        answer a = answer::unknown;
        if (got && i < got->accepted.size()) a = got->accepted[i] ? answer::yes : answer::no;
        settled(fresh[i], a, t);
      }
      if (got) {
        if (bucket) bucket->take(got->claimed.size(), t);
        again = k != 0 && got->claimed.size() == k;
        start(got->claimed, t);
      }
    }
    if (slotted) release_idle(t, next_wake);
    if (stopping && (jobs.empty() || std::chrono::steady_clock::now() >= grace_until)) break;

    if (!stopping && t >= next_requeue) {
      const std::size_t n =
          guarded("requeue_expired", [&] { return store_.requeue_expired(options_.retry); });
      c.requeued += n;
      if (n != 0) {
        logger()->info("jobs consumer {}: requeued {} expired leases", options_.group, n);
        again = true;  // claim them at once
      }
      next_requeue = t + options_.requeue_interval;
    }

    for (auto it = jobs.begin(); it != jobs.end();) {
      const auto here = it++;         // store_result() and a refusal may erase `here`
      const job_id id = here->first;  // a copy: `here` may be erased
      held_job& j = here->second;
      if (j.ended && j.retry_at <= t) {
        store_result(here, t);
        if (jobs.find(id) == jobs.end()) continue;
      }
      if (j.fenced) continue;
      if (j.next_beat <= t) {
        switch (
            ask("heartbeat", id, [&] { return store_.heartbeat(id, j.fence, options_.lease); })) {
          case answer::yes:
            ++c.heartbeats;
            break;
          case answer::no:
            fenced_out(id, j, "heartbeat");
            if (j.ended) {  // its result is refused too: nothing left to do here
              drop(here);
              continue;
            }
            break;
          case answer::unknown:
            break;  // tried again at the next beat; the lease may still be ours
        }
        j.next_beat = t + beat_every;
      }
      next_wake = std::min(next_wake, j.next_beat);
      if (j.ended) next_wake = std::min(next_wake, j.retry_at);
    }
    if (!stopping) next_wake = std::min(next_wake, next_requeue);

    if (again) continue;

    const time_point after = now();
    const auto wait = std::clamp<duration>(next_wake - after, std::chrono::milliseconds(1),
                                           options_.poll_interval);
    std::unique_lock lock(s.mutex);
    s.cv.wait_for(lock, wait, [&] {
      return s.wake || !s.ended.empty() || s.stopping.load(std::memory_order_relaxed) != stopping;
    });
  }

  slots.reset();  // gives back what is still held (the slots of jobs left running, too)
  all_done_ = jobs.empty();
  if (!jobs.empty()) {
    c.held -= jobs.size();
    c.abandoned += jobs.size();
    logger()->warn(
        "jobs consumer {}: stopped with {} jobs still running; left to lease expiry (their late "
        "results will be refused)",
        options_.group, jobs.size());
  }
}

}  // namespace qos::jobs

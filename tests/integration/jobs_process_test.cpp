// Job consumers as separate processes (tests/support/job_worker.cpp) on one PostgreSQL database
// (a private cluster: tests/support/pg_cluster): the group's N bound measured across two
// processes, no job run twice at once; a SIGKILLed consumer's job run again after its lease with
// attempts + 1; a SIGSTOPped worker past its lease fenced out after SIGCONT (its late completion
// refused, the re-run's result kept); SIGTERM finishing the running job and giving back the
// others before a clean exit; a worker whose listener connection was killed still finding a
// job that was never notified. Each run of a job is measured by the worker itself: a start and
// an end line on the system-wide monotonic clock in a shared log file.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "qos/jobs/pg_store.hpp"
#include "support/eventually.hpp"
#include "support/line_process.hpp"
#include "support/pg_env.hpp"

namespace qos::jobs {
namespace {

using namespace std::chrono_literals;
using test::eventually;
using test::sql;

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new test::pg_cluster_env);

// One job_worker process: "ready" when it consumes, its counters when SIGTERM ends it.
class worker : public test::line_process {
 public:
  worker(const std::string& conninfo, const std::string& log, const std::vector<std::string>& extra)
      : line_process(JOB_WORKER, args(conninfo, log, extra)) {}

  bool ready() { return line() == "ready"; }

  // SIGTERM, then its counters line and its exit status (-1: killed by a signal, or no exit
  // within 20 s).
  std::pair<std::string, int> terminate() {
    signal(SIGTERM);
    std::string counters = line().value_or("");
    return {counters, wait_exit(20s)};
  }

 private:
  static std::vector<std::string> args(const std::string& conninfo, const std::string& log,
                                       const std::vector<std::string>& extra) {
    std::vector<std::string> a = {"--conninfo", conninfo, "--log", log};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
};

// "key=value" out of the worker's counters line.
long counter(const std::string& line, const std::string& key) {
  const auto at = line.find(" " + key + "=");
  if (at == std::string::npos) return -1;
  return std::stol(line.substr(at + key.size() + 2));
}

// One run of a job, as the worker recorded it.
struct run {
  std::string id;
  long pid = 0;
  int attempt = 0;
  long long start = 0;
  long long end = -1;  // -1: started, never ended (killed, or still running)
};

std::vector<run> runs_in(const std::string& log) {
  std::ifstream in(log);
  std::map<std::string, run> open;  // by id, pid and attempt
  std::vector<run> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    char what = 0;
    run r;
    f >> what >> r.id >> r.pid >> r.attempt >> r.start;
    const std::string key = r.id + " " + std::to_string(r.pid) + " " + std::to_string(r.attempt);
    if (what == 'S') {
      open[key] = r;
    } else if (what == 'E' && open.count(key) != 0) {
      run done = open[key];
      done.end = r.start;
      out.push_back(done);
      open.erase(key);
    }
  }
  for (auto& [_, r] : open) out.push_back(r);
  return out;
}

// The most runs in progress at one instant (a run without an end counts to the end of time).
std::size_t most_at_once(const std::vector<run>& runs) {
  std::vector<std::pair<long long, int>> edges;
  for (const auto& r : runs) {
    edges.emplace_back(r.start, +1);
    edges.emplace_back(r.end < 0 ? LLONG_MAX : r.end, -1);
  }
  // At one instant, an end before a start: touching runs did not overlap.
  std::sort(edges.begin(), edges.end());
  int now = 0, most = 0;
  for (const auto& [_, d] : edges) most = std::max(most, now += d);
  return static_cast<std::size_t>(most);
}

class JobsProcess : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::pg_cluster::available()) GTEST_SKIP() << test::pg_missing_reason();
    ASSERT_TRUE(test::pg_cluster_env::cluster) << "the test cluster did not start";
    conninfo_ = test::fresh_database("p");
    store_ = std::make_unique<pg_store>(pg_store_options{.conninfo = conninfo_, .pool_size = 2});
    char dir[] = "/tmp/qos-jobs-proc-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    log_ = dir_ + "/runs.log";
  }
  void TearDown() override {
    if (!dir_.empty()) {
      ::unlink(log_.c_str());
      ::rmdir(dir_.c_str());
    }
  }

  job_id enqueue(const std::string& body) {
    const auto e = store_->enqueue({.route = "orders",
                                    .group = "db",
                                    .method = "POST",
                                    .target = "/orders",
                                    .body = body,
                                    .payload_hash = "h"},
                                   {});
    EXPECT_EQ(e.result, enqueue_result::kind::created) << e.error;
    return e.id;
  }
  int count(const std::string& state) {
    return std::stoi(sql(conninfo_, "SELECT count(*) FROM qos_jobs WHERE state = '" + state + "'"));
  }
  // Whether the log shows a run of `id` started (attempt `attempt`, any process).
  bool started(const job_id& id, int attempt = 1) {
    const auto runs = runs_in(log_);
    return std::any_of(runs.begin(), runs.end(),
                       [&](const run& r) { return r.id == id && r.attempt == attempt; });
  }
  std::unique_ptr<worker> spawn(std::vector<std::string> args) {
    auto w = std::make_unique<worker>(conninfo_, log_, std::move(args));
    EXPECT_TRUE(w->ready()) << "the worker did not start";
    return w;
  }

  std::string conninfo_;
  std::unique_ptr<pg_store> store_;
  std::string dir_;
  std::string log_;
};

TEST_F(JobsProcess, two_consumer_processes_never_run_more_than_n_and_no_job_twice_at_once) {
  constexpr int jobs = 60;
  constexpr std::size_t n = 3;
  // Alone, `a` would run n - 1 at once and `b` n: only the store's count across both keeps the
  // sum at n (each claims with its own limit as the group's). A consumer settles its ended jobs
  // and claims their slots again in one transaction, so leases a process holds never show as
  // free to another while it has work (include/qos/jobs/consumer.hpp): `b` starts once `a`
  // runs, and finds a slot free only within n. Short polls make it try for every one.
  const std::vector<std::string> args = {"--job-ms", "40", "--first-ms", "40", "--poll-ms", "10"};
  auto with_n = [&](std::size_t limit) {
    auto out = args;
    out.insert(out.end(), {"--n", std::to_string(limit)});
    return out;
  };
  std::vector<job_id> ids;
  for (int i = 0; i < jobs; ++i) ids.push_back(enqueue(std::to_string(i)));
  auto a = spawn(with_n(n - 1));
  ASSERT_TRUE(eventually([&] { return !runs_in(log_).empty(); }, 20s));
  auto b = spawn(with_n(n));
  ASSERT_TRUE(eventually([&] { return count("succeeded") == jobs; }, 60s))
      << count("succeeded") << " of " << jobs << " succeeded";
  const auto [a_counters, a_exit] = a->terminate();
  const auto [b_counters, b_exit] = b->terminate();
  EXPECT_EQ(a_exit, 0) << a_counters;
  EXPECT_EQ(b_exit, 0) << b_counters;

  const auto runs = runs_in(log_);
  ASSERT_EQ(runs.size(), static_cast<std::size_t>(jobs));
  const std::size_t most = most_at_once(runs);
  EXPECT_LE(most, n);
  EXPECT_GE(most, 2u);  // they did run side by side
  std::map<long, int> per_process;
  for (const auto& r : runs) {
    EXPECT_GE(r.end, r.start) << r.id;
    EXPECT_EQ(r.attempt, 1) << r.id;
    ++per_process[r.pid];
  }
  EXPECT_EQ(per_process.size(), 2u);  // both processes took part
  // No job twice at once (nor twice at all): one run per id.
  std::map<std::string, int> per_job;
  for (const auto& r : runs) ++per_job[r.id];
  for (const auto& id : ids) EXPECT_EQ(per_job[id], 1) << id;
  EXPECT_EQ(counter(a_counters, "succeeded") + counter(b_counters, "succeeded"), jobs);
  EXPECT_GE(counter(b_counters, "succeeded"), 1);
  EXPECT_EQ(counter(a_counters, "fenced_out") + counter(b_counters, "fenced_out"), 0);
}

TEST_F(JobsProcess, a_sigkilled_consumers_job_runs_again_after_its_lease_with_one_more_attempt) {
  const job_id id = enqueue("x");
  // The first attempt takes far longer than the test: only the kill ends it.
  auto a = spawn({"--n", "1", "--lease-ms", "800", "--first-ms", "60000", "--job-ms", "10"});
  ASSERT_TRUE(eventually([&] { return started(id); }, 20s));
  const long a_pid = a->pid();
  ASSERT_TRUE(a->kill9());
  EXPECT_EQ(count("running"), 1);  // its lease is left behind, held by nobody
  auto b = spawn({"--n", "1", "--lease-ms", "800", "--first-ms", "60000", "--job-ms", "10"});
  ASSERT_TRUE(eventually(
      [&] {
        const auto s = store_->status(id);
        return s && s->state == job_state::succeeded;
      },
      30s));
  const auto s = store_->status(id);
  EXPECT_EQ(s->attempts, 2);
  ASSERT_TRUE(s->result.has_value());
  EXPECT_EQ(s->result->status, 201);
  EXPECT_EQ(s->result->body, "pid=" + std::to_string(b->pid()) + " attempt=2");
  const auto runs = runs_in(log_);
  ASSERT_EQ(runs.size(), 2u);
  const auto first =
      std::find_if(runs.begin(), runs.end(), [](const run& r) { return r.attempt == 1; });
  ASSERT_NE(first, runs.end());
  EXPECT_EQ(first->pid, a_pid);
  EXPECT_EQ(first->end, -1);  // killed mid-job
  const auto [counters, exit] = b->terminate();
  EXPECT_EQ(exit, 0) << counters;
  EXPECT_EQ(counter(counters, "succeeded"), 1);
}

TEST_F(JobsProcess, a_sigstopped_worker_past_its_lease_is_fenced_out_after_sigcont) {
  const job_id id = enqueue("x");
  // A's first attempt lasts 1.5 s, far past its 600 ms lease once it is stopped.
  auto a = spawn({"--n", "1", "--lease-ms", "600", "--first-ms", "1500", "--job-ms", "10"});
  ASSERT_TRUE(eventually([&] { return started(id); }, 20s));
  a->signal(SIGSTOP);
  auto b = spawn({"--n", "1", "--lease-ms", "600", "--first-ms", "1500", "--job-ms", "10"});
  ASSERT_TRUE(eventually(
      [&] {
        const auto s = store_->status(id);
        return s && s->state == job_state::succeeded;
      },
      30s));
  const std::string b_result = "pid=" + std::to_string(b->pid()) + " attempt=2";
  EXPECT_EQ(store_->status(id)->result->body, b_result);
  // A wakes up with its handler done or nearly: its heartbeat and completion are refused.
  a->signal(SIGCONT);
  ASSERT_TRUE(eventually(
      [&] {
        const auto runs = runs_in(log_);
        return std::any_of(runs.begin(), runs.end(), [&](const run& r) {
          return r.pid == a->pid() && r.attempt == 1 && r.end >= 0;
        });
      },
      20s));
  const auto [a_counters, a_exit] = a->terminate();
  EXPECT_EQ(a_exit, 0) << a_counters;  // its run ended; nothing left behind
  EXPECT_EQ(counter(a_counters, "fenced_out"), 1) << a_counters;
  EXPECT_EQ(counter(a_counters, "succeeded"), 0) << a_counters;
  const auto s = store_->status(id);
  EXPECT_EQ(s->state, job_state::succeeded);
  EXPECT_EQ(s->attempts, 2);
  EXPECT_EQ(s->result->body, b_result);  // the re-run's result is kept
  const auto [b_counters, b_exit] = b->terminate();
  EXPECT_EQ(b_exit, 0) << b_counters;
  EXPECT_EQ(counter(b_counters, "succeeded"), 1) << b_counters;
}

TEST_F(JobsProcess, sigterm_finishes_the_running_jobs_gives_back_the_rest_and_exits_cleanly) {
  // n = 1: one job runs, the others wait (claimed only with a free permit, so most stay
  // queued; one claimed while waiting for the permit is given back at stop).
  std::vector<job_id> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(enqueue(std::to_string(i)));
  auto a = spawn({"--n", "1", "--first-ms", "400", "--job-ms", "400", "--grace-ms", "10000"});
  ASSERT_TRUE(eventually(
      [&] {
        const auto runs = runs_in(log_);
        return !runs.empty();
      },
      20s));
  const auto running = runs_in(log_).front();
  const auto [counters, exit] = a->terminate();
  EXPECT_EQ(exit, 0) << counters;
  EXPECT_EQ(counter(counters, "abandoned"), 0) << counters;
  EXPECT_EQ(counter(counters, "fenced_out"), 0) << counters;
  // The job running at SIGTERM finished and its result is stored; nothing is left running.
  const auto s = store_->status(running.id);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->state, job_state::succeeded);
  EXPECT_EQ(count("running"), 0);
  for (const auto& r : runs_in(log_)) EXPECT_GE(r.end, 0) << r.id;  // every run ended
  const long succeeded = counter(counters, "succeeded");
  EXPECT_GE(succeeded, 1);
  EXPECT_EQ(count("succeeded"), succeeded);
  EXPECT_EQ(count("queued"), 4 - succeeded);  // the rest can run elsewhere
}

TEST_F(JobsProcess, a_worker_whose_listener_was_killed_still_finds_an_unnotified_job) {
  auto a = spawn({"--n", "1", "--poll-ms", "300", "--first-ms", "10"});
  const auto listener = [&] {
    return sql(conninfo_,
               "SELECT pid FROM pg_stat_activity WHERE application_name = 'qos-jobs-listener'"
               " AND datname = current_database()");
  };
  std::string pid;
  ASSERT_TRUE(eventually([&] { return !(pid = listener()).empty(); }, 20s));
  EXPECT_EQ(sql(conninfo_, "SELECT pg_terminate_backend(" + pid + ")"), "t");
  std::string fresh;
  ASSERT_TRUE(eventually(
      [&] {
        fresh = listener();
        return !fresh.empty() && fresh != pid;
      },
      20s));
  // Inserted as a store would, but with no NOTIFY at all, after the listener came back: only
  // the worker's poll (or the wake-up its reconnection gives) can find it.
  const std::string id = sql(conninfo_,
                             "INSERT INTO qos_jobs (id, route, grp, tenant, method, target,"
                             " headers, body, priority, payload_hash) VALUES (md5(random()::text),"
                             " 'orders', 'db', '', 'POST', '/orders', '', 'silent', 0, 'h')"
                             " RETURNING id");
  ASSERT_EQ(id.size(), 32u);
  ASSERT_TRUE(eventually(
      [&] {
        const auto s = store_->status(id);
        return s && s->state == job_state::succeeded;
      },
      20s));
  EXPECT_EQ(store_->status(id)->result->body, "pid=" + std::to_string(a->pid()) + " attempt=1");
  const auto [counters, exit] = a->terminate();
  EXPECT_EQ(exit, 0) << counters;
  EXPECT_EQ(counter(counters, "succeeded"), 1) << counters;
}

}  // namespace
}  // namespace qos::jobs

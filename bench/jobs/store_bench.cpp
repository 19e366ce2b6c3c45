// Enqueue latency and committed jobs/s of the job stores (issue 13, benchmark 8b): what an
// accept route's 202 waits for. One line per configuration:
//
//   sqlite full   gc0us open 2000/s     : latency from the scheduled send (p50/p99/max)
//   sqlite normal gc0us open 2000/s       (no window, jobs.group_commit's default: a
//   sqlite full   gc0us closed C=32         transaction takes what arrived during the last)
//   sqlite normal gc0us closed C=32     : C enqueuers back to back
//   sqlite full   gc1500us open 2000/s  : the open loop again with a 1.5 ms group-commit
//   sqlite normal gc1500us open 2000/s    window (each enqueue waits for it)
//   postgres pool 8 closed C=32         : a private PostgreSQL 15 cluster (unix socket only,
//   postgres pool 32 closed C=32          default settings), with the pool jobs.pool defaults
//                                         to and with one connection per enqueuer
//
// What moves the PostgreSQL line: keyless enqueues are committed in batches (every caller
// waiting when a batch starts shares its transaction, one round trip and one WAL flush; two
// batches in flight, see pg_store_options), so callers beyond one batch wait for the next;
// with a pool per caller, more backends compete for the CPUs.
//
// Run it (Release build, a quiet machine, the folder on the disk being measured: fsync on a
// tmpfs costs nothing):
//
//   cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DQOS_BUILD_BENCH=ON &&
//   cmake --build build-bench --target store_bench &&
//   bench/jobs/store.sh build-bench    # runs build-bench/bench/store_bench --dir bench/out
//
// Options: --seconds S (per configuration, default 10), --rate R (open loop, default 2000),
// --concurrency C (closed loop, default 32), --dir D (where the SQLite files and the
// PostgreSQL cluster live, default the current folder), --group-commit-us U (the SQLite
// store's group-commit window, default 0 as jobs.group_commit; a window > 0 is added to every
// enqueue's wait, so it is most of NORMAL's latency), --only sqlite|postgres.
//
// Each enqueue is a distinct job without an idempotency key (the common case; a keyed enqueue
// adds a key lookup and insert), 200 bytes of body, max_depth 10,000,000 so nothing is refused
// while the queue grows (nothing consumes it). Latency is measured per call: in the open loop
// from the time the call was scheduled (a late send counts its wait: no coordinated omission),
// in the closed loop from the call. "committed/s" counts created jobs over the run's length,
// checked against the store's own depth afterwards. Targets (issue 13): SQLite FULL p99 <= 10 ms
// at 2,000/s, NORMAL p99 <= 2 ms, PostgreSQL p99 <= 15 ms at 32 concurrent.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "qos/jobs/sqlite_store.hpp"
#ifdef QOS_BENCH_PG
#include "qos/jobs/pg_store.hpp"
#include "support/pg_cluster.hpp"
#endif

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using qos::jobs::enqueue_result;
using qos::jobs::job_request;
using qos::jobs::job_store;

struct settings {
  double seconds = 10;
  double rate = 2000;
  int concurrency = 32;
  std::string dir = ".";
  std::string only;
  long group_commit_us = 0;  // jobs.group_commit's default
};

struct outcome {
  std::vector<double> latency_ms;  // created enqueues only
  std::size_t created = 0, other = 0;
  double elapsed_s = 0;
  std::string first_error;
};

job_request request(std::size_t i) {
  job_request r;
  r.route = "bench";
  r.group = "db";
  r.method = "POST";
  r.target = "/orders";
  r.headers = {{"content-type", "application/json"}};
  r.body = std::string(180, 'x') + std::to_string(i);
  r.payload_hash = std::to_string(i);
  return r;
}

const qos::jobs::enqueue_options options{.max_depth = 10'000'000};

// Per-thread results merged at the end (no shared writes on the hot path).
struct thread_result {
  std::vector<double> latency_ms;
  std::size_t created = 0, other = 0;
  std::string error;
};

void account(thread_result& t, const enqueue_result& e, steady::time_point from) {
  const double ms = std::chrono::duration<double, std::milli>(steady::now() - from).count();
  if (e.result == enqueue_result::kind::created) {
    ++t.created;
    t.latency_ms.push_back(ms);
  } else {
    ++t.other;
    if (t.error.empty()) t.error = e.error.empty() ? "not created" : e.error;
  }
}

outcome merge(std::vector<thread_result>& parts, steady::time_point t0) {
  outcome o;
  o.elapsed_s = std::chrono::duration<double>(steady::now() - t0).count();
  for (auto& p : parts) {
    o.latency_ms.insert(o.latency_ms.end(), p.latency_ms.begin(), p.latency_ms.end());
    o.created += p.created;
    o.other += p.other;
    if (o.first_error.empty()) o.first_error = p.error;
  }
  return o;
}

// Open loop: call i is due at t0 + i/rate, whatever earlier calls did; enough threads that a
// slow call delays only the calls behind it in one thread's turn, and that wait is counted.
outcome open_loop(job_store& store, double rate, double seconds) {
  const auto total = static_cast<std::size_t>(rate * seconds);
  const int threads = std::clamp(static_cast<int>(rate / 20), 16, 256);
  std::atomic<std::size_t> next{0};
  std::vector<thread_result> parts(static_cast<std::size_t>(threads));
  const auto t0 = steady::now() + 50ms;
  const auto period = std::chrono::duration<double>(1.0 / rate);
  std::vector<std::thread> pool;
  for (int k = 0; k < threads; ++k) {
    pool.emplace_back([&, k] {
      for (;;) {
        const std::size_t i = next.fetch_add(1);
        if (i >= total) return;
        const auto due = t0 + std::chrono::duration_cast<steady::duration>(period * i);
        std::this_thread::sleep_until(due);
        account(parts[static_cast<std::size_t>(k)], store.enqueue(request(i), options), due);
      }
    });
  }
  for (auto& t : pool) t.join();
  return merge(parts, t0);
}

// Closed loop: `concurrency` callers, each sending its next enqueue when the last returned.
outcome closed_loop(job_store& store, int concurrency, double seconds) {
  std::vector<thread_result> parts(static_cast<std::size_t>(concurrency));
  std::atomic<std::size_t> next{0};
  const auto t0 = steady::now();
  const auto until =
      t0 + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(seconds));
  std::vector<std::thread> pool;
  for (int k = 0; k < concurrency; ++k) {
    pool.emplace_back([&, k] {
      while (steady::now() < until) {
        const auto from = steady::now();
        account(parts[static_cast<std::size_t>(k)], store.enqueue(request(next++), options), from);
      }
    });
  }
  for (auto& t : pool) t.join();
  return merge(parts, t0);
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

// One line: the configuration, the counts, the latency and the target when there is one.
void report(const std::string& name, outcome o, std::size_t depth,
            std::optional<double> target_p99_ms) {
  const double p50 = percentile(o.latency_ms, 0.50);
  const double p99 = percentile(o.latency_ms, 0.99);
  const double max =
      o.latency_ms.empty() ? 0 : *std::max_element(o.latency_ms.begin(), o.latency_ms.end());
  std::string verdict;
  if (target_p99_ms) {
    char buf[64];
    std::snprintf(buf, sizeof buf, " | target p99 <= %g ms: %s", *target_p99_ms,
                  p99 <= *target_p99_ms ? "met" : "MISSED");
    verdict = buf;
  }
  std::printf(
      "%-34s | %8zu created %6.0f committed/s | p50 %7.2f ms  p99 %7.2f ms  max %8.2f ms%s%s\n",
      name.c_str(), o.created, static_cast<double>(o.created) / o.elapsed_s, p50, p99, max,
      verdict.c_str(),
      depth == o.created ? ""
                         : (" | store depth " + std::to_string(depth) + " != created").c_str());
  if (o.other != 0) {
    std::printf("%-34s | %zu enqueues not created, first: %s\n", "", o.other,
                o.first_error.c_str());
  }
  std::fflush(stdout);
}

// A fresh store per configuration, closed (and its files removed) after it.
void run_sqlite(const settings& s, const std::string& dir, bool full, bool open,
                long group_commit_us) {
  const std::string folder = dir + "/sqlite-" + (full ? "full" : "normal") + (open ? "-o" : "-c") +
                             std::to_string(group_commit_us);
  std::filesystem::create_directories(folder);
  std::string name = std::string("sqlite ") + (full ? "full  " : "normal") + " gc" +
                     std::to_string(group_commit_us) + "us ";
  std::optional<double> target;
  outcome o;
  std::size_t depth = 0;
  {
    qos::jobs::sqlite_store store(
        {.path = folder + "/jobs.db",
         .synchronous = full ? qos::jobs::sqlite_options::sync_mode::full
                             : qos::jobs::sqlite_options::sync_mode::normal,
         .group_commit = std::chrono::microseconds(group_commit_us)});
    if (open) {
      name += "open " + std::to_string(static_cast<int>(s.rate)) + "/s";
      if (static_cast<int>(s.rate) == 2000) target = full ? 10.0 : 2.0;
      o = open_loop(store, s.rate, s.seconds);
    } else {
      name += "closed C=" + std::to_string(s.concurrency);
      o = closed_loop(store, s.concurrency, s.seconds);
    }
    depth = store.depth("bench");
  }
  std::filesystem::remove_all(folder);
  report(name, std::move(o), depth, target);
}

#ifdef QOS_BENCH_PG
void run_postgres(const settings& s, qos::test::pg_cluster& cluster, std::size_t pool, int db) {
  const std::string dbname = "bench" + std::to_string(db);
  {
    // CREATE DATABASE through a store-less connection: the store migrates its own schema.
    const std::string cmd = std::string(qos::test::pg_cluster::bin) + "/psql \"" +
                            cluster.conninfo() + "\" -qc 'CREATE DATABASE " + dbname +
                            "' >/dev/null";
    if (std::system(cmd.c_str()) != 0) {
      std::printf("postgres: CREATE DATABASE failed\n");
      return;
    }
  }
  qos::jobs::pg_store store({.conninfo = cluster.conninfo(dbname), .pool_size = pool});
  const std::string name =
      "postgres pool " + std::to_string(pool) + " closed C=" + std::to_string(s.concurrency);
  outcome o = closed_loop(store, s.concurrency, s.seconds);
  const std::size_t depth = store.depth("bench");
  report(name, std::move(o), depth,
         s.concurrency == 32 ? std::optional<double>(15.0) : std::nullopt);
}
#endif

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: store_bench [--seconds S] [--rate R] [--concurrency C] [--dir D]"
               " [--group-commit-us U] [--only sqlite|postgres]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) usage();
    const std::string v = argv[++i];
    if (k == "--seconds") {
      s.seconds = std::stod(v);
    } else if (k == "--rate") {
      s.rate = std::stod(v);
    } else if (k == "--concurrency") {
      s.concurrency = std::stoi(v);
    } else if (k == "--dir") {
      s.dir = v;
    } else if (k == "--group-commit-us") {
      s.group_commit_us = std::stol(v);
    } else if (k == "--only") {
      s.only = v;
    } else {
      usage();
    }
  }
  if (!(s.seconds > 0) || !(s.rate > 0) || s.concurrency < 1) usage();
  std::filesystem::create_directories(s.dir);
  std::string work = std::filesystem::absolute(s.dir).string() + "/store-bench-XXXXXX";
  if (::mkdtemp(work.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  std::printf("store_bench: %g s per configuration, open loop %g/s, closed loop C=%d, in %s\n",
              s.seconds, s.rate, s.concurrency, work.c_str());
  std::fflush(stdout);

  if (s.only.empty() || s.only == "sqlite") {
    run_sqlite(s, work, true, true, s.group_commit_us);
    run_sqlite(s, work, false, true, s.group_commit_us);
    run_sqlite(s, work, true, false, s.group_commit_us);
    run_sqlite(s, work, false, false, s.group_commit_us);
    // The open loop again with the other choice: a 1.5 ms window, or none.
    const long other = s.group_commit_us == 0 ? 1500 : 0;
    run_sqlite(s, work, true, true, other);
    run_sqlite(s, work, false, true, other);
  }
  if (s.only.empty() || s.only == "postgres") {
#ifdef QOS_BENCH_PG
    if (!qos::test::pg_cluster::available()) {
      std::printf("postgres: skipped, %s/initdb is not installed\n", qos::test::pg_cluster::bin);
    } else {
      // The cluster's folder on the measured disk too; postgres (the user) must reach it.
      std::filesystem::permissions(work, std::filesystem::perms::others_exec,
                                   std::filesystem::perm_options::add);
      std::unique_ptr<qos::test::pg_cluster> cluster;
      try {
        cluster = std::make_unique<qos::test::pg_cluster>(work);
      } catch (const std::exception& e) {
        std::printf("postgres: no cluster under %s (%s); under /tmp instead\n", work.c_str(),
                    e.what());
        cluster = std::make_unique<qos::test::pg_cluster>();
      }
      run_postgres(s, *cluster, 8, 1);  // jobs.pool's default
      run_postgres(s, *cluster, static_cast<std::size_t>(s.concurrency), 2);
    }
#else
    std::printf("postgres: skipped, built without libpq\n");
#endif
  }
  std::filesystem::remove_all(work);
  return 0;
}

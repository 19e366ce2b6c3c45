// A job consumer process for the process tests (tests/integration/jobs_process_test.cpp): one
// consumer of group "db" (route "orders", limit --n) over the PostgreSQL store, as a deployment
// would run it beside others on one database. Each run of a job appends a start line and an
// end line to --log (O_APPEND: each line one write, whole), with the system-wide monotonic clock,
// so the test can measure how many ran at once across processes:
//   S <job id> <pid> <attempt> <ns>
//   E <job id> <pid> <attempt> <ns>
// A job's first attempt takes --first-ms, later attempts --job-ms; its result is 201 with body
// "pid=<pid> attempt=<n>". Prints "ready" once consuming. On SIGTERM or SIGINT it stops the
// consumer with --grace-ms, prints its counters on one line and exits 0 when no job was left
// running (3 otherwise).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "qos/jobs/consumer.hpp"
#include "qos/jobs/pg_store.hpp"

namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

struct args {
  std::string conninfo;
  std::string log;
  std::size_t n = 2;
  milliseconds lease{5000};
  milliseconds poll{100};
  milliseconds job{50};
  milliseconds first{50};
  milliseconds grace{5000};
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "job_worker: %s\nusage: job_worker --conninfo S --log PATH [--n N] [--lease-ms L]"
               " [--poll-ms P] [--job-ms J] [--first-ms F] [--grace-ms G]\n",
               why);
  std::exit(2);
}

args parse(int argc, char** argv) {
  args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) usage(("no value for " + k).c_str());
    const std::string v = argv[++i];
    if (k == "--conninfo") {
      a.conninfo = v;
    } else if (k == "--log") {
      a.log = v;
    } else if (k == "--n") {
      a.n = std::stoul(v);
    } else if (k == "--lease-ms") {
      a.lease = milliseconds(std::stol(v));
    } else if (k == "--poll-ms") {
      a.poll = milliseconds(std::stol(v));
    } else if (k == "--job-ms") {
      a.job = milliseconds(std::stol(v));
    } else if (k == "--first-ms") {
      a.first = milliseconds(std::stol(v));
    } else if (k == "--grace-ms") {
      a.grace = milliseconds(std::stol(v));
    } else {
      usage(("unknown option " + k).c_str());
    }
  }
  if (a.conninfo.empty() || a.log.empty()) usage("--conninfo and --log are required");
  return a;
}

void record(int fd, char what, const qos::jobs::claimed_job& j) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count();
  const std::string line = std::string(1, what) + " " + j.id + " " + std::to_string(::getpid()) +
                           " " + std::to_string(j.attempt) + " " + std::to_string(ns) + "\n";
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) std::abort();
}

}  // namespace

int main(int argc, char** argv) {
  const args a = parse(argc, argv);
  // Before any thread starts, so every thread inherits the mask and sigwait() below gets them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  const int log = ::open(a.log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) usage(("cannot open " + a.log + ": " + std::strerror(errno)).c_str());

  qos::jobs::pg_store store({.conninfo = a.conninfo, .pool_size = 4});
  qos::executor exec({.threads = 2, .inbox = 1024});
  qos::admission adm({{.name = "db", .limiter = {.max_concurrent = a.n, .max_queue = 100}}},
                     {{.name = "orders", .group = "db", .max_wait = 5s}}, exec);
  auto handler = [&](const qos::jobs::claimed_job& j) {
    record(log, 'S', j);
    std::this_thread::sleep_for(j.attempt == 1 ? a.first : a.job);
    record(log, 'E', j);
    return qos::response{
        .status = 201,
        .body = "pid=" + std::to_string(::getpid()) + " attempt=" + std::to_string(j.attempt)};
  };
  qos::jobs::consumer c(
      store, adm,
      {.group = "db",
       .routes = {{.name = "orders", .handler = handler, .kind = qos::handler_kind::blocking}},
       .lease = a.lease,
       .poll_interval = a.poll,
       .retry = {.max_attempts = 5, .base = 0ms, .cap = 0ms, .jitter = 0},
       .wait_for_work = [&store](const std::string& g, milliseconds t) {
         return store.wait_for_work(g, t);
       }});
  std::printf("ready\n");
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  const bool all_done = c.stop(a.grace);
  std::printf(
      "stopped claimed=%llu succeeded=%llu failed=%llu given_back=%llu fenced_out=%llu "
      "abandoned=%llu\n",
      static_cast<unsigned long long>(c.claimed()), static_cast<unsigned long long>(c.succeeded()),
      static_cast<unsigned long long>(c.failed()), static_cast<unsigned long long>(c.given_back()),
      static_cast<unsigned long long>(c.fenced_out()),
      static_cast<unsigned long long>(c.abandoned()));
  std::fflush(stdout);
  exec.stop();
  ::close(log);
  return all_done ? 0 : 3;
}

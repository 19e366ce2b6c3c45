// A process that uses a SQLite job store until the crash test kills it:
//   enqueue PATH   four threads enqueue jobs forever; each id is printed after enqueue()
//                  returned (so a printed id is a 202 the store must keep)
//   claim PATH     claims one job of group "db" with a 60 s lease, prints "ID FENCE ATTEMPT",
//                  then waits to be killed
//   efbig PATH     enqueues one job (prints "first KIND ID"), then makes every file write past
//                  the current end fail (RLIMIT_FSIZE 0, SIGXFSZ ignored) and enqueues eight
//                  more from eight threads at once (prints "KIND" for each)
// Lines are written with one write(2) each, so lines of several threads never interleave.
// stdout must be a pipe in efbig mode: the file size limit would refuse a regular file too.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "qos/jobs/sqlite_store.hpp"

namespace {

using namespace qos::jobs;

void say(const std::string& line) {
  const std::string out = line + "\n";
  [[maybe_unused]] const ssize_t n = ::write(1, out.data(), out.size());
}

const char* name(enqueue_result::kind k) {
  switch (k) {
    case enqueue_result::kind::created:
      return "created";
    case enqueue_result::kind::duplicate:
      return "duplicate";
    case enqueue_result::kind::conflict:
      return "conflict";
    case enqueue_result::kind::full:
      return "full";
    case enqueue_result::kind::unavailable:
      return "unavailable";
  }
  return "?";
}

job_request job(const std::string& body, std::optional<std::string> key = std::nullopt) {
  job_request j;
  j.route = "orders";
  j.group = "db";
  j.method = "POST";
  j.target = "/orders";
  j.body = body;
  j.payload_hash = "hash:" + body;
  j.idempotency_key = std::move(key);
  return j;
}

int enqueue_forever(const std::string& path) {
  sqlite_store store({.path = path});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&store, t] {
      for (int i = 0;; ++i) {
        const auto r =
            store.enqueue(job(std::to_string(t) + "/" + std::to_string(i)), {.max_depth = 1000000});
        if (r.result != enqueue_result::kind::created) {
          say(std::string("error ") + name(r.result) + " " + r.error);
          ::_exit(3);
        }
        say(r.id);
      }
    });
  }
  for (auto& t : threads) t.join();
  return 0;
}

int claim_and_hang(const std::string& path) {
  sqlite_store store({.path = path});
  const auto claimed = store.claim("db", 1, 1, std::chrono::seconds(60));
  if (claimed.size() != 1) {
    say("error nothing to claim");
    return 3;
  }
  say(claimed[0].id + " " + std::to_string(claimed[0].fence) + " " +
      std::to_string(claimed[0].attempt));
  for (;;) ::pause();
}

int enqueue_past_the_file_size_limit(const std::string& path) {
  sqlite_store store({.path = path});
  const auto first = store.enqueue(job("first", "k0"), {});
  say(std::string("first ") + name(first.result) + " " + first.id);
  // An empty WAL: the next commit must grow it, which the limit forbids (EFBIG).
  store.checkpoint();
  ::signal(SIGXFSZ, SIG_IGN);
  rlimit limit{};
  ::getrlimit(RLIMIT_FSIZE, &limit);
  limit.rlim_cur = 0;
  if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) {
    say(std::string("error setrlimit ") + std::strerror(errno));
    return 3;
  }
  std::vector<std::thread> threads;
  for (int t = 1; t <= 8; ++t) {
    threads.emplace_back([&store, t] {
      const auto r = store.enqueue(job("later", "k" + std::to_string(t)), {});
      say(name(r.result));
      std::fprintf(stderr, "%s\n", r.error.c_str());  // why, for a person reading the log
    });
  }
  for (auto& t : threads) t.join();
  // No orderly close: it would try to checkpoint under the same limit.
  ::_exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s enqueue|claim|efbig PATH\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  try {
    if (mode == "enqueue") return enqueue_forever(argv[2]);
    if (mode == "claim") return claim_and_hang(argv[2]);
    if (mode == "efbig") return enqueue_past_the_file_size_limit(argv[2]);
  } catch (const std::exception& e) {
    say(std::string("error ") + e.what());
    return 3;
  }
  return 2;
}

// qos_consumer: a Pistache service that adopted qos (service.hpp), and its smoke test.
//
//   qos_consumer [--port N]   serves on 127.0.0.1:N (0, the default: any free port) until
//                             SIGINT or SIGTERM: GET /items/:id (the guarded database),
//                             /images/:id (cache; "logo" is a hit), /metrics
//   qos_consumer --self-test  starts the service on a free port, checks over real HTTP that
//                             the database route is limited and shed while the cache still
//                             answers, stops, exits 0; on a failure prints why and exits 1
//   qos_consumer --version    prints the version of qos it was built with
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "http_get.hpp"
#include "service.hpp"

namespace {

using namespace std::chrono_literals;

// Collects failed checks; the self-test fails when there is any.
struct checks {
  int failed = 0;
  void expect(bool ok, const std::string& what) {
    if (!ok) {
      std::cerr << "self-test: FAILED: " << what << '\n';
      ++failed;
    }
  }
};

template <class Predicate>
bool eventually(Predicate p, std::chrono::milliseconds within = 5s) {
  const auto until = std::chrono::steady_clock::now() + within;
  while (!p()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// Four concurrent reads of the guarded database route (max_concurrent 1, max_queue 1), each on
// its own connection and thread. The database is held until two of them are answered, so the
// four certainly overlap: one runs, one waits, two find the queue full and get the fallback;
// then the two left are answered 200, one after the other.
int self_test() {
  // Everything is done in well under a second; a hang anywhere ends the process here.
  std::thread([] {
    std::this_thread::sleep_for(10s);
    std::cerr << "self-test: FAILED: not done after 10 s (watchdog)\n";
    std::_Exit(2);
  }).detach();

  checks c;
  consumer::service svc(0);
  auto& db = svc.database();
  db.hold();
  svc.serve();
  const auto port = svc.port();
  std::cout << "self-test: serving on 127.0.0.1:" << port << '\n';

  constexpr int clients = 4;
  std::vector<std::optional<consumer::reply>> replies(clients);
  std::vector<std::string> errors(clients);
  std::atomic<int> answered{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      try {
        replies[i] = consumer::http_get(port, "/items/" + std::to_string(i));
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
      ++answered;
    });
  }

  c.expect(eventually([&] { return answered >= 2; }),
           "two of four requests answered while the database is busy");
  // The permit's holder may still be on its way to the blocking pool.
  c.expect(eventually([&] { return db.in_flight() == 1; }),
           "one query running while the others wait or are shed");
  // The cache answers on the reactor while the database route is full.
  try {
    const auto hit = consumer::http_get(port, "/images/logo");
    c.expect(hit.status == 200 && hit.body == "<svg>logo</svg>",
             "the cache route answers 200 while the database is busy (got " +
                 std::to_string(hit.status) + ")");
  } catch (const std::exception& e) {
    c.expect(false, std::string("the cache route: ") + e.what());
  }
  c.expect(db.in_flight() == 1, "the database stayed busy during the cache hit");
  db.release();
  for (auto& t : threads) t.join();

  int ok = 0;
  int fallback = 0;
  for (int i = 0; i < clients; ++i) {
    c.expect(errors[i].empty(), "request " + std::to_string(i) + ": " + errors[i]);
    if (!replies[i]) continue;
    const auto& r = *replies[i];
    if (r.status == 200) {
      ++ok;
    } else if (r.status == 503 && !r.header(qos::outcome_header).empty()) {
      ++fallback;
    } else {
      c.expect(false, "request " + std::to_string(i) + " got " + std::to_string(r.status) +
                          " (X-QoS-Outcome '" + r.header(qos::outcome_header) + "')");
    }
  }
  std::cout << "self-test: " << ok << " answered 200, " << fallback
            << " got the fallback, most queries at once: " << db.most_in_flight() << '\n';
  c.expect(db.most_in_flight() == 1, "at most one database query at a time");
  c.expect(ok >= 1, "at least one request answered 200");
  c.expect(fallback >= 1, "at least one request answered 503 with X-QoS-Outcome");

  try {
    c.expect(consumer::http_get(port, "/metrics").status == 200, "/metrics answers 200");
  } catch (const std::exception& e) {
    c.expect(false, std::string("/metrics: ") + e.what());
  }
  c.expect(svc.stop(), "the service drains and stops");
  if (c.failed != 0) return 1;
  std::cout << "self-test: passed\n";
  return 0;
}

// Serves until SIGINT or SIGTERM. The signals are blocked before any thread starts, so every
// thread inherits the mask and sigwait() here receives them: no handler, no async code.
int serve(std::uint16_t port) {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  consumer::service svc(port);
  svc.serve();
  std::cout << "qos_consumer: serving on 127.0.0.1:" << svc.port() << std::endl;
  int signal = 0;
  sigwait(&stop_signals, &signal);
  return svc.stop() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.size() == 1 && args[0] == "--self-test") return self_test();
    if (args.size() == 1 && args[0] == "--version") {
      std::cout << "qos " << qos::version() << '\n';
      return 0;
    }
    if (args.empty()) return serve(0);
    if (args.size() == 2 && args[0] == "--port") {
      return serve(static_cast<std::uint16_t>(std::stoul(args[1])));
    }
  } catch (const std::exception& e) {
    std::cerr << "qos_consumer: " << e.what() << '\n';
    return 1;
  }
  std::cerr << "usage: qos_consumer [--port N | --self-test | --version]\n";
  return 2;
}

// The example service as an operator runs it, as a child process with an admin listener:
//  - SIGHUP with 300 requests parked behind the db group (limit 8, then 16 in the file): the
//    process lives on, /qos/status shows the new limit in use at once, and every request gets
//    exactly one 2xx answer;
//  - a hundred SIGHUPs within about a second, the file flipping between two limits, while
//    requests keep arriving: the process lives on and nothing is lost; then SIGTERM with requests
//    parked: exit status 0 and every request answered (2xx, or 503 with X-QoS-Outcome: shutdown).
// Loopback only; every wait has a deadline; the child is killed if a test fails midway.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "integration/parked_batch.hpp"
#include "support/child_process.hpp"
#include "support/eventually.hpp"
#include "support/http_client.hpp"

#ifndef CATALOG_SERVICE
#error "CATALOG_SERVICE must name the catalog_service binary"
#endif

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;
using qos::test::eventually;
using qos::test::parked_batch;

using child = qos::test::child_process;

child spawn(const std::vector<std::string>& args) {
  child c = qos::test::spawn_process(CATALOG_SERVICE, args);
  EXPECT_GT(c.pid, 0);
  return c;
}

// A port nothing listens on now: bound to 0, read, released. Another process could take it
// before the child binds; on loopback in a test run that is rare, and the child then exits 2
// with "cannot listen", which fails the test plainly.
std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = qos::test::loopback(0);
  socklen_t len = sizeof addr;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// The db group as /qos/status shows it.
struct group_view {
  int limit = -1;
  int in_use = -1;
  int waiting = -1;
};

group_view db_status(std::uint16_t admin_port) {
  group_view v;
  const auto r = qos::test::http_get(admin_port, "/qos/status", {}, 5s);
  static const std::regex db(
      R"("name":"db","limit":([0-9]+),"in_use":([0-9]+),"waiting":([0-9]+))");
  std::smatch m;
  if (r.status == 200 && std::regex_search(r.body, m, db)) {
    v.limit = std::stoi(m[1].str());
    v.in_use = std::stoi(m[2].str());
    v.waiting = std::stoi(m[3].str());
  }
  return v;
}

class operate_process_test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("qos-operate-process-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    config_ = (dir_ / "qos.yaml").string();
    port_ = free_port();
    admin_port_ = free_port();
    while (admin_port_ == port_) admin_port_ = free_port();
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string yaml(int limit) const {
    return "server: {address: 127.0.0.1, port: " + std::to_string(port_) +
           ", shutdown_grace: 10s}\n"
           "admin: {port: " +
           std::to_string(admin_port_) +
           "}\n"
           "groups:\n"
           "  - {name: db, max_concurrent: " +
           std::to_string(limit) +
           ", max_queue: 5000}\n"
           "routes:\n"
           "  - {name: db, group: db, max_wait: 60s}\n";
  }
  // Written whole to a new file and renamed over the config: a reload never reads half a file.
  void write_config(int limit) {
    const auto tmp = dir_ / "qos.yaml.tmp";
    std::ofstream(tmp) << yaml(limit);
    fs::rename(tmp, config_);
  }

  // Starts the example on the config (limit 8; each query holds its connection
  // `db_latency_ms`) and waits until it serves both listeners.
  child start(int db_latency_ms) {
    write_config(8);
    child c = spawn({"--config", config_, "--db", (dir_ / "c.db").string(), "--db-latency-ms",
                     std::to_string(db_latency_ms)});
    EXPECT_TRUE(c.read_until(std::regex("catalog service ready"), 30s)) << c.output;
    EXPECT_TRUE(eventually(
        [&] { return qos::test::http_get(admin_port_, "/healthz", {}, 1s).status == 200; }, 10s));
    // The text above is printed just before run() blocks the signals it serves: a signal in
    // between would still take its default action.
    std::this_thread::sleep_for(50ms);
    return c;
  }

  fs::path dir_;
  std::string config_;
  std::uint16_t port_ = 0;
  std::uint16_t admin_port_ = 0;
};

TEST_F(operate_process_test, sighup_with_300_parked_applies_the_new_limit_and_loses_nothing) {
  child c = start(100);
  ASSERT_TRUE(c.alive()) << c.output;
  EXPECT_EQ(db_status(admin_port_).limit, 8);

  parked_batch parked;
  ASSERT_EQ(parked.send(port_, 300, "/db"), 300) << parked.error();
  // 300 x 100 ms on 8 permits: close to 4 s of queue.
  ASSERT_TRUE(eventually([&] { return db_status(admin_port_).waiting >= 200; }, 10s));

  write_config(16);
  ASSERT_EQ(::kill(c.pid, SIGHUP), 0);
  // The raised limit admits waiters at once.
  ASSERT_TRUE(eventually(
      [&] {
        const auto s = db_status(admin_port_);
        return s.limit == 16 && s.in_use == 16;
      },
      10s))
      << c.output;
  EXPECT_TRUE(c.alive()) << "SIGHUP ended the process (status " << c.exit_status << ")\n"
                         << c.output;
  EXPECT_TRUE(c.read_until(std::regex("max_concurrent 8 -> 16"), 5s)) << c.output;

  parked.collect(30s);
  EXPECT_EQ(parked.with_status(200), 300) << parked.error();
  EXPECT_EQ(parked.extra(), 0);
  EXPECT_TRUE(c.alive());

  ASSERT_EQ(::kill(c.pid, SIGTERM), 0);
  EXPECT_EQ(c.wait_exit(30s), 0) << c.output;
}

TEST_F(operate_process_test, a_hundred_sighups_in_a_second_under_load_then_sigterm_lose_nothing) {
  child c = start(20);
  ASSERT_TRUE(c.alive()) << c.output;

  // Requests flow through the storm: 200 parked at the start, then 10 more every 20 ms, all
  // collected at the end.
  parked_batch first;
  ASSERT_EQ(first.send(port_, 200, "/db"), 200) << first.error();
  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<parked_batch>> flow_batches;
  std::thread flow([&] {
    while (!stop.load()) {
      flow_batches.push_back(std::make_unique<parked_batch>());
      flow_batches.back()->send(port_, 10, "/db");
      std::this_thread::sleep_for(20ms);
    }
  });

  const auto storm_began = clock_type::now();
  for (int i = 0; i < 100; ++i) {
    write_config(i % 2 == 0 ? 16 : 12);
    ASSERT_EQ(::kill(c.pid, SIGHUP), 0);
    std::this_thread::sleep_for(8ms);
  }
  const auto storm = clock_type::now() - storm_began;
  // Then one more, to a known limit: the process still reloads.
  write_config(16);
  ASSERT_EQ(::kill(c.pid, SIGHUP), 0);
  EXPECT_TRUE(eventually([&] { return db_status(admin_port_).limit == 16; }, 10s)) << c.output;
  EXPECT_TRUE(c.alive()) << c.output;
  EXPECT_EQ(qos::test::http_get(admin_port_, "/healthz", {}, 5s).status, 200);
  stop = true;
  flow.join();

  first.collect(30s);
  EXPECT_EQ(first.with_status(200), 200) << first.error();
  EXPECT_EQ(first.extra(), 0);
  int flow_sent = 0;
  for (auto& b : flow_batches) {
    b->collect(30s);
    flow_sent += b->sent();
    EXPECT_EQ(b->failed(), 0) << b->error();
    EXPECT_EQ(b->with_status(200), b->sent()) << b->error();
    EXPECT_EQ(b->extra(), 0);
  }
  std::cout << "100 SIGHUPs in " << std::chrono::duration<double>(storm).count() << " s; "
            << flow_sent << " requests sent during them, besides 200 parked\n";
  EXPECT_GE(flow_sent, 100);
  EXPECT_TRUE(c.alive()) << c.output;

  // SIGTERM with requests parked: the queue gets the shutdown fallback, the running finish.
  parked_batch last;
  ASSERT_EQ(last.send(port_, 100, "/db"), 100) << last.error();
  ASSERT_TRUE(eventually([&] { return db_status(admin_port_).waiting >= 50; }, 10s));
  ASSERT_EQ(::kill(c.pid, SIGTERM), 0);
  EXPECT_EQ(c.wait_exit(30s), 0) << c.output;
  last.collect(10s);
  EXPECT_EQ(last.answered(), 100) << last.error();
  EXPECT_EQ(last.unexpected(), 0);
  EXPECT_EQ(last.extra(), 0);
  EXPECT_GE(last.with_status(200), 1);
  EXPECT_GE(last.shutdown_fallbacks(), 1);
}

}  // namespace

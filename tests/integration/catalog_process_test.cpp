// The example service as a process: a bad config stops it with status 2 and a message naming
// file, line and key; SIGTERM answers waiting requests with the fallback, lets the running one
// finish and exits 0; its counters and qos's internals are on the admin listener only, and the
// counters' reset needs the token. Bounded waits only; the child is killed if a test fails midway.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "support/child_process.hpp"
#include "support/http_client.hpp"

#ifndef CATALOG_SERVICE
#error "CATALOG_SERVICE must name the catalog_service binary"
#endif

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

using child = qos::test::child_process;

// `address_space`: when set, the child's RLIMIT_AS (bytes), so that startup runs out of memory,
// with 8 MiB thread stacks. `extra_env`: "NAME=value" entries added to the child's environment.
child spawn(const std::vector<std::string>& args, std::optional<rlim_t> address_space = {},
            const std::vector<std::string>& extra_env = {}) {
  child c = qos::test::spawn_process(CATALOG_SERVICE, args, {address_space, extra_env});
  EXPECT_GT(c.pid, 0);
  return c;
}

using qos::test::public_port;

// The admin port the child prints in its startup message.
std::uint16_t admin_port(child& c) {
  const auto text =
      c.read_until(std::regex("Admin listener:\n  curl http://127\\.0\\.0\\.1:([0-9]+)/"), 30s);
  EXPECT_TRUE(text) << c.output;
  return text ? static_cast<std::uint16_t>(std::stoi(*text)) : 0;
}

class catalog_process_test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("qos-catalog-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    const auto path = dir_ / name;
    std::ofstream(path) << text;
    return path.string();
  }
  fs::path dir_;
};

TEST_F(catalog_process_test, bad_config_exits_2_naming_file_line_and_key) {
  const auto path = write("bad.yaml",
                          "groups:\n"
                          "  - name: db\n"
                          "    max_concurrent: 0\n"
                          "routes:\n"
                          "  - name: db\n"
                          "    group: db\n");
  auto c = spawn({"--config", path, "--db", (dir_ / "c.db").string()});
  EXPECT_EQ(c.wait_exit(20s), 2);
  c.read_until(std::regex("bad config[^\n]*\n"), 5s);
  EXPECT_NE(c.output.find("bad.yaml:3:"), std::string::npos) << c.output;
  EXPECT_NE(c.output.find("groups[0].max_concurrent"), std::string::npos) << c.output;
}

TEST_F(catalog_process_test, sigterm_answers_waiters_finishes_running_and_exits_0) {
  const auto path = write("ok.yaml",
                          "server: {port: 0, shutdown_grace: 10s}\n"
                          "admin: {port: 0}\n"
                          "groups:\n"
                          "  - {name: db, max_concurrent: 1, max_queue: 10}\n"
                          "routes:\n"
                          "  - name: db\n"
                          "    group: db\n"
                          "    max_wait: 30s\n");
  auto c = spawn({"--config", path, "--db", (dir_ / "c.db").string(), "--db-latency-ms", "400"});
  const auto port = public_port(c);
  const auto admin = admin_port(c);
  ASSERT_NE(port, 0);
  ASSERT_NE(admin, 0);

  qos::test::http_response running, waiting;
  std::thread a([&] { running = qos::test::http_get(port, "/db/1"); });
  const auto until = clock_type::now() + 10s;
  while (qos::test::http_get(admin, "/stats").body.find("\"dbInFlight\":1") == std::string::npos) {
    ASSERT_LT(clock_type::now(), until);
    std::this_thread::sleep_for(2ms);
  }
  std::thread b([&] { waiting = qos::test::http_get(port, "/db/2"); });
  while (qos::test::http_get(admin, "/metrics").body.find("qos_group_waiting{group=\"db\"} 1") ==
         std::string::npos) {
    ASSERT_LT(clock_type::now(), until);
    std::this_thread::sleep_for(2ms);
  }
  ASSERT_EQ(::kill(c.pid, SIGTERM), 0);
  b.join();
  a.join();
  EXPECT_EQ(c.wait_exit(20s), 0) << c.output;
  EXPECT_EQ(waiting.status, 503);
  EXPECT_EQ(waiting.header("X-QoS-Outcome"), "shutdown");
  EXPECT_EQ(running.status, 200);
  EXPECT_NE(running.body.find("\"id\":1"), std::string::npos);
}

qos::test::http_response post(std::uint16_t port, const std::string& target,
                              qos::test::header_list headers = {}) {
  qos::test::http_connection conn(port);
  return conn.request(
      {.method = "POST", .target = target, .headers = std::move(headers), .body = {}});
}

std::string max_in_flight(std::uint16_t admin) {
  const auto r = qos::test::http_get(admin, "/stats");
  std::smatch m;
  return std::regex_search(r.body, m, std::regex("\"dbMaxInFlight\":([0-9]+)")) ? m[1].str()
                                                                                : r.body;
}

TEST_F(catalog_process_test, counters_are_on_the_admin_listener_and_their_reset_needs_the_token) {
  const auto path = write("admin.yaml",
                          "server: {port: 0}\n"
                          "admin: {port: 0, token_env: QOS_CATALOG_TEST_TOKEN}\n"
                          "groups: [{name: db, max_concurrent: 2}]\n"
                          "routes: [{name: db, group: db}]\n");
  auto c = spawn({"--config", path, "--db", (dir_ / "c.db").string(), "--db-latency-ms", "0"}, {},
                 {"QOS_CATALOG_TEST_TOKEN=right-token"});
  const auto port = public_port(c);
  const auto admin = admin_port(c);
  ASSERT_NE(port, 0);
  ASSERT_NE(admin, 0);
  ASSERT_NE(port, admin);
  c.read_until(std::regex("Stop with Ctrl-C"), 10s);
  for (const char* url : {"/metrics", "/qos/status", "/stats", "/stats/reset"}) {
    EXPECT_NE(c.output.find("http://127.0.0.1:" + std::to_string(admin) + url), std::string::npos)
        << url << "\n"
        << c.output;
  }

  for (const char* target : {"/metrics", "/stats", "/qos/status", "/stats?reset=1"}) {
    EXPECT_EQ(qos::test::http_get(port, target).status, 404) << "public " << target;
  }
  EXPECT_EQ(post(port, "/stats/reset", {{"Authorization", "Bearer right-token"}}).status, 404);
  EXPECT_EQ(post(port, "/qos/reload", {{"Authorization", "Bearer right-token"}}).status, 404);

  // One query makes the high-water mark 1; it stays once the query is over.
  ASSERT_EQ(qos::test::http_get(port, "/db/1").status, 200);
  const auto metrics = qos::test::http_get(admin, "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("qos_requests_total{"), std::string::npos) << metrics.body;
  const auto status = qos::test::http_get(admin, "/qos/status");
  EXPECT_EQ(status.status, 200);
  EXPECT_NE(status.body.find("\"db\""), std::string::npos) << status.body;
  const auto stats = qos::test::http_get(admin, "/stats");
  EXPECT_EQ(stats.status, 200);
  EXPECT_NE(stats.body.find("\"dbInFlight\":0"), std::string::npos) << stats.body;
  EXPECT_EQ(max_in_flight(admin), "1");

  // A GET changes nothing; the reset is a POST behind the token.
  EXPECT_EQ(qos::test::http_get(admin, "/stats?reset=1").status, 200);
  EXPECT_EQ(max_in_flight(admin), "1");
  const auto no_token = post(admin, "/stats/reset");
  EXPECT_EQ(no_token.status, 401);
  EXPECT_EQ(no_token.header("WWW-Authenticate").value_or(""), "Bearer realm=\"qos\"");
  EXPECT_EQ(post(admin, "/stats/reset", {{"Authorization", "Bearer wrong-token"}}).status, 401);
  EXPECT_EQ(max_in_flight(admin), "1");
  EXPECT_EQ(post(admin, "/stats/reset", {{"Authorization", "Bearer right-token"}}).status, 200);
  EXPECT_EQ(max_in_flight(admin), "0");

  ASSERT_EQ(::kill(c.pid, SIGTERM), 0);
  EXPECT_EQ(c.wait_exit(20s), 0) << c.output;
}

TEST_F(catalog_process_test, without_an_admin_section_no_counters_are_served) {
  const auto path = write("plain.yaml",
                          "server: {port: 0}\n"
                          "groups: [{name: db, max_concurrent: 2}]\n"
                          "routes: [{name: db, group: db}]\n");
  auto c = spawn({"--config", path, "--db", (dir_ / "c.db").string(), "--db-latency-ms", "0"});
  const auto port = public_port(c);
  ASSERT_NE(port, 0);
  ASSERT_TRUE(c.read_until(std::regex("No admin listener[^\n]*\n"), 10s)) << c.output;
  EXPECT_EQ(c.output.find("Admin listener:"), std::string::npos) << c.output;
  EXPECT_EQ(qos::test::http_get(port, "/db/1").status, 200);
  for (const char* target : {"/metrics", "/stats", "/qos/status"}) {
    EXPECT_EQ(qos::test::http_get(port, target).status, 404) << target;
  }
  ASSERT_EQ(::kill(c.pid, SIGTERM), 0);
  EXPECT_EQ(c.wait_exit(20s), 0) << c.output;
}

}  // namespace

// Startup never aborts: a resource setting beyond its bound is refused at its key, a pool
// larger than the example opens is refused before anything is opened, and whatever startup
// throws ends with a message and status 2.
namespace {

TEST_F(catalog_process_test, resource_settings_beyond_their_bounds_exit_2_naming_the_key) {
  struct bad_setting {
    std::string yaml;
    std::string where;  // file:line: key
  };
  const std::string routes = "routes: [{name: db, group: db}]\n";
  const std::vector<bad_setting> cases = {
      {"server: {fiber_threads: 100000}\ngroups: [{name: db, max_concurrent: 8}]\n" + routes,
       "bounds.yaml:1:25: server.fiber_threads: must be <= 256"},
      {"server: {max_pending_jobs: 1000000000000}\ngroups: [{name: db, max_concurrent: 8}]\n" +
           routes,
       "bounds.yaml:1:28: server.max_pending_jobs: must be <= 1048576"},
      {"groups:\n  - name: db\n    max_concurrent: 1000000\n" + routes,
       "bounds.yaml:3:21: groups[0].max_concurrent: must be <= 100000"},
  };
  for (const auto& bad : cases) {
    SCOPED_TRACE(bad.yaml);
    const auto path = write("bounds.yaml", bad.yaml);
    auto c = spawn({"--config", path, "--db", (dir_ / "c.db").string()});
    EXPECT_EQ(c.wait_exit(20s), 2);
    c.read_until(std::regex("bad config[^\n]*\n"), 5s);
    EXPECT_NE(c.output.find(bad.where), std::string::npos) << c.output;
  }
}

TEST_F(catalog_process_test, a_db_pool_beyond_the_example_s_maximum_exits_2_before_opening) {
  const auto path = write("big.yaml",
                          "groups:\n"
                          "  - name: db\n"
                          "    max_concurrent: 1000\n"
                          "routes: [{name: db, group: db}]\n");
  auto c = spawn({"--config", path, "--db", (dir_ / "c.db").string()});
  EXPECT_EQ(c.wait_exit(20s), 2);
  c.read_until(std::regex("bad config[^\n]*\n"), 5s);
  EXPECT_NE(c.output.find("big.yaml:2: groups[0].max_concurrent:"), std::string::npos) << c.output;
  EXPECT_NE(c.output.find("at most 256, got 1000"), std::string::npos) << c.output;
  EXPECT_FALSE(fs::exists(dir_ / "c.db")) << "the database was opened";
}

TEST_F(catalog_process_test, empty_and_deeply_nested_files_exit_2_naming_the_line) {
  const auto empty = write("empty.yaml", "");
  auto a = spawn({"--config", empty, "--db", (dir_ / "c.db").string()});
  EXPECT_EQ(a.wait_exit(20s), 2);
  a.read_until(std::regex("bad config[^\n]*\n"), 5s);
  EXPECT_NE(a.output.find("empty.yaml:1:1: empty config"), std::string::npos) << a.output;

  const auto deep = write("deep.yaml", std::string(10000, '['));
  auto b = spawn({"--config", deep, "--db", (dir_ / "c.db").string()});
  EXPECT_EQ(b.wait_exit(20s), 2);
  b.read_until(std::regex("bad config[^\n]*\n"), 5s);
  EXPECT_NE(b.output.find("deep.yaml:1:65: nested deeper than 64 levels"), std::string::npos)
      << b.output;
}

TEST_F(catalog_process_test, an_exception_at_startup_exits_2_with_a_message) {
  const auto path = write("ok.yaml",
                          "server: {port: 0}\n"
                          "groups: [{name: db, max_concurrent: 2}]\n"
                          "routes: [{name: db, group: db}]\n");
  // The database cannot be created: its folder does not exist.
  auto c = spawn({"--config", path, "--db", (dir_ / "no" / "such" / "c.db").string()});
  EXPECT_EQ(c.wait_exit(20s), 2) << c.output;
  c.read_until(std::regex("catalog: [^\n]*\n"), 5s);
  EXPECT_NE(c.output.find("catalog: "), std::string::npos) << c.output;
}

TEST_F(catalog_process_test, a_port_in_use_exits_2_with_a_message) {
  // The port is taken by a listening socket of this test.
  const int taken = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(taken, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::bind(taken, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(taken, 1), 0);
  ASSERT_EQ(::getsockname(taken, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const auto path = write("ok.yaml",
                          "groups: [{name: db, max_concurrent: 2}]\n"
                          "routes: [{name: db, group: db}]\n");
  auto c = spawn({"--config", path, "--db", (dir_ / "c.db").string(), "--port",
                  std::to_string(ntohs(addr.sin_port))});
  EXPECT_EQ(c.wait_exit(20s), 2) << c.output;
  c.read_until(std::regex("catalog: cannot listen[^\n]*\n"), 5s);
  EXPECT_NE(c.output.find("catalog: cannot listen on 127.0.0.1:"), std::string::npos) << c.output;
  ::close(taken);
}

// The kernel refuses a thread part-way through the executor's start: qos::executor joins the
// threads it did start and rethrows, and main ends with status 2 and a message, where
// std::thread's destructor used to call std::terminate (status 134). Provoked with RLIMIT_AS,
// which binds root too (RLIMIT_NPROC does not, and CI runs as root): each thread maps an 8 MiB
// stack (RLIMIT_STACK, set in the child, is glibc's default thread stack size), so 256 fiber
// threads need 2 GiB and fail within 768 MiB. The same limit lets a server with 2 fiber threads
// start and serve, so the run with 256 created threads before the failure: it is part-way.
TEST_F(catalog_process_test, threads_that_cannot_be_created_exit_2_not_abort) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer reserves terabytes of address space: no RLIMIT_AS under it";
#else
  const rlim_t address_space = rlim_t{768} << 20;
  const auto few = write("few.yaml",
                         "server: {port: 0, fiber_threads: 2}\n"
                         "groups: [{name: db, max_concurrent: 2}]\n"
                         "routes: [{name: db, group: db}]\n");
  auto fits = spawn({"--config", few, "--db", (dir_ / "c.db").string()}, address_space);
  const auto port_text = fits.read_until(std::regex("curl http://127\\.0\\.0\\.1:([0-9]+)/"), 30s);
  ASSERT_TRUE(port_text) << fits.output;
  const auto answer =
      qos::test::http_get(static_cast<std::uint16_t>(std::stoi(*port_text)), "/db/1");
  EXPECT_EQ(answer.status, 200) << answer.body;
  ASSERT_EQ(::kill(fits.pid, SIGTERM), 0);
  EXPECT_EQ(fits.wait_exit(20s), 0) << fits.output;

  const auto many = write("threads.yaml",
                          "server: {port: 0, fiber_threads: 256}\n"
                          "groups: [{name: db, max_concurrent: 2}]\n"
                          "routes: [{name: db, group: db}]\n");
  auto c = spawn({"--config", many, "--db", (dir_ / "c.db").string()}, address_space);
  const int status = c.wait_exit(30s);
  c.read_until(std::regex("catalog: [^\n]*\n"), 5s);
  EXPECT_EQ(status, 2) << c.output;
  // std::thread's std::system_error for pthread_create's EAGAIN: the executor's threads, not
  // an allocation, failed.
  EXPECT_NE(c.output.find("catalog: Resource temporarily unavailable"), std::string::npos)
      << c.output;
#endif
}

}  // namespace

// The example service's accept route as a process that dies: kill -9 of the gateway after its
// 202s, with jobs running and queued, loses none of them. After a restart on the same job
// store every accepted job ends succeeded: the queued ones run, the running ones come back
// when their lease expires (attempts + 1). Loopback only; every wait has a deadline; the child
// is killed if a test fails midway.
#include <signal.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
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
using qos::test::child_process;
using qos::test::public_port;

class accept_process_test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qos-accept-process-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // N = 2 and 100 ms a job: 40 jobs take about 2 s, so a kill right after the last 202
    // finds some running and most queued. A 2 s lease brings the running ones back soon.
    config_ = (dir_ / "qos.yaml").string();
    std::ofstream(config_) << "server: {port: 0, shutdown_grace: 5s}\n"
                              "jobs: {store: sqlite, synchronous: full, poll_interval: 100ms}\n"
                              "groups:\n"
                              "  - {name: db, max_concurrent: 2, max_queue: 100}\n"
                              "routes:\n"
                              "  - {name: db, group: db}\n"
                              "  - name: orders\n"
                              "    group: db\n"
                              "    mode: accept\n"
                              "    max_exec: 10s\n"
                              "    accept: {lease: 2s, max_attempts: 5}\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  child_process start() {
    child_process c = qos::test::spawn_process(
        CATALOG_SERVICE, {"--config", config_, "--db", (dir_ / "catalog.db").string(),
                          "--db-latency-ms", "100", "--jobs-db", (dir_ / "jobs.db").string()});
    EXPECT_GT(c.pid, 0);
    return c;
  }

  fs::path dir_;
  std::string config_;
};

TEST_F(accept_process_test, a_gateway_killed_after_its_202s_loses_no_job) {
  std::vector<std::string> locations;
  {
    child_process gateway = start();
    const auto port = public_port(gateway);
    ASSERT_NE(port, 0);
    qos::test::http_connection conn(port);
    for (int i = 0; i < 40; ++i) {
      const auto r = conn.request({.method = "POST",
                                   .target = "/orders",
                                   .headers = {{"Content-Type", "application/json"}},
                                   .body = "{\"sku\":" + std::to_string(i) + "}"});
      ASSERT_EQ(r.status, 202) << r.error << r.body;
      const auto location = r.header("Location");
      ASSERT_TRUE(location);
      locations.push_back(*location);
    }
    ASSERT_TRUE(gateway.signal(SIGKILL));
    EXPECT_EQ(gateway.wait_exit(10s), 128 + SIGKILL);
  }

  // Before the restart, nothing answers; after it, the same ids are known.
  child_process gateway = start();
  const auto port = public_port(gateway);
  ASSERT_NE(port, 0);
  const auto until = clock_type::now() + 60s;
  std::size_t done = 0;
  std::vector<std::string> last(locations.size());
  while (done < locations.size() && clock_type::now() < until) {
    done = 0;
    for (std::size_t i = 0; i < locations.size(); ++i) {
      const auto r = qos::test::http_get(port, locations[i]);
      ASSERT_NE(r.status, 404) << locations[i] << " unknown after the restart";
      last[i] = std::to_string(r.status) + " " + r.body;
      if (r.status == 303) ++done;  // succeeded: see /jobs/{id}/result
    }
    if (done < locations.size()) std::this_thread::sleep_for(100ms);
  }
  for (std::size_t i = 0; i < locations.size(); ++i) {
    EXPECT_EQ(last[i].substr(0, 3), "303") << locations[i] << ": " << last[i];
  }
  // Each result is the stored response of the job's handler: the order it wrote.
  for (const auto& location : locations) {
    const auto r = qos::test::http_get(port, location + "/result");
    EXPECT_EQ(r.status, 201) << location << ": " << r.body;
    EXPECT_NE(r.body.find("\"order\":"), std::string::npos) << r.body;
  }
  ASSERT_TRUE(gateway.signal(SIGTERM));
  EXPECT_EQ(gateway.wait_exit(20s), 0) << gateway.output;
}

}  // namespace

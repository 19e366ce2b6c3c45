// Tests of the effective configuration: the YAML printed reads back to the same settings (every
// shipped and benchmark config, and one using every key), its hash follows the settings and not
// the layout, the summary shows each outcome's resolved response, and each warning fires on the
// setting it is about and not on its safe counterpart.
#include "qos/config/effective.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "qos/config/config.hpp"
#include "qos/core/outcome.hpp"

#ifndef QOS_SOURCE_DIR
#error "QOS_SOURCE_DIR must name the repository root"
#endif

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using qos::config::app_config;
using qos::config::check_facts;
using qos::config::config_hash;
using qos::config::config_warning;
using qos::config::effective_yaml;
using qos::config::fallback_set;
using qos::config::load_config;
using qos::config::load_config_string;

constexpr const char* minimal = R"(groups:
  - name: db
    max_concurrent: 8
routes:
  - name: items
    group: db
)";

class temp_dir {
 public:
  temp_dir() {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("qos_effective_test_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ / name, std::ios::binary) << content;
    return path_ / name;
  }

 private:
  fs::path path_;
};

// Fallback files as the printer names them: absolute.
fallback_set absolute_files(fallback_set f) {
  const auto fix = [](qos::config::fallback_config& c) {
    if (!c.file.empty()) c.file = fs::absolute(c.file).lexically_normal().string();
  };
  fix(f.route);
  for (auto& own : f.own) {
    if (own) fix(*own);
  }
  return f;
}

// Every setting, field by field (not the provenance: source and line numbers).
void expect_same_settings(const app_config& a, const app_config& b) {
  EXPECT_TRUE(a.server == b.server);
  EXPECT_TRUE(a.logging == b.logging);
  EXPECT_TRUE(a.admin == b.admin);
  ASSERT_EQ(a.jobs.has_value(), b.jobs.has_value());
  if (a.jobs) {
    // Not the provenance; the database file as the printer names it: absolute.
    qos::config::jobs_config x = *a.jobs, y = *b.jobs;
    x.line = y.line = 0;
    if (x.store == qos::config::job_store_kind::sqlite) {
      x.sqlite_path = fs::absolute(x.sqlite_path).lexically_normal().string();
    }
    EXPECT_TRUE(x == y);
  }
  ASSERT_EQ(a.groups.size(), b.groups.size());
  for (std::size_t i = 0; i < a.groups.size(); ++i) {
    SCOPED_TRACE("group " + a.groups[i].name);
    const auto &x = a.groups[i], &y = b.groups[i];
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.limiter.max_concurrent, y.limiter.max_concurrent);
    EXPECT_EQ(x.limiter.max_queue, y.limiter.max_queue);
    EXPECT_EQ(x.limiter.discipline, y.limiter.discipline);
    EXPECT_EQ(x.limiter.target, y.limiter.target);
    EXPECT_EQ(x.limiter.interval, y.limiter.interval);
    EXPECT_EQ(x.limiter.aging_step, y.limiter.aging_step);
    EXPECT_EQ(x.limiter.reserve, y.limiter.reserve);
    EXPECT_EQ(x.limiter.reserve_level, y.limiter.reserve_level);
    EXPECT_EQ(x.blocking_threads, y.blocking_threads);
    EXPECT_EQ(x.shadow, y.shadow);
    ASSERT_EQ(x.limit.has_value(), y.limit.has_value());
    if (x.limit) {
      EXPECT_EQ(x.limit->kind, y.limit->kind);
      EXPECT_EQ(x.limit->min, y.limit->min);
      EXPECT_EQ(x.limit->max, y.limit->max);
      EXPECT_EQ(x.limit->initial, y.limit->initial);
      EXPECT_EQ(x.limit->backoff_ratio, y.limit->backoff_ratio);
      EXPECT_EQ(x.limit->timeout, y.limit->timeout);
      EXPECT_EQ(x.limit->rtt_tolerance, y.limit->rtt_tolerance);
      EXPECT_EQ(x.limit->smoothing, y.limit->smoothing);
      EXPECT_EQ(x.limit->long_window, y.limit->long_window);
      EXPECT_EQ(x.limit->probe_interval, y.limit->probe_interval);
    }
  }
  ASSERT_EQ(a.routes.size(), b.routes.size());
  for (std::size_t i = 0; i < a.routes.size(); ++i) {
    SCOPED_TRACE("route " + a.routes[i].name);
    const auto &x = a.routes[i], &y = b.routes[i];
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.group, y.group);
    EXPECT_EQ(x.max_wait, y.max_wait);
    EXPECT_EQ(x.max_exec, y.max_exec);
    EXPECT_EQ(x.cost, y.cost);
    EXPECT_EQ(x.predictive_reject, y.predictive_reject);
    EXPECT_TRUE(x.deadline == y.deadline);
    EXPECT_TRUE(x.priority == y.priority);
    EXPECT_TRUE(absolute_files(x.fallback) == absolute_files(y.fallback));
    EXPECT_EQ(x.mode, y.mode);
    EXPECT_TRUE(x.accept == y.accept);
  }
}

// load -> print -> load: the same settings, and printing again gives the same text.
void expect_round_trip(const app_config& first) {
  const std::string printed = effective_yaml(first);
  app_config second;
  try {
    second = load_config_string(printed, "effective.yaml", "/nonexistent");
  } catch (const qos::config::config_error& e) {
    FAIL() << e.what() << "\n" << printed;
  }
  expect_same_settings(first, second);
  EXPECT_EQ(effective_yaml(second), printed);
  EXPECT_EQ(config_hash(second), config_hash(first));
}

TEST(config_effective, every_shipped_and_benchmark_config_round_trips) {
  // The benchmark configs read their admin token from this variable (bench/lib/common.sh).
  ::setenv("QOS_BENCH_ADMIN_TOKEN", "bench-token", 0);
  // And the PostgreSQL job store's connection string from this one (bench/jobs/run.sh).
  ::setenv("QOS_BENCH_JOBS_PG", "host=/tmp dbname=qos", 0);
  int files = 0;
  for (const char* folder : {"config", "bench/config"}) {
    for (const auto& entry : fs::directory_iterator(fs::path(QOS_SOURCE_DIR) / folder)) {
      if (entry.path().extension() != ".yaml") continue;
      SCOPED_TRACE(entry.path().string());
      expect_round_trip(load_config(entry.path().string()));
      ++files;
    }
  }
  EXPECT_GE(files, 8);
}

// Every key set away from its default, and strings YAML would read as something else unquoted.
TEST(config_effective, a_config_using_every_key_round_trips) {
  const temp_dir dir;
  dir.write("token", "secret-token-value\n");
  dir.write("grey.svg", "<svg/>");
  dir.write("bin.png", std::string("\x89PNG\r\n\x1a\n\0\xff", 10));
  const app_config cfg = load_config_string(R"(server:
  address: 0.0.0.0
  port: 0
  reactor_threads: 3
  fiber_threads: 5
  max_pending_jobs: 1024
  shutdown_grace: 2500ms
  drain_delay: 1.5s
  drain_parked: serve
  backlog: 77
  max_connections: 1234
  max_request_size: 4096
  header_timeout: 2s
  body_timeout: 3s
  keepalive_timeout: 4s
  send_timeout: 5s
  write_stall: 250ms
logging:
  level: warn
  format: json
  sink: stdout
  access_log: {enabled: true, sample: 0.125, max_per_second: 9}
admin: {address: 0.0.0.0, port: 0, token_file: token}
groups:
  - name: "null"
    max_concurrent: 8
    max_queue: 17
    blocking_threads: 40
    limit: {algorithm: aimd, min: 2, max: 40, initial: 3, backoff_ratio: 0.7, timeout: 750ms}
    queue: {discipline: codel, target: 7ms, interval: 70ms}
    aging_step: 300ms
    reserve: {permits: 1, priority: 12}
    shadow: true
  - name: "123"
    max_concurrent: 4
    limit: {algorithm: gradient2, rtt_tolerance: 2.25, smoothing: 0.3, long_window: 5,
            probe_interval: 3s}
    queue: {discipline: adaptive_lifo, interval: 40ms}
  - name: v
    max_concurrent: 2
    limit: {algorithm: vegas, probe_interval: 1m}
  - name: f
    max_concurrent: 1
    limit: {algorithm: fixed, initial: 1}
routes:
  - name: "true"
    group: "null"
    max_wait: 900ms
    max_exec: 1200ms
    cost: 2
    predictive_reject: true
    deadline: {header: X-Deadline, grpc_timeout: true}
    priority:
      default: 3
      header: X-Tier
      values: {"null": 4, "": 5, "~": 6, "yes": 7, "0x10": 8, "a: b": 9}
      raw_header: X-Priority
      raw_header_trusted: true
    fallback:
      status: 429
      retry_after: auto
      headers: {X-Empty: "", X-Bool: "false", X-Num: "010", X-Quote: "say \"hi\" # not a comment"}
      body: "multi\nline\ttext \\ with 'quotes' and unicode é"
      content_type: text/plain
      timeout: {status: 200, retry_after: none, file: grey.svg}
      queue_full: {retry_after: 7, body: ""}
      shed: {headers: {}}
      exec_timeout: {file: bin.png}
      client_gone: {status: 499}
  - name: "123"
    group: "123"
  - {name: v, group: v, max_wait: 1h}
  - {name: f, group: f, fallback: {retry_after: null}}
)",
                                            "every.yaml", dir.path().string());
  ASSERT_TRUE(cfg.admin);
  EXPECT_EQ(cfg.admin->token, "secret-token-value");
  expect_round_trip(cfg);
}

TEST(config_effective, prints_every_default) {
  const std::string yaml = effective_yaml(load_config_string(minimal));
  for (const char* key : {"address:",
                          "port:",
                          "reactor_threads:",
                          "fiber_threads:",
                          "max_pending_jobs:",
                          "shutdown_grace:",
                          "drain_delay:",
                          "drain_parked: shed",
                          "backlog:",
                          "max_connections: 0",
                          "max_request_size:",
                          "header_timeout:",
                          "body_timeout:",
                          "keepalive_timeout:",
                          "send_timeout: 60000ms",
                          "write_stall: 1000ms",
                          "level:",
                          "format:",
                          "sink:",
                          "access_log:",
                          "max_queue: 1000",
                          "blocking_threads: 0",
                          "discipline: fifo",
                          "aging_step: 0ms",
                          "shadow: false",
                          "max_wait: 1000ms",
                          "cost: 1",
                          "predictive_reject: false",
                          "grpc_timeout: false",
                          "default: 0",
                          "raw_header_trusted: false",
                          "status: 503",
                          "retry_after: 1",
                          "content_type:"}) {
    EXPECT_NE(yaml.find(key), std::string::npos) << key << "\n" << yaml;
  }
  EXPECT_EQ(yaml.find("admin:"), std::string::npos) << "no admin listener, no admin section";
}

TEST(config_effective, write_stall_0_round_trips_as_off) {
  const app_config off = load_config_string("server: {write_stall: 0}\n" + std::string(minimal));
  EXPECT_NE(effective_yaml(off).find("write_stall: 0ms"), std::string::npos) << effective_yaml(off);
  expect_round_trip(off);
}

TEST(config_effective, never_prints_the_token) {
  const temp_dir dir;
  dir.write("token", "do-not-print-me");
  const app_config cfg =
      load_config_string("admin: {port: 9081, token_file: token}\n" + std::string(minimal),
                         "t.yaml", dir.path().string());
  const std::string yaml = effective_yaml(cfg);
  EXPECT_EQ(yaml.find("do-not-print-me"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find((dir.path() / "token").string()), std::string::npos) << yaml;
  EXPECT_EQ(qos::config::summary(cfg).find("do-not-print-me"), std::string::npos);
}

TEST(config_effective_hash, follows_the_settings_not_the_layout) {
  const std::string flow =
      "# a comment\n"
      "routes: [{name: items, group: db, max_wait: 1s}]\n"
      "groups: [{max_concurrent: 8, name: db, max_queue: 1000}]\n";
  const std::string hash = config_hash(load_config_string(minimal));
  EXPECT_EQ(hash.size(), 16u);
  EXPECT_TRUE(std::all_of(hash.begin(), hash.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  })) << hash;
  EXPECT_EQ(config_hash(load_config_string(flow)), hash) << "defaults written out, reordered";
  EXPECT_EQ(config_hash(load_config_string(minimal, "elsewhere.yaml")), hash);
  EXPECT_NE(config_hash(load_config_string(std::string(minimal) + "    max_wait: 2s\n")), hash);
  EXPECT_NE(config_hash(load_config_string("server: {drain_delay: 1s}\n" + std::string(minimal))),
            hash);
}

TEST(config_effective_hash, changes_with_a_fallback_file_s_bytes) {
  const temp_dir dir;
  const std::string yaml = std::string(minimal) + "    fallback: {file: body.json}\n";
  dir.write("body.json", "{\"a\":1}");
  const std::string before = config_hash(load_config_string(yaml, "t.yaml", dir.path().string()));
  dir.write("body.json", "{\"a\":2}");
  const std::string after = config_hash(load_config_string(yaml, "t.yaml", dir.path().string()));
  EXPECT_NE(before, after);
}

TEST(config_summary, shows_limits_queues_and_every_outcome_s_resolved_response) {
  const app_config cfg = load_config_string(R"(groups:
  - name: db
    max_concurrent: 8
    limit: {algorithm: aimd, min: 2, max: 32}
    queue: {discipline: codel}
    reserve: {permits: 1, priority: 10}
routes:
  - name: items
    group: db
    max_wait: 250ms
    priority: {default: 2, header: X-Api-Key, values: {gold: 10}}
    fallback:
      status: 503
      queue_full: {status: 429, body: full}
)");
  const std::string s = qos::config::summary(cfg);
  for (const char* part :
       {"group db: limit adaptive aimd 2..32 from 8", "queue codel (target 5ms, interval 100ms)",
        "reserve 1 for priority >= 10", "route items -> group db: max_wait 250ms",
        "default 2; header X-Api-Key: gold=10", "admin: off", "deadline: none",
        "queue_full        429 retry-after 1, application/json, 'full' [own entry]",
        "shed              429 retry-after 1, application/json, 'full' [from queue_full]",
        "exec_timeout      504", "error             500", "timeout           503"}) {
    EXPECT_NE(s.find(part), std::string::npos) << part << "\n" << s;
  }
}

TEST(config_summary, shows_send_timeout_and_write_stall) {
  EXPECT_NE(qos::config::summary(load_config_string(minimal))
                .find("keepalive_timeout 75000ms, send_timeout 60000ms, write_stall 1000ms"),
            std::string::npos)
      << qos::config::summary(load_config_string(minimal));
  const std::string set = qos::config::summary(
      load_config_string("server: {send_timeout: 30s, write_stall: 0}\n" + std::string(minimal)));
  EXPECT_NE(set.find("send_timeout 30000ms, write_stall off"), std::string::npos) << set;
}

// ---------------------------------------------------------------------------------------------
// Warnings

std::vector<std::string> keys_of(const std::vector<config_warning>& ws) {
  std::vector<std::string> out;
  for (const auto& w : ws) out.push_back(w.key);
  return out;
}

std::vector<std::string> warned(const std::string& yaml, const check_facts& facts = {}) {
  return keys_of(qos::config::warnings(load_config_string(yaml, "w.yaml"), facts));
}

bool has(const std::vector<std::string>& keys, const std::string& key) {
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

TEST(config_warnings, shipped_example_config_has_none) {
  const app_config cfg = load_config((fs::path(QOS_SOURCE_DIR) / "config/qos.yaml").string());
  EXPECT_TRUE(qos::config::warnings(cfg).empty());
}

TEST(config_warnings, client_chosen_priority_on_a_listener_beyond_loopback) {
  const std::string trusted =
      std::string(minimal) + "    priority: {raw_header: X-Priority, raw_header_trusted: true}\n";
  EXPECT_TRUE(has(warned("server: {address: 0.0.0.0}\n" + trusted),
                  "routes[0].priority.raw_header_trusted"));
  EXPECT_TRUE(warned("server: {address: 127.0.0.1}\n" + trusted).empty()) << "behind a proxy";
  const std::string untrusted = std::string(minimal) + "    priority: {raw_header: X-Priority}\n";
  EXPECT_TRUE(warned("server: {address: 0.0.0.0}\n" + untrusted).empty()) << "ignored header";

  const std::string values =
      std::string(minimal) + "    priority: {header: X-Tier, values: {gold: 9}}\n";
  EXPECT_TRUE(has(warned("server: {address: 10.0.0.1}\n" + values), "routes[0].priority.values"));
  EXPECT_TRUE(warned("server: {address: localhost}\n" + values).empty());
  const std::string lower =
      std::string(minimal) + "    priority: {default: 5, header: X-Tier, values: {bulk: 1}}\n";
  EXPECT_TRUE(warned("server: {address: 0.0.0.0}\n" + lower).empty()) << "values only lower it";
}

TEST(config_warnings, max_wait_shorter_than_a_known_service_time) {
  const std::string yaml = std::string(minimal) + "    max_wait: 100ms\n";
  EXPECT_TRUE(warned(yaml).empty()) << "the file alone holds no service time";
  const auto keys = warned(yaml, check_facts{.service_time = {{"db", 400ms}}});
  ASSERT_TRUE(has(keys, "routes[0].max_wait"));
  const auto ws =
      qos::config::warnings(load_config_string(yaml), check_facts{.service_time = {{"db", 400ms}}});
  // 8 permits held 400ms each: one returns every 50ms, so about 2 waiters fit in 100ms.
  EXPECT_NE(ws[0].message.find("only about 2 of its 1000 queue places"), std::string::npos)
      << ws[0].message;
  EXPECT_TRUE(warned(yaml, check_facts{.service_time = {{"db", 100ms}}}).empty());
}

TEST(config_warnings, queue_durations_that_never_act_on_a_route) {
  const std::string codel =
      "groups:\n  - {name: db, max_concurrent: 8, queue: {discipline: "
      "codel, target: 200ms}}\nroutes:\n  - {name: r, group: db, ";
  EXPECT_TRUE(has(warned(codel + "max_wait: 200ms}\n"), "routes[0].max_wait"));
  EXPECT_TRUE(warned(codel + "max_wait: 201ms}\n").empty());
  const std::string aging =
      "groups:\n  - {name: db, max_concurrent: 8, aging_step: 1s}\nroutes:\n  - {name: r, "
      "group: db, ";
  EXPECT_TRUE(has(warned(aging + "max_wait: 500ms}\n"), "routes[0].max_wait"));
  EXPECT_TRUE(warned(aging + "max_wait: 3s}\n").empty());
}

TEST(config_warnings, a_reserve_no_route_can_claim) {
  const std::string group =
      "groups:\n  - {name: db, max_concurrent: 8, reserve: {permits: 2, priority: 10}}\n";
  EXPECT_TRUE(has(warned(group + "routes: [{name: r, group: db, priority: {default: 9}}]\n"),
                  "groups[0].reserve.priority"));
  EXPECT_TRUE(warned(group + "routes: [{name: r, group: db, priority: {header: X-K, values: "
                             "{k: 10}}}]\n")
                  .empty());
  EXPECT_TRUE(warned(group + "routes: [{name: r, group: db, priority: {raw_header: X-P, "
                             "raw_header_trusted: true}}]\n")
                  .empty());
}

TEST(config_warnings, unused_and_shadow_groups) {
  const std::string yaml =
      "groups:\n  - {name: db, max_concurrent: 8, shadow: true}\n"
      "  - {name: spare, max_concurrent: 1}\n"
      "routes: [{name: r, group: db}]\n";
  const auto keys = warned(yaml);
  EXPECT_TRUE(has(keys, "groups[0].shadow"));
  EXPECT_TRUE(has(keys, "groups[1].name"));
  EXPECT_EQ(keys.size(), 2u);
}

TEST(config_warnings, retry_after_zero_on_a_shed) {
  EXPECT_TRUE(has(warned(std::string(minimal) + "    fallback: {retry_after: 0}\n"),
                  "routes[0].fallback.retry_after"));
  EXPECT_TRUE(has(warned(std::string(minimal) + "    fallback: {timeout: {retry_after: 0}}\n"),
                  "routes[0].fallback.retry_after"));
  EXPECT_TRUE(warned(std::string(minimal) + "    fallback: {shutdown: {retry_after: 0}}\n").empty())
      << "shutdown is no shed: the client goes to another instance";
}

TEST(config_warnings, a_drain_longer_than_supervisors_wait) {
  EXPECT_TRUE(
      has(warned("server: {drain_delay: 20s, shutdown_grace: 15s}\n" + std::string(minimal)),
          "server.drain_delay"));
  EXPECT_TRUE(has(warned("server: {shutdown_grace: 31s}\n" + std::string(minimal)),
                  "server.shutdown_grace"));
  EXPECT_TRUE(
      warned("server: {drain_delay: 10s, shutdown_grace: 20s}\n" + std::string(minimal)).empty());
}

TEST(config_warnings, a_write_stall_watchdog_turned_off) {
  EXPECT_TRUE(
      has(warned("server: {write_stall: 0}\n" + std::string(minimal)), "server.write_stall"));
  EXPECT_TRUE(warned("server: {write_stall: 100ms}\n" + std::string(minimal)).empty());
  EXPECT_TRUE(warned(minimal).empty()) << "the default (1s) keeps the watchdog on";
}

TEST(config_warnings, a_token_file_others_can_read) {
  const temp_dir dir;
  const fs::path token = dir.write("token", "t");
  const std::string yaml = "admin: {port: 9081, token_file: token}\n" + std::string(minimal);
  fs::permissions(token, fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_TRUE(
      keys_of(qos::config::warnings(load_config_string(yaml, "t.yaml", dir.path().string())))
          .empty());
  fs::permissions(token, fs::perms::group_read | fs::perms::others_read, fs::perm_options::add);
  EXPECT_TRUE(
      has(keys_of(qos::config::warnings(load_config_string(yaml, "t.yaml", dir.path().string()))),
          "admin.token_file"));
}

TEST(config_warnings, format_names_file_line_and_key) {
  const app_config cfg = load_config_string(
      "groups:\n  - {name: db, max_concurrent: 8, shadow: true}\nroutes: [{name: r, group: db}]\n",
      "w.yaml");
  const auto ws = qos::config::warnings(cfg);
  ASSERT_EQ(ws.size(), 1u);
  EXPECT_EQ(
      qos::config::format_warning(cfg, ws[0]).rfind("w.yaml:2: warning: groups[0].shadow: ", 0), 0u)
      << qos::config::format_warning(cfg, ws[0]);
  EXPECT_EQ(qos::config::format_warning(cfg, {.key = "server.x", .line = 0, .message = "m"}),
            "w.yaml: warning: server.x: m");
}

}  // namespace

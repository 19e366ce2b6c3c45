// Tests of the YAML config loader: defaults, every key, fallback inheritance and files, the
// fallback rule for every outcome, that every bad input fails with a message naming the file,
// line, column and key path, and that it fails as code-side validate() does.
#include "qos/config/config.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "qos/admission/options.hpp"
#include "qos/core/outcome.hpp"

#ifndef QOS_SOURCE_DIR
#error "QOS_SOURCE_DIR must name the repository root"
#endif

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using qos::outcome;
using qos::config::app_config;
using qos::config::config_error;
using qos::config::fallback_config;
using qos::config::fallback_set;
using qos::config::load_config;
using qos::config::load_config_string;
using qos::config::parse_duration;

// The smallest valid config; tests append to it or replace parts of it.
constexpr const char* minimal = R"(groups:
  - name: db
    max_concurrent: 8
routes:
  - name: items
    group: db
)";

// A fresh folder per test, so file-based cases cannot see each other's files.
class temp_dir {
 public:
  temp_dir() {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() / ("qos_config_test_" + std::to_string(::getpid()) + "_" +
                                         info->test_suite_name() + "_" + info->name());
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
    const fs::path file = path_ / name;
    fs::create_directories(file.parent_path());
    std::ofstream(file, std::ios::binary) << content;
    return file;
  }

 private:
  fs::path path_;
};

config_error load_error(const std::string& yaml, const std::string& base_dir = ".") {
  try {
    load_config_string(yaml, "test.yaml", base_dir);
  } catch (const config_error& e) {
    return e;
  }
  ADD_FAILURE() << "expected config_error for:\n" << yaml;
  return config_error("", 0, 0, "", "");
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The entry a route's `fallback` gives `why` itself, if any.
const std::optional<fallback_config>& own(const fallback_set& f, outcome why) {
  return f.own[qos::index(why)];
}

// The response `why` gets, by the fallback rule (config::resolve).
fallback_config response(const fallback_set& f, outcome why) {
  return qos::config::resolve(f)[qos::index(why)];
}

// ---------------------------------------------------------------------------------------------
// Valid configs

TEST(config_load, applies_defaults) {
  const app_config config = load_config_string(minimal);

  EXPECT_EQ(config.source, "<string>");
  EXPECT_EQ(config.server.address, "127.0.0.1");
  EXPECT_EQ(config.server.port, 9080);
  EXPECT_EQ(config.server.reactor_threads, 2u);
  EXPECT_EQ(config.server.fiber_threads, 2u);
  EXPECT_EQ(config.server.max_pending_jobs, 16384u);
  EXPECT_EQ(config.server.shutdown_grace, 5s);
  EXPECT_EQ(config.server.backlog, 4096u);
  EXPECT_EQ(config.logging.level, "info");

  ASSERT_EQ(config.groups.size(), 1u);
  EXPECT_EQ(config.groups[0].name, "db");
  EXPECT_EQ(config.groups[0].limiter.max_concurrent, 8u);
  EXPECT_EQ(config.groups[0].limiter.max_queue, 1000u);
  EXPECT_EQ(config.groups[0].blocking_threads, 0u);

  ASSERT_EQ(config.routes.size(), 1u);
  const auto& route = config.routes[0];
  EXPECT_EQ(route.name, "items");
  EXPECT_EQ(route.group, "db");
  EXPECT_EQ(route.max_wait, 1s);
  EXPECT_EQ(route.priority.default_level, 0);
  EXPECT_EQ(route.priority.header, "");
  EXPECT_TRUE(route.priority.values.empty());
  EXPECT_EQ(route.priority.raw_header, "");
  EXPECT_FALSE(route.priority.raw_header_trusted);
  EXPECT_EQ(route.fallback.route.status, 503);
  EXPECT_EQ(route.fallback.route.retry_after_s, 1);
  EXPECT_TRUE(route.fallback.route.headers.empty());
  EXPECT_EQ(route.fallback.route.body, R"({"error":"overloaded"})");
  EXPECT_EQ(route.fallback.route.content_type, "application/json");
  EXPECT_EQ(route.fallback.route.file, "");
  EXPECT_FALSE(own(route.fallback, outcome::timeout));
  EXPECT_FALSE(own(route.fallback, outcome::queue_full));
  EXPECT_FALSE(own(route.fallback, outcome::shutdown));
}

TEST(config_load, parses_every_key) {
  const app_config config = load_config_string(R"(
server:
  address: 0.0.0.0
  port: 0
  reactor_threads: 3
  fiber_threads: 4
  max_pending_jobs: 100
  shutdown_grace: 250ms
  backlog: 64
logging:
  level: debug
groups:
  - name: db.main-1_x
    max_concurrent: 4
    max_queue: 50
    blocking_threads: 6
routes:
  - name: items
    group: db.main-1_x
    max_wait: 1.5s
    priority:
      default: 3
      header: X-Api-Key
      values: {gold-key: 10, silver-key: 5, top: 15}
      raw_header: X-Priority
      raw_header_trusted: yes
    fallback:
      status: 429
      retry_after: 7
      headers: {X-Foo: bar, Cache-Control: no-store}
      body: busy
      content_type: text/plain
      timeout: {status: 504}
      queue_full: {status: 507}
      shutdown: {status: 502}
)",
                                               "full.yaml");

  EXPECT_EQ(config.source, "full.yaml");
  EXPECT_EQ(config.server.address, "0.0.0.0");
  EXPECT_EQ(config.server.port, 0);
  EXPECT_EQ(config.server.reactor_threads, 3u);
  EXPECT_EQ(config.server.fiber_threads, 4u);
  EXPECT_EQ(config.server.max_pending_jobs, 100u);
  EXPECT_EQ(config.server.shutdown_grace, 250ms);
  EXPECT_EQ(config.server.backlog, 64u);
  EXPECT_EQ(config.logging.level, "debug");

  const auto* group = config.find_group("db.main-1_x");
  ASSERT_NE(group, nullptr);
  EXPECT_EQ(group->limiter.max_concurrent, 4u);
  EXPECT_EQ(group->limiter.max_queue, 50u);
  EXPECT_EQ(group->blocking_threads, 6u);

  const auto* route = config.find_route("items");
  ASSERT_NE(route, nullptr);
  EXPECT_EQ(route->group, "db.main-1_x");
  EXPECT_EQ(route->max_wait, 1500ms);
  EXPECT_EQ(route->priority.default_level, 3);
  EXPECT_EQ(route->priority.header, "X-Api-Key");
  const std::map<std::string, qos::priority> values{
      {"gold-key", 10}, {"silver-key", 5}, {"top", 15}};
  EXPECT_EQ(route->priority.values, values);
  EXPECT_EQ(route->priority.raw_header, "X-Priority");
  EXPECT_TRUE(route->priority.raw_header_trusted);

  const auto& any = route->fallback.route;
  EXPECT_EQ(any.status, 429);
  EXPECT_EQ(any.retry_after_s, 7);
  const std::map<std::string, std::string> headers{{"X-Foo", "bar"}, {"Cache-Control", "no-store"}};
  EXPECT_EQ(any.headers, headers);
  EXPECT_EQ(any.body, "busy");
  EXPECT_EQ(any.content_type, "text/plain");
  ASSERT_TRUE(own(route->fallback, outcome::timeout));
  ASSERT_TRUE(own(route->fallback, outcome::queue_full));
  ASSERT_TRUE(own(route->fallback, outcome::shutdown));
  EXPECT_EQ(own(route->fallback, outcome::timeout)->status, 504);
  EXPECT_EQ(own(route->fallback, outcome::queue_full)->status, 507);
  EXPECT_EQ(own(route->fallback, outcome::shutdown)->status, 502);
}

TEST(config_load, finds_groups_and_routes_by_name) {
  const app_config config = load_config_string(std::string(minimal) + R"(  - name: other
    group: db
)");
  ASSERT_NE(config.find_route("other"), nullptr);
  EXPECT_EQ(config.find_route("other")->name, "other");
  EXPECT_EQ(config.find_route("missing"), nullptr);
  EXPECT_EQ(config.find_group("missing"), nullptr);
  ASSERT_NE(config.find_group("db"), nullptr);
}

TEST(config_load, records_declaration_lines) {
  const app_config config = load_config_string(R"(# comment
groups:
  - name: a
    max_concurrent: 1

  - max_concurrent: 2
    name: b
routes:
  - name: r1
    group: a
  -
    name: r2
    group: b
)");
  EXPECT_EQ(config.groups[0].line, 3);
  EXPECT_EQ(config.groups[1].line, 6);
  EXPECT_EQ(config.routes[0].line, 9);
  EXPECT_EQ(config.routes[1].line, 12);
}

TEST(config_load, per_reason_fallbacks_inherit_route_fields) {
  const app_config config = load_config_string(std::string(minimal) + R"(    fallback:
      status: 429
      retry_after: 3
      headers: {X-Foo: bar}
      body: '{"error":"busy"}'
      timeout:
        status: 504
      queue_full:
        headers: {X-Queue: full}
        body: full
        content_type: text/plain
      shutdown:
        retry_after: none
)");
  const auto& fallback = config.routes[0].fallback;
  const std::map<std::string, std::string> route_headers{{"X-Foo", "bar"}};

  ASSERT_TRUE(own(fallback, outcome::timeout));
  EXPECT_EQ(own(fallback, outcome::timeout)->status, 504);
  EXPECT_EQ(own(fallback, outcome::timeout)->retry_after_s, 3);
  EXPECT_EQ(own(fallback, outcome::timeout)->headers, route_headers);
  EXPECT_EQ(own(fallback, outcome::timeout)->body, R"({"error":"busy"})");
  EXPECT_EQ(own(fallback, outcome::timeout)->content_type, "application/json");

  // A headers table replaces the inherited one instead of merging with it.
  ASSERT_TRUE(own(fallback, outcome::queue_full));
  EXPECT_EQ(own(fallback, outcome::queue_full)->status, 429);
  const std::map<std::string, std::string> queue_headers{{"X-Queue", "full"}};
  EXPECT_EQ(own(fallback, outcome::queue_full)->headers, queue_headers);
  EXPECT_EQ(own(fallback, outcome::queue_full)->body, "full");
  EXPECT_EQ(own(fallback, outcome::queue_full)->content_type, "text/plain");

  ASSERT_TRUE(own(fallback, outcome::shutdown));
  EXPECT_EQ(own(fallback, outcome::shutdown)->status, 429);
  EXPECT_EQ(own(fallback, outcome::shutdown)->retry_after_s, std::nullopt);
  EXPECT_EQ(own(fallback, outcome::shutdown)->body, R"({"error":"busy"})");

  EXPECT_EQ(fallback.route.status, 429);
  EXPECT_EQ(fallback.route.retry_after_s, 3);
}

TEST(config_load, retry_after_can_be_omitted) {
  for (const char* value : {"none", "null", "~", "", "'none'"}) {
    const app_config config = load_config_string(
        std::string(minimal) + "    fallback:\n      retry_after: " + value + "\n");
    EXPECT_EQ(config.routes[0].fallback.route.retry_after_s, std::nullopt) << value;
  }
  const app_config zero =
      load_config_string(std::string(minimal) + "    fallback: {retry_after: 0}\n");
  EXPECT_EQ(zero.routes[0].fallback.route.retry_after_s, 0);
}

TEST(config_load, empty_sections_mean_defaults) {
  const app_config config = load_config_string(std::string("server:\nlogging:\n") + minimal +
                                               "    priority:\n    fallback:\n");
  EXPECT_EQ(config.server.port, 9080);
  EXPECT_EQ(config.logging.level, "info");
  EXPECT_EQ(config.routes[0].fallback.route.status, 503);
}

TEST(config_load, integers_are_decimal) {
  // yaml-cpp alone would read 010 as octal 8.
  const app_config config = load_config_string(R"(groups:
  - {name: db, max_concurrent: 010}
routes:
  - {name: r, group: db}
)");
  EXPECT_EQ(config.groups[0].limiter.max_concurrent, 10u);
}

TEST(config_load, every_log_level_is_accepted) {
  for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    const app_config config =
        load_config_string(std::string("logging: {level: ") + level + "}\n" + minimal);
    EXPECT_EQ(config.logging.level, level);
  }
}

TEST(config_load, logging_keys_default_and_load) {
  const app_config defaults = load_config_string(minimal);
  EXPECT_EQ(defaults.logging.format, qos::config::log_format::text);
  EXPECT_EQ(defaults.logging.sink, qos::config::log_sink::standard_error);
  EXPECT_FALSE(defaults.logging.access_log.enabled);
  EXPECT_EQ(defaults.logging.access_log.sample, 1.0);
  EXPECT_EQ(defaults.logging.access_log.max_per_second, 0u);

  const app_config set = load_config_string(R"(logging:
  level: warn
  format: json
  sink: stdout
  access_log: {enabled: true, sample: 0.25, max_per_second: 500}
)" + std::string(minimal));
  EXPECT_EQ(set.logging.level, "warn");
  EXPECT_EQ(set.logging.format, qos::config::log_format::json);
  EXPECT_EQ(set.logging.sink, qos::config::log_sink::standard_output);
  EXPECT_TRUE(set.logging.access_log.enabled);
  EXPECT_EQ(set.logging.access_log.sample, 0.25);
  EXPECT_EQ(set.logging.access_log.max_per_second, 500u);

  // The bounds themselves are fine: a sample of 1 (every request), 0 lines a second (no limit).
  const app_config edges = load_config_string(
      "logging: {access_log: {sample: 1, max_per_second: 0}, sink: stderr, format: text}\n" +
      std::string(minimal));
  EXPECT_EQ(edges.logging.access_log.sample, 1.0);
  EXPECT_EQ(edges.logging.access_log.max_per_second, 0u);
  const app_config top = load_config_string("logging: {access_log: {max_per_second: 1000000}}\n" +
                                            std::string(minimal));
  EXPECT_EQ(top.logging.access_log.max_per_second, 1000000u);
}

TEST(config_load, blocking_threads_equal_to_max_concurrent_is_fine) {
  const app_config config = load_config_string(R"(groups:
  - {name: db, max_concurrent: 4, blocking_threads: 4}
routes:
  - {name: r, group: db}
)");
  EXPECT_EQ(config.groups[0].blocking_threads, 4u);
}

// ---------------------------------------------------------------------------------------------
// Overload control keys: adaptive limits, queue disciplines, aging, shadow mode, execution
// timeouts, costs, client deadlines, predictive rejects and the new fallback reasons.

// `minimal` with `group_extra` in the group (from line 4) and `route_extra` in the route.
std::string overload_config(const std::string& group_extra, const std::string& route_extra = "") {
  return "groups:\n  - name: db\n    max_concurrent: 8\n" + group_extra +
         "routes:\n  - name: items\n    group: db\n" + route_extra;
}

TEST(config_overload, new_keys_default_to_the_old_behaviour) {
  const app_config config = load_config_string(minimal);
  const auto& group = config.groups[0];
  EXPECT_FALSE(group.limit);
  EXPECT_EQ(group.limiter.discipline, qos::queue_discipline::fifo);
  EXPECT_EQ(group.limiter.target, 5ms);
  EXPECT_EQ(group.limiter.interval, 100ms);
  EXPECT_EQ(group.limiter.aging_step, 0ms);
  EXPECT_FALSE(group.shadow);

  const auto& route = config.routes[0];
  EXPECT_EQ(route.max_exec, std::nullopt);
  EXPECT_EQ(route.cost, 1u);
  EXPECT_EQ(route.deadline.header, "");
  EXPECT_FALSE(route.deadline.grpc_timeout);
  EXPECT_FALSE(route.predictive_reject);
  EXPECT_FALSE(route.fallback.route.retry_after_auto);
  EXPECT_FALSE(own(route.fallback, outcome::shed));
  EXPECT_FALSE(own(route.fallback, outcome::deadline));
  EXPECT_FALSE(own(route.fallback, outcome::predicted_timeout));
  // exec_timeout needs no entry for callers to answer it: the route-level response, 504.
  EXPECT_FALSE(own(route.fallback, outcome::exec_timeout));
  const fallback_config exec_timeout = response(route.fallback, outcome::exec_timeout);
  EXPECT_EQ(exec_timeout.status, 504);
  EXPECT_EQ(exec_timeout.retry_after_s, 1);
  EXPECT_FALSE(exec_timeout.retry_after_auto);
  EXPECT_EQ(exec_timeout.body, route.fallback.route.body);
  EXPECT_EQ(exec_timeout.content_type, "application/json");
}

TEST(config_overload, limit_defaults_follow_max_concurrent) {
  const app_config config = load_config_string(overload_config("    limit: {algorithm: aimd}\n"));
  ASSERT_TRUE(config.groups[0].limit);
  const qos::limit_options& o = *config.groups[0].limit;
  const qos::limit_options defaults;
  EXPECT_EQ(o.kind, qos::limit_kind::aimd);
  EXPECT_EQ(o.min, 1u);
  EXPECT_EQ(o.max, 32u);     // 4 * max_concurrent
  EXPECT_EQ(o.initial, 8u);  // max_concurrent
  EXPECT_EQ(o.backoff_ratio, defaults.backoff_ratio);
  EXPECT_EQ(o.timeout, defaults.timeout);
  EXPECT_EQ(o.rtt_tolerance, defaults.rtt_tolerance);
  EXPECT_EQ(o.smoothing, defaults.smoothing);
  EXPECT_EQ(o.long_window, defaults.long_window);
  EXPECT_EQ(o.probe_interval, defaults.probe_interval);
  EXPECT_EQ(config.groups[0].limiter.max_concurrent, 8u);
}

TEST(config_overload, limit_initial_is_max_concurrent_clamped_into_min_max) {
  const app_config above =
      load_config_string(overload_config("    limit: {algorithm: fixed, min: 2, max: 4}\n"));
  EXPECT_EQ(above.groups[0].limit->initial, 4u);
  EXPECT_EQ(above.groups[0].limit->kind, qos::limit_kind::fixed);

  // With no max, max defaults to 4 * max_concurrent but never below min.
  const app_config below =
      load_config_string(overload_config("    limit: {algorithm: fixed, min: 40}\n"));
  EXPECT_EQ(below.groups[0].limit->min, 40u);
  EXPECT_EQ(below.groups[0].limit->max, 40u);
  EXPECT_EQ(below.groups[0].limit->initial, 40u);
}

TEST(config_overload, limit_initial_may_reach_the_default_max) {
  // The default max is 4 * max_concurrent = 32: 32 is fine, 33 is not (see the bad cases).
  const app_config config =
      load_config_string(overload_config("    limit: {algorithm: aimd, initial: 32}\n"));
  EXPECT_EQ(config.groups[0].limit->max, 32u);
  EXPECT_EQ(config.groups[0].limit->initial, 32u);
}

TEST(config_overload, parses_every_limit_key) {
  const app_config aimd = load_config_string(overload_config(R"(    limit:
      algorithm: aimd
      min: 2
      max: 64
      initial: 10
      backoff_ratio: 0.75
      timeout: 1.5s
)"));
  const qos::limit_options& a = *aimd.groups[0].limit;
  EXPECT_EQ(a.kind, qos::limit_kind::aimd);
  EXPECT_EQ(a.min, 2u);
  EXPECT_EQ(a.max, 64u);
  EXPECT_EQ(a.initial, 10u);
  EXPECT_DOUBLE_EQ(a.backoff_ratio, 0.75);
  EXPECT_EQ(a.timeout, 1500ms);

  // Integers are fine where a number is expected.
  const app_config gradient = load_config_string(overload_config(R"(    limit:
      algorithm: gradient2
      rtt_tolerance: 2
      smoothing: 1
      long_window: 100
      probe_interval: 5s
)"));
  const qos::limit_options& g = *gradient.groups[0].limit;
  EXPECT_EQ(g.kind, qos::limit_kind::gradient2);
  EXPECT_DOUBLE_EQ(g.rtt_tolerance, 2.0);
  EXPECT_DOUBLE_EQ(g.smoothing, 1.0);
  EXPECT_EQ(g.long_window, 100u);
  EXPECT_EQ(g.probe_interval, 5s);

  const app_config vegas = load_config_string(
      overload_config("    limit: {algorithm: vegas, probe_interval: 30s, min: 3}\n"));
  const qos::limit_options& v = *vegas.groups[0].limit;
  EXPECT_EQ(v.kind, qos::limit_kind::vegas);
  EXPECT_EQ(v.probe_interval, 30s);
  EXPECT_EQ(v.min, 3u);
}

TEST(config_overload, limit_options_are_accepted_by_the_algorithm_factory) {
  for (const char* limit :
       {"{algorithm: fixed}", "{algorithm: aimd, backoff_ratio: 0.5, timeout: 1ms}",
        "{algorithm: gradient2, rtt_tolerance: 1, smoothing: 0.01, long_window: 1}",
        "{algorithm: vegas, min: 8, max: 8, probe_interval: 100us}"}) {
    const app_config config =
        load_config_string(overload_config(std::string("    limit: ") + limit + "\n"));
    EXPECT_NO_THROW(qos::make_limit_algorithm(*config.groups[0].limit)) << limit;
    EXPECT_NO_THROW(qos::validate(config.groups[0])) << limit;
  }
}

TEST(config_overload, parses_reserve) {
  const app_config none = load_config_string(minimal);
  EXPECT_EQ(none.groups[0].limiter.reserve, 0u);
  const app_config c =
      load_config_string(overload_config("    reserve: {permits: 2, priority: 10}\n"));
  EXPECT_EQ(c.groups[0].limiter.reserve, 2u);
  EXPECT_EQ(c.groups[0].limiter.reserve_level, 10);
}

TEST(config_overload, parses_queue_aging_and_shadow) {
  const app_config codel = load_config_string(overload_config(R"(    queue:
      discipline: codel
      target: 10ms
      interval: 200ms
    aging_step: 250ms
    shadow: true
)"));
  const auto& g = codel.groups[0];
  EXPECT_EQ(g.limiter.discipline, qos::queue_discipline::codel);
  EXPECT_EQ(g.limiter.target, 10ms);
  EXPECT_EQ(g.limiter.interval, 200ms);
  EXPECT_EQ(g.limiter.aging_step, 250ms);
  EXPECT_TRUE(g.shadow);

  const app_config lifo = load_config_string(
      overload_config("    queue: {discipline: adaptive_lifo, interval: 1s}\n    aging_step: 0\n"));
  EXPECT_EQ(lifo.groups[0].limiter.discipline, qos::queue_discipline::adaptive_lifo);
  EXPECT_EQ(lifo.groups[0].limiter.target, 5ms);
  EXPECT_EQ(lifo.groups[0].limiter.interval, 1s);
  EXPECT_EQ(lifo.groups[0].limiter.aging_step, 0ms);

  const app_config empty = load_config_string(overload_config("    queue:\n    shadow: no\n"));
  EXPECT_EQ(empty.groups[0].limiter.discipline, qos::queue_discipline::fifo);
  EXPECT_FALSE(empty.groups[0].shadow);
}

TEST(config_overload, blocking_threads_must_cover_limit_max) {
  const app_config config = load_config_string(
      overload_config("    blocking_threads: 64\n    limit: {algorithm: aimd, max: 64}\n"));
  EXPECT_EQ(config.groups[0].blocking_threads, 64u);
  // A limit that never exceeds 4 needs no more than 4 threads, whatever max_concurrent says.
  const app_config small = load_config_string(
      overload_config("    limit: {algorithm: aimd, max: 4}\n    blocking_threads: 4\n"));
  EXPECT_EQ(small.groups[0].blocking_threads, 4u);
}

TEST(config_overload, parses_route_keys) {
  const app_config config = load_config_string(overload_config("", R"(    max_exec: 2s
    cost: 3
    deadline:
      header: X-Request-Timeout
      grpc_timeout: true
    predictive_reject: true
)"));
  const auto& route = config.routes[0];
  EXPECT_EQ(route.max_exec, 2s);
  EXPECT_EQ(route.cost, 3u);
  EXPECT_EQ(route.deadline.header, "X-Request-Timeout");
  EXPECT_TRUE(route.deadline.grpc_timeout);
  EXPECT_TRUE(route.predictive_reject);

  const app_config grpc_only =
      load_config_string(overload_config("", "    deadline: {grpc_timeout: yes}\n"));
  EXPECT_EQ(grpc_only.routes[0].deadline.header, "");
  EXPECT_TRUE(grpc_only.routes[0].deadline.grpc_timeout);
}

TEST(config_overload, cost_may_reach_max_concurrent_or_limit_max) {
  EXPECT_EQ(load_config_string(overload_config("", "    cost: 8\n")).routes[0].cost, 8u);
  const std::string limit = "    limit: {algorithm: aimd, max: 16}\n";
  EXPECT_EQ(load_config_string(overload_config(limit, "    cost: 16\n")).routes[0].cost, 16u);
  // A limit below max_concurrent does not take permits away from a route.
  const std::string low = "    limit: {algorithm: aimd, max: 4}\n";
  EXPECT_EQ(load_config_string(overload_config(low, "    cost: 8\n")).routes[0].cost, 8u);
}

TEST(config_overload, new_fallback_reasons_inherit_route_fields) {
  const app_config config = load_config_string(std::string(minimal) + R"(    fallback:
      status: 429
      retry_after: 3
      headers: {X-Foo: bar}
      body: busy
      shed: {status: 503}
      deadline: {body: too late}
      predicted_timeout: {retry_after: none}
      exec_timeout: {headers: {X-Exec: slow}}
)");
  const auto& fallback = config.routes[0].fallback;
  const std::map<std::string, std::string> route_headers{{"X-Foo", "bar"}};
  ASSERT_TRUE(own(fallback, outcome::shed));
  EXPECT_EQ(own(fallback, outcome::shed)->status, 503);
  EXPECT_EQ(own(fallback, outcome::shed)->retry_after_s, 3);
  EXPECT_EQ(own(fallback, outcome::shed)->headers, route_headers);
  EXPECT_EQ(own(fallback, outcome::shed)->body, "busy");

  ASSERT_TRUE(own(fallback, outcome::deadline));
  EXPECT_EQ(own(fallback, outcome::deadline)->status, 429);
  EXPECT_EQ(own(fallback, outcome::deadline)->body, "too late");

  ASSERT_TRUE(own(fallback, outcome::predicted_timeout));
  EXPECT_EQ(own(fallback, outcome::predicted_timeout)->status, 429);
  EXPECT_EQ(own(fallback, outcome::predicted_timeout)->retry_after_s, std::nullopt);

  // exec_timeout inherits everything but the status, which stays 504.
  ASSERT_TRUE(own(fallback, outcome::exec_timeout));
  EXPECT_EQ(own(fallback, outcome::exec_timeout)->status, 504);
  EXPECT_EQ(own(fallback, outcome::exec_timeout)->retry_after_s, 3);
  EXPECT_EQ(own(fallback, outcome::exec_timeout)->body, "busy");
  const std::map<std::string, std::string> exec_headers{{"X-Exec", "slow"}};
  EXPECT_EQ(own(fallback, outcome::exec_timeout)->headers, exec_headers);
  EXPECT_FALSE(own(fallback, outcome::timeout));
}

TEST(config_overload, exec_timeout_status_defaults_to_504) {
  const app_config absent =
      load_config_string(std::string(minimal) + "    fallback: {status: 429, body: busy}\n");
  EXPECT_FALSE(own(absent.routes[0].fallback, outcome::exec_timeout));
  EXPECT_EQ(response(absent.routes[0].fallback, outcome::exec_timeout).status, 504);
  EXPECT_EQ(response(absent.routes[0].fallback, outcome::exec_timeout).body, "busy");
  EXPECT_EQ(absent.routes[0].fallback.route.status, 429);

  const app_config own_status = load_config_string(
      std::string(minimal) + "    fallback: {status: 429, exec_timeout: {status: 500}}\n");
  ASSERT_TRUE(own(own_status.routes[0].fallback, outcome::exec_timeout));
  EXPECT_EQ(own(own_status.routes[0].fallback, outcome::exec_timeout)->status, 500);
  EXPECT_EQ(response(own_status.routes[0].fallback, outcome::exec_timeout).status, 500);

  const app_config empty_entry =
      load_config_string(std::string(minimal) + "    fallback:\n      exec_timeout:\n");
  ASSERT_TRUE(own(empty_entry.routes[0].fallback, outcome::exec_timeout));
  EXPECT_EQ(own(empty_entry.routes[0].fallback, outcome::exec_timeout)->status, 504);
  EXPECT_EQ(response(empty_entry.routes[0].fallback, outcome::exec_timeout).status, 504);
}

TEST(config_overload, retry_after_auto) {
  const app_config route_level = load_config_string(std::string(minimal) + R"(    fallback:
      retry_after: auto
      timeout: {status: 504}
      shed: {retry_after: 5}
      deadline: {retry_after: none}
)");
  const auto& fallback = route_level.routes[0].fallback;
  EXPECT_TRUE(fallback.route.retry_after_auto);
  ASSERT_TRUE(own(fallback, outcome::timeout));
  EXPECT_TRUE(own(fallback, outcome::timeout)->retry_after_auto);           // inherited
  EXPECT_TRUE(response(fallback, outcome::exec_timeout).retry_after_auto);  // inherited
  ASSERT_TRUE(own(fallback, outcome::shed));
  ASSERT_TRUE(own(fallback, outcome::deadline));
  // A per-reason retry_after replaces auto whole.
  EXPECT_FALSE(own(fallback, outcome::shed)->retry_after_auto);
  EXPECT_EQ(own(fallback, outcome::shed)->retry_after_s, 5);
  EXPECT_FALSE(own(fallback, outcome::deadline)->retry_after_auto);
  EXPECT_EQ(own(fallback, outcome::deadline)->retry_after_s, std::nullopt);

  const app_config per_reason = load_config_string(std::string(minimal) + R"(    fallback:
      retry_after: 3
      queue_full:
        retry_after: auto
      predicted_timeout: {retry_after: 'auto'}
)");
  const auto& reasons = per_reason.routes[0].fallback;
  EXPECT_FALSE(reasons.route.retry_after_auto);
  EXPECT_EQ(reasons.route.retry_after_s, 3);
  ASSERT_TRUE(own(reasons, outcome::queue_full));
  ASSERT_TRUE(own(reasons, outcome::predicted_timeout));
  EXPECT_TRUE(own(reasons, outcome::queue_full)->retry_after_auto);
  EXPECT_TRUE(own(reasons, outcome::predicted_timeout)->retry_after_auto);
  EXPECT_FALSE(response(reasons, outcome::exec_timeout).retry_after_auto);
}

// ---------------------------------------------------------------------------------------------
// The fallback rule: the response resolve() gives every outcome of outcome_table.

// The rule for one outcome, written out here rather than read from outcome_table, so that a
// change to the table shows up as a failing test.
struct fallback_rule {
  outcome why;
  // A route's `fallback` may give it an entry of its own.
  bool own_entry = false;
  // Whose entry it uses when it has none; none: the route-level response.
  std::optional<outcome> parent = std::nullopt;
  // Its status when no entry of its own sets one; 0: the inherited status.
  int status = 0;
  // A fixed 500 whatever the route says.
  bool internal = false;
};

void PrintTo(const fallback_rule& rule, std::ostream* out) {
  *out << qos::to_string(rule.why);
}

const fallback_rule fallback_rules[] = {
    {.why = outcome::admitted},  // the handler answers
    {.why = outcome::queue_full, .own_entry = true},
    {.why = outcome::timeout, .own_entry = true},
    {.why = outcome::client_gone, .own_entry = true},
    {.why = outcome::shutdown, .own_entry = true},
    {.why = outcome::rejected, .own_entry = true, .parent = outcome::queue_full},
    {.why = outcome::error, .status = 500, .internal = true},
    {.why = outcome::shed, .own_entry = true, .parent = outcome::queue_full},
    {.why = outcome::deadline, .own_entry = true, .parent = outcome::timeout},
    {.why = outcome::predicted_timeout, .own_entry = true, .parent = outcome::timeout},
    {.why = outcome::exec_timeout, .own_entry = true, .status = 504},
};

TEST(config_fallback_rule, covers_every_outcome_in_table_order) {
  static_assert(std::size(fallback_rules) == qos::outcome_count);
  for (std::size_t i = 0; i < qos::outcome_count; ++i) {
    const auto& row = qos::outcome_table[i];
    SCOPED_TRACE(row.name);
    EXPECT_EQ(fallback_rules[i].why, row.value);
    EXPECT_EQ(fallback_rules[i].own_entry, row.answer == qos::answer_kind::fallback);
    EXPECT_EQ(fallback_rules[i].internal, row.answer == qos::answer_kind::internal);
  }
}

// A route-level response that differs from the defaults in status, Retry-After, headers, body
// and content type.
fallback_config route_level() {
  return {.status = 429,
          .retry_after_s = 7,
          .headers = {{"X-Route", "route"}},
          .body = "route",
          .content_type = "text/plain",
          .file = {}};
}

// The same, in YAML, under `fallback:` of the `minimal` route (from line 8).
const std::string route_level_yaml = R"(    fallback:
      status: 429
      retry_after: 7
      headers: {X-Route: route}
      body: route
      content_type: text/plain
)";

// An entry of `why`'s own that differs from route_level() and from every other reason's.
fallback_config entry_for(outcome why) {
  return {.status = 400 + static_cast<int>(qos::index(why)),
          .retry_after_s = std::nullopt,
          .retry_after_auto = true,
          .headers = {{"X-Entry", std::string(qos::to_string(why))}},
          .body = std::string(qos::to_string(why)),
          .content_type = "text/html",
          .file = {}};
}

// The fixed answer to a handler that failed.
fallback_config internal_error() {
  return {.status = 500,
          .retry_after_s = std::nullopt,
          .headers = {},
          .body = R"({"error":"internal"})",
          .content_type = "application/json",
          .file = {}};
}

void expect_response(const fallback_config& got, const fallback_config& want) {
  EXPECT_EQ(got.status, want.status);
  EXPECT_EQ(got.retry_after_s, want.retry_after_s);
  EXPECT_EQ(got.retry_after_auto, want.retry_after_auto);
  EXPECT_EQ(got.headers, want.headers);
  EXPECT_EQ(got.body, want.body);
  EXPECT_EQ(got.content_type, want.content_type);
  EXPECT_EQ(got.file, want.file);
}

// What `rule.why` gets when the route gives no reason an entry of its own.
fallback_config without_entries(const fallback_rule& rule) {
  if (rule.internal) return internal_error();
  fallback_config out = route_level();
  if (rule.status != 0) out.status = rule.status;
  return out;
}

class config_fallback_rule : public testing::TestWithParam<fallback_rule> {};

TEST_P(config_fallback_rule, with_no_entries) {
  const fallback_rule& rule = GetParam();
  expect_response(response(fallback_set{.route = route_level()}, rule.why), without_entries(rule));

  // The same through the loader.
  const app_config config = load_config_string(std::string(minimal) + route_level_yaml);
  expect_response(response(config.routes[0].fallback, rule.why), without_entries(rule));
}

TEST_P(config_fallback_rule, with_an_entry_of_its_own) {
  const fallback_rule& rule = GetParam();
  const std::string name(qos::to_string(rule.why));
  if (!rule.own_entry) {
    // Nothing to configure: YAML refuses the key, and resolve() ignores an entry set in code.
    const config_error e =
        load_error(std::string(minimal) + "    fallback:\n      " + name + ": {status: 418}\n");
    EXPECT_EQ(e.line(), 8) << e.what();
    EXPECT_EQ(e.column(), 7) << e.what();
    EXPECT_EQ(e.key(), "routes[0].fallback." + name) << e.what();
    EXPECT_TRUE(contains(e.what(), "unknown key")) << e.what();
    if (rule.internal) {
      fallback_set f{.route = route_level()};
      f.own[qos::index(rule.why)] = entry_for(rule.why);
      expect_response(response(f, rule.why), internal_error());
    }
    return;
  }

  fallback_set f{.route = route_level()};
  f.own[qos::index(rule.why)] = entry_for(rule.why);
  if (rule.parent) f.own[qos::index(*rule.parent)] = entry_for(*rule.parent);
  expect_response(response(f, rule.why), entry_for(rule.why));

  // Through the loader: the keys the entry sets, the rest from the route level (not from the
  // parent's entry), and the status of the table when the entry sets none.
  std::string yaml = std::string(minimal) + route_level_yaml;
  if (rule.parent) {
    yaml += "      " + std::string(qos::to_string(*rule.parent)) +
            ": {status: 502, body: parent, retry_after: none}\n";
  }
  const app_config with_status =
      load_config_string(yaml + "      " + name + ": {status: 418, body: own}\n");
  fallback_config want = route_level();
  want.status = 418;
  want.body = "own";
  ASSERT_TRUE(own(with_status.routes[0].fallback, rule.why));
  expect_response(response(with_status.routes[0].fallback, rule.why), want);

  const app_config without_status = load_config_string(yaml + "      " + name + ": {body: own}\n");
  want.status = rule.status != 0 ? rule.status : route_level().status;
  expect_response(response(without_status.routes[0].fallback, rule.why), want);
}

TEST_P(config_fallback_rule, with_entries_on_every_other_reason) {
  const fallback_rule& rule = GetParam();
  // It gets its parent's entry, if it has a parent, and no other reason's.
  fallback_set f{.route = route_level()};
  for (const auto& row : qos::outcome_table) {
    if (row.value != rule.why) f.own[qos::index(row.value)] = entry_for(row.value);
  }
  fallback_config want = rule.parent ? entry_for(*rule.parent) : without_entries(rule);
  if (rule.parent && rule.status != 0) want.status = rule.status;
  expect_response(response(f, rule.why), want);

  if (!rule.parent) return;
  // Through the loader: shed and rejected answer as queue_full, deadline and
  // predicted_timeout as timeout, when only the parent has an entry.
  const app_config config =
      load_config_string(std::string(minimal) + route_level_yaml + "      " +
                         std::string(qos::to_string(*rule.parent)) +
                         ": {status: 502, body: parent, retry_after: none}\n");
  EXPECT_FALSE(own(config.routes[0].fallback, rule.why));
  want = route_level();
  want.status = 502;
  want.body = "parent";
  want.retry_after_s = std::nullopt;
  expect_response(response(config.routes[0].fallback, rule.why), want);
  expect_response(response(config.routes[0].fallback, *rule.parent), want);
}

INSTANTIATE_TEST_SUITE_P(outcomes, config_fallback_rule, testing::ValuesIn(fallback_rules),
                         [](const testing::TestParamInfo<fallback_rule>& param) {
                           return std::string(qos::to_string(param.param.why));
                         });

// ---------------------------------------------------------------------------------------------
// Fallback files

TEST(config_files, fallback_file_is_read_relative_to_base_dir) {
  const temp_dir dir;
  dir.write("img/grey.svg", "<svg/>");
  const app_config config = load_config_string(
      std::string(minimal) + "    fallback:\n      timeout: {status: 200, file: img/grey.svg}\n",
      "test.yaml", dir.path().string());
  ASSERT_TRUE(own(config.routes[0].fallback, outcome::timeout));
  const fallback_config& timeout = *own(config.routes[0].fallback, outcome::timeout);
  EXPECT_EQ(timeout.status, 200);
  EXPECT_EQ(timeout.body, "<svg/>");
  EXPECT_EQ(timeout.content_type, "image/svg+xml");
  EXPECT_EQ(fs::path(timeout.file), dir.path() / "img" / "grey.svg");
  // The route-level response is untouched by the override.
  EXPECT_EQ(config.routes[0].fallback.route.file, "");
  EXPECT_EQ(config.routes[0].fallback.route.content_type, "application/json");
}

TEST(config_files, content_type_follows_the_extension) {
  const temp_dir dir;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"a.json", "application/json"},
      {"a.svg", "image/svg+xml"},
      {"a.PNG", "image/png"},
      {"a.html", "text/html"},
      {"a.txt", "text/plain"},
      {"a.bin", "application/octet-stream"},
      {"noext", "application/octet-stream"}};
  for (const auto& [name, type] : cases) {
    dir.write(name, "x");
    const app_config config = load_config_string(
        std::string(minimal) + "    fallback: {file: " + name + "}\n", "t", dir.path().string());
    EXPECT_EQ(config.routes[0].fallback.route.content_type, type) << name;
  }
}

TEST(config_files, explicit_content_type_wins_over_extension) {
  const temp_dir dir;
  dir.write("page.txt", "hello");
  const app_config config = load_config_string(
      std::string(minimal) + "    fallback: {file: page.txt, content_type: text/markdown}\n", "t",
      dir.path().string());
  EXPECT_EQ(config.routes[0].fallback.route.content_type, "text/markdown");
  EXPECT_EQ(config.routes[0].fallback.route.body, "hello");
}

TEST(config_files, binary_and_empty_files_are_kept_byte_for_byte) {
  const temp_dir dir;
  const std::string png("\x89PNG\r\n\x1a\n\0\x01", 10);
  dir.write("p.png", png);
  dir.write("empty.txt", "");
  const app_config config = load_config_string(
      std::string(minimal) +
          "    fallback:\n      file: p.png\n      shutdown: {file: empty.txt}\n",
      "t", dir.path().string());
  EXPECT_EQ(config.routes[0].fallback.route.body, png);
  ASSERT_TRUE(own(config.routes[0].fallback, outcome::shutdown));
  EXPECT_EQ(own(config.routes[0].fallback, outcome::shutdown)->body, "");
}

TEST(config_files, per_reason_body_replaces_inherited_file) {
  const temp_dir dir;
  dir.write("x.svg", "<svg/>");
  const app_config config = load_config_string(
      std::string(minimal) + "    fallback:\n      file: x.svg\n      timeout: {body: late}\n", "t",
      dir.path().string());
  ASSERT_TRUE(own(config.routes[0].fallback, outcome::timeout));
  const fallback_config& timeout = *own(config.routes[0].fallback, outcome::timeout);
  EXPECT_EQ(timeout.body, "late");
  EXPECT_EQ(timeout.file, "");
  EXPECT_EQ(timeout.content_type, "image/svg+xml");  // inherited, not set by the override
}

TEST(config_files, load_config_resolves_against_the_config_folder) {
  const temp_dir dir;
  dir.write("fallback/p.svg", "<svg/>");
  const fs::path file = dir.write("conf/../svc.yaml",
                                  std::string(minimal) + "    fallback: {file: fallback/p.svg}\n");
  const app_config config = load_config(file.string());
  EXPECT_EQ(config.source, file.string());
  EXPECT_EQ(config.routes[0].fallback.route.body, "<svg/>");
}

TEST(config_files, errors_name_the_config_file) {
  const temp_dir dir;
  const fs::path file = dir.write("svc.yaml", "groups: []\nroutes: []\n");
  try {
    load_config(file.string());
    FAIL() << "expected config_error";
  } catch (const config_error& e) {
    EXPECT_EQ(e.file(), file.string());
    EXPECT_EQ(std::string(e.what()), file.string() + ":1:9: groups: must list at least one group");
  }
}

TEST(config_files, unreadable_config_file_fails_with_line_zero) {
  const temp_dir dir;
  for (const fs::path& path : {dir.path() / "missing.yaml", dir.path()}) {
    try {
      load_config(path.string());
      FAIL() << "expected config_error for " << path;
    } catch (const config_error& e) {
      EXPECT_EQ(e.line(), 0);
      EXPECT_EQ(e.file(), path.string());
      EXPECT_EQ(std::string(e.what()), path.string() + ": cannot read config file");
    }
  }
}

TEST(config_files, unreadable_fallback_file_fails) {
  const temp_dir dir;
  fs::create_directories(dir.path() / "folder.svg");
  for (const char* name : {"missing.svg", "folder.svg"}) {
    const config_error e = load_error(
        std::string(minimal) + "    fallback:\n      timeout:\n        file: " + name + "\n",
        dir.path().string());
    EXPECT_TRUE(contains(e.what(), "test.yaml:9:15: routes[0].fallback.timeout.file: "))
        << e.what();
    EXPECT_TRUE(contains(e.what(), name)) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Shipped configs

TEST(config_shipped, every_yaml_in_config_folder_loads) {
  const fs::path folder = fs::path(QOS_SOURCE_DIR) / "config";
  int loaded = 0;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    EXPECT_NO_THROW(load_config(entry.path().string()));
    ++loaded;
  }
  EXPECT_GE(loaded, 3);
}

TEST(config_shipped, catalog_serves_a_placeholder_image_on_timeout) {
  const app_config config = load_config(QOS_SOURCE_DIR "/config/qos.yaml");
  const auto* image = config.find_route("image");
  ASSERT_NE(image, nullptr);
  ASSERT_TRUE(own(image->fallback, outcome::timeout));
  EXPECT_EQ(own(image->fallback, outcome::timeout)->status, 200);
  EXPECT_EQ(own(image->fallback, outcome::timeout)->content_type, "image/svg+xml");
  EXPECT_EQ(own(image->fallback, outcome::timeout)->retry_after_s, std::nullopt);
  EXPECT_EQ(own(image->fallback, outcome::timeout)->headers.at("X-Placeholder"), "true");
  EXPECT_TRUE(contains(own(image->fallback, outcome::timeout)->body, "<svg"));
  EXPECT_EQ(image->fallback.route.status, 503);

  const auto* db = config.find_route("db");
  ASSERT_NE(db, nullptr);
  EXPECT_EQ(db->priority.values.at("gold-key"), 10);
  EXPECT_EQ(db->priority.values.at("silver-key"), 5);
  EXPECT_FALSE(db->priority.raw_header_trusted);
  EXPECT_EQ(config.find_group("db")->limiter.max_concurrent, 8u);
}

TEST(config_shipped, peer_benchmark_configs_trust_x_priority) {
  for (const auto& [file, slots] : {std::pair{"peers-n8.yaml", 8u}, {"peers-n30.yaml", 30u}}) {
    const app_config config = load_config(std::string(QOS_SOURCE_DIR "/config/") + file);
    EXPECT_EQ(config.server.port, 9080);
    EXPECT_EQ(config.find_group("db")->limiter.max_concurrent, slots);
    const auto* route = config.find_route("db");
    ASSERT_NE(route, nullptr);
    EXPECT_EQ(route->max_wait, 1s);
    EXPECT_EQ(route->priority.raw_header, "X-Priority");
    EXPECT_TRUE(route->priority.raw_header_trusted);
  }
}

TEST(config_shipped, catalog_example_leaves_overload_controls_off) {
  // qos.yaml documents the overload keys in comments only.
  const app_config config = load_config(QOS_SOURCE_DIR "/config/qos.yaml");
  for (const auto& group : config.groups) {
    EXPECT_FALSE(group.limit) << group.name;
    EXPECT_EQ(group.limiter.discipline, qos::queue_discipline::fifo) << group.name;
    EXPECT_EQ(group.limiter.aging_step, 0ms) << group.name;
    EXPECT_FALSE(group.shadow) << group.name;
  }
  for (const auto& route : config.routes) {
    // Except on the accept route: there max_exec bounds a job's run, which nobody waits for
    // (a hung job would hold its lease and a permit; qos-check warns without it).
    if (route.mode != qos::config::route_mode::accept) {
      EXPECT_EQ(route.max_exec, std::nullopt) << route.name;
    }
    EXPECT_EQ(route.cost, 1u) << route.name;
    EXPECT_EQ(route.deadline.header, "") << route.name;
    EXPECT_FALSE(route.predictive_reject) << route.name;
    EXPECT_FALSE(route.fallback.route.retry_after_auto) << route.name;
    EXPECT_FALSE(own(route.fallback, outcome::shed)) << route.name;
    EXPECT_EQ(response(route.fallback, outcome::exec_timeout).status, 504) << route.name;
  }
}

TEST(config_shipped, advanced_example_uses_every_overload_control) {
  const app_config config = load_config(QOS_SOURCE_DIR "/config/advanced.yaml");

  const auto* db = config.find_group("db");
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(db->limit);
  EXPECT_EQ(db->limit->kind, qos::limit_kind::aimd);
  EXPECT_EQ(db->limit->min, 2u);
  EXPECT_EQ(db->limit->max, 32u);
  EXPECT_EQ(db->limit->timeout, 500ms);
  EXPECT_EQ(db->limiter.discipline, qos::queue_discipline::codel);
  EXPECT_EQ(db->limiter.aging_step, 250ms);
  EXPECT_FALSE(db->shadow);

  const auto* search = config.find_group("search");
  ASSERT_NE(search, nullptr);
  ASSERT_TRUE(search->limit);
  EXPECT_EQ(search->limit->kind, qos::limit_kind::gradient2);
  EXPECT_EQ(search->limit->probe_interval, 30s);
  EXPECT_EQ(search->limiter.discipline, qos::queue_discipline::adaptive_lifo);
  EXPECT_TRUE(search->shadow);

  const auto* recommend = config.find_group("recommend");
  ASSERT_NE(recommend, nullptr);
  ASSERT_TRUE(recommend->limit);
  EXPECT_EQ(recommend->limit->kind, qos::limit_kind::vegas);
  EXPECT_EQ(recommend->limit->probe_interval, 10s);

  for (const auto* group : {db, search, recommend}) {
    EXPECT_NO_THROW(qos::make_limit_algorithm(*group->limit)) << group->name;
  }

  const auto* item = config.find_route("item");
  ASSERT_NE(item, nullptr);
  EXPECT_EQ(item->max_exec, 2s);
  EXPECT_EQ(item->deadline.header, "X-Request-Timeout");
  EXPECT_TRUE(item->deadline.grpc_timeout);
  EXPECT_TRUE(item->predictive_reject);
  EXPECT_TRUE(item->fallback.route.retry_after_auto);
  ASSERT_TRUE(own(item->fallback, outcome::shed));
  ASSERT_TRUE(own(item->fallback, outcome::deadline));
  ASSERT_TRUE(own(item->fallback, outcome::predicted_timeout));
  EXPECT_TRUE(own(item->fallback, outcome::predicted_timeout)->retry_after_auto);
  EXPECT_EQ(own(item->fallback, outcome::deadline)->status, 504);
  EXPECT_FALSE(own(item->fallback, outcome::deadline)->retry_after_auto);
  ASSERT_TRUE(own(item->fallback, outcome::exec_timeout));
  EXPECT_EQ(own(item->fallback, outcome::exec_timeout)->status, 504);
  EXPECT_FALSE(own(item->fallback, outcome::exec_timeout)->retry_after_auto);
  EXPECT_EQ(own(item->fallback, outcome::exec_timeout)->retry_after_s, 2);

  const auto* report = config.find_route("report");
  ASSERT_NE(report, nullptr);
  EXPECT_EQ(report->cost, 4u);
  EXPECT_EQ(report->max_exec, 10s);
  ASSERT_TRUE(own(report->fallback, outcome::queue_full));
  ASSERT_TRUE(own(report->fallback, outcome::exec_timeout));
  EXPECT_TRUE(own(report->fallback, outcome::queue_full)->retry_after_auto);
  EXPECT_EQ(own(report->fallback, outcome::exec_timeout)->status, 503);
}

// ---------------------------------------------------------------------------------------------
// Durations

TEST(config_duration, parses_units) {
  EXPECT_EQ(parse_duration("250ms"), 250ms);
  EXPECT_EQ(parse_duration("1s"), 1000ms);
  EXPECT_EQ(parse_duration("1.5s"), 1500ms);
  EXPECT_EQ(parse_duration("1.001s"), 1001ms);
  EXPECT_EQ(parse_duration("2m"), 120000ms);
  EXPECT_EQ(parse_duration("1h"), 3600000ms);
  EXPECT_EQ(parse_duration("100us"), 1ms);  // positive stays positive
  EXPECT_EQ(parse_duration("2500us"), 2ms);
  EXPECT_EQ(parse_duration("1.9ms"), 1ms);  // truncated
  EXPECT_EQ(parse_duration("0.0001us"), 1ms);
  EXPECT_EQ(parse_duration("42"), 42ms);
  EXPECT_EQ(parse_duration("0"), 0ms);
  EXPECT_EQ(parse_duration("0s"), 0ms);
  EXPECT_EQ(parse_duration("0.5"), 1ms);
}

TEST(config_duration, rejects_malformed_and_negative) {
  for (const char* text :
       {"", "s", "-1s", "-5", "1x", "1 s", " 1s", "1s ", "1.s", ".5s", "1..5s", "1e3", "ms", "abc",
        "1sec", "+1s", "99999999999999999999h", "3000000h"}) {
    EXPECT_THROW(parse_duration(text), std::invalid_argument) << "'" << text << "'";
  }
}

// ---------------------------------------------------------------------------------------------
// config_error formatting

TEST(config_error_format, what_names_file_line_column_and_key) {
  EXPECT_STREQ(config_error("f.yaml", 3, 7, "groups[0].name", "boom").what(),
               "f.yaml:3:7: groups[0].name: boom");
  EXPECT_STREQ(config_error("f.yaml", 0, 0, "", "cannot read").what(), "f.yaml: cannot read");
  EXPECT_STREQ(config_error("f.yaml", 2, 0, "k", "m").what(), "f.yaml:2: k: m");
  const config_error e("f", 1, 2, "k", "m");
  EXPECT_EQ(e.file(), "f");
  EXPECT_EQ(e.line(), 1);
  EXPECT_EQ(e.column(), 2);
  EXPECT_EQ(e.key(), "k");
  EXPECT_EQ(e.message(), "m");
}

// ---------------------------------------------------------------------------------------------
// Bad configs: each must fail, pointing at the right place.

struct bad_case {
  const char* name;
  std::string yaml;
  int line;
  int column;
  const char* key;      // full key path; empty when no key applies
  const char* message;  // a part of the message
};

void PrintTo(const bad_case& c, std::ostream* out) {
  *out << c.name;
}

class config_bad : public testing::TestWithParam<bad_case> {};

TEST_P(config_bad, fails_with_location_and_key) {
  const bad_case& c = GetParam();
  const config_error e = load_error(c.yaml);
  const std::string what = e.what();
  const std::string where =
      c.line == 0 ? "test.yaml: "
                  : "test.yaml:" + std::to_string(c.line) + ":" + std::to_string(c.column) + ": ";
  EXPECT_EQ(what.rfind(where, 0), 0u) << what;
  EXPECT_EQ(e.file(), "test.yaml");
  EXPECT_EQ(e.line(), c.line) << what;
  EXPECT_EQ(e.column(), c.column) << what;
  EXPECT_EQ(e.key(), c.key) << what;
  if (*c.key != '\0') {
    EXPECT_TRUE(contains(what, std::string(": ") + c.key + ": ")) << what;
  }
  EXPECT_TRUE(contains(what, c.message)) << what;
}

// `minimal` is lines 1-6; snippets appended to it start on line 7.
std::string with(const std::string& tail) {
  return std::string(minimal) + tail;
}

// A group entry with `extra` on line 4, after max_concurrent.
std::string group_with(const std::string& extra) {
  return "groups:\n  - name: db\n    max_concurrent: 8\n" + extra +
         "routes:\n  - name: items\n    group: db\n";
}

const std::string two_routes = R"(groups:
  - name: db
    max_concurrent: 8
routes:
  - name: a
    group: db
  - name: b
    group: db
    fallback:
      timeout:
        status: 600
)";

INSTANTIATE_TEST_SUITE_P(
    cases, config_bad,
    testing::Values(
        // Unknown keys, at every level.
        bad_case{"unknown_top_level", with("serverx: {}\n"), 7, 1, "serverx", "unknown key"},
        bad_case{"unknown_server_key", "server:\n  prot: 80\n" + std::string(minimal), 2, 3,
                 "server.prot", "unknown key"},
        bad_case{"unknown_group_key", group_with("    max_concurent: 1\n"), 4, 5,
                 "groups[0].max_concurent", "unknown key"},
        bad_case{"unknown_priority_key", with("    priority: {levle: 1}\n"), 7, 16,
                 "routes[0].priority.levle", "unknown key"},
        bad_case{"unknown_reason_key", with("    fallback:\n      timeout:\n        stauts: 500\n"),
                 9, 9, "routes[0].fallback.timeout.stauts", "unknown key"},
        bad_case{"unknown_reason", with("    fallback:\n      slow: {}\n"), 8, 7,
                 "routes[0].fallback.slow", "unknown key"},
        bad_case{"nested_reason", with("    fallback:\n      timeout: {shutdown: {}}\n"), 8, 17,
                 "routes[0].fallback.timeout.shutdown", "unknown key"},
        bad_case{"duplicate_key", "server:\n  port: 1\n  port: 2\n" + std::string(minimal), 3, 3,
                 "server.port", "duplicate key"},
        bad_case{"duplicate_header", with("    fallback:\n      headers: {X-A: 1, X-A: 2}\n"), 8,
                 25, "routes[0].fallback.headers.X-A", "duplicate key"},
        // Wrong types.
        bad_case{"string_for_int", "server:\n  port: abc\n" + std::string(minimal), 2, 9,
                 "server.port", "expected an integer"},
        bad_case{"quoted_int", "server:\n  port: \"80\"\n" + std::string(minimal), 2, 9,
                 "server.port", "expected an integer, got a string"},
        bad_case{
            "float_for_int",
            "groups:\n  - name: db\n    max_concurrent: 1.5\nroutes:\n  - {name: r, group: db}\n",
            3, 21, "groups[0].max_concurrent", "expected an integer"},
        bad_case{"map_for_list", "groups: {name: db}\nroutes:\n  - {name: r, group: db}\n", 1, 9,
                 "groups", "expected a list, got a map"},
        bad_case{"list_for_map", "server: [1]\n" + std::string(minimal), 1, 9, "server",
                 "expected a map, got a list"},
        bad_case{"map_for_string", with("    fallback:\n      body: {error: x}\n"), 8, 13,
                 "routes[0].fallback.body", "expected a string, got a map"},
        bad_case{"null_for_int", "server:\n  port:\n" + std::string(minimal), 2, 3, "server.port",
                 "expected an integer, got null"},
        bad_case{"list_for_int", "server:\n  backlog: [1]\n" + std::string(minimal), 2, 12,
                 "server.backlog", "expected an integer, got a list"},
        bad_case{"bad_bool", with("    priority: {raw_header_trusted: maybe}\n"), 7, 36,
                 "routes[0].priority.raw_header_trusted", "expected true or false"},
        bad_case{"huge_int", "server:\n  backlog: 99999999999999999999\n" + std::string(minimal), 2,
                 12, "server.backlog", "out of range"},
        bad_case{"root_not_a_map", "- a\n- b\n", 1, 1, "", "expected a map, got a list"},
        bad_case{"group_not_a_map", "groups: [db]\nroutes: [{name: r, group: db}]\n", 1, 10,
                 "groups[0]", "expected a map"},
        // Zero or negative limits.
        bad_case{
            "zero_max_concurrent",
            "groups:\n  - name: db\n    max_concurrent: 0\nroutes:\n  - {name: r, group: db}\n", 3,
            21, "groups[0].max_concurrent", "must be > 0, got 0"},
        bad_case{"negative_max_queue", group_with("    max_queue: -5\n"), 4, 16,
                 "groups[0].max_queue", "must be > 0, got -5"},
        bad_case{"negative_blocking_threads", group_with("    blocking_threads: -1\n"), 4, 23,
                 "groups[0].blocking_threads", "must be >= 0"},
        bad_case{"blocking_below_max_concurrent", group_with("    blocking_threads: 4\n"), 4, 23,
                 "groups[0].blocking_threads", "must be 0 or >= max_concurrent (8)"},
        bad_case{"zero_reactor_threads", "server: {reactor_threads: 0}\n" + std::string(minimal), 1,
                 27, "server.reactor_threads", "must be > 0"},
        bad_case{"zero_fiber_threads", "server: {fiber_threads: 0}\n" + std::string(minimal), 1, 25,
                 "server.fiber_threads", "must be > 0"},
        bad_case{"zero_max_pending_jobs", "server: {max_pending_jobs: 0}\n" + std::string(minimal),
                 1, 28, "server.max_pending_jobs", "must be > 0"},
        bad_case{"zero_backlog", "server: {backlog: 0}\n" + std::string(minimal), 1, 19,
                 "server.backlog", "must be > 0"},
        bad_case{"zero_max_wait", with("    max_wait: 0s\n"), 7, 15, "routes[0].max_wait",
                 "must be > 0"},
        // Names and references.
        bad_case{"unknown_group", with("  - name: other\n    group: dbx\n"), 8, 12,
                 "routes[1].group", "unknown group 'dbx'"},
        bad_case{"duplicate_group",
                 "groups:\n  - {name: db, max_concurrent: 1}\n  - {name: db, max_concurrent: 2}\n"
                 "routes: [{name: r, group: db}]\n",
                 3, 12, "groups[1].name", "duplicate group name 'db' (first declared at line 2)"},
        bad_case{"duplicate_route", with("  - name: items\n    group: db\n"), 7, 11,
                 "routes[1].name", "duplicate route name 'items' (first declared at line 5)"},
        bad_case{"invalid_group_name",
                 "groups:\n  - {name: 'd b', max_concurrent: 1}\nroutes: [{name: r, group: d b}]\n",
                 2, 12, "groups[0].name", "invalid group name"},
        bad_case{"empty_route_name", with("  - {name: '', group: db}\n"), 7, 12, "routes[1].name",
                 "must not be empty"},
        // Durations.
        bad_case{"malformed_max_wait", with("    max_wait: 1x\n"), 7, 15, "routes[0].max_wait",
                 "invalid duration '1x'"},
        bad_case{"malformed_shutdown_grace",
                 "server:\n  shutdown_grace: soon\n" + std::string(minimal), 2, 19,
                 "server.shutdown_grace", "invalid duration"},
        bad_case{"negative_duration", with("    max_wait: -1s\n"), 7, 15, "routes[0].max_wait",
                 "negative"},
        bad_case{"map_for_duration", with("    max_wait: {s: 1}\n"), 7, 15, "routes[0].max_wait",
                 "expected a duration, got a map"},
        // Ranges.
        bad_case{"priority_default_too_high", with("    priority:\n      default: 16\n"), 8, 16,
                 "routes[0].priority.default", "must be between 0 and 15, got 16"},
        bad_case{"priority_negative", with("    priority:\n      default: -1\n"), 8, 16,
                 "routes[0].priority.default", "must be between 0 and 15"},
        bad_case{"priority_value_too_high",
                 with("    priority:\n      header: X-Key\n      values: {gold: 20}\n"), 9, 22,
                 "routes[0].priority.values.gold", "must be between 0 and 15"},
        bad_case{"status_too_high", two_routes, 11, 17, "routes[1].fallback.timeout.status",
                 "must be between 100 and 599, got 600"},
        bad_case{"status_too_low", with("    fallback: {status: 99}\n"), 7, 24,
                 "routes[0].fallback.status", "must be between 100 and 599"},
        bad_case{"port_too_high", "server: {port: 65536}\n" + std::string(minimal), 1, 16,
                 "server.port", "must be between 0 and 65535"},
        bad_case{"port_negative", "server: {port: -1}\n" + std::string(minimal), 1, 16,
                 "server.port", "must be between 0 and 65535"},
        bad_case{"retry_after_negative", with("    fallback: {retry_after: -1}\n"), 7, 29,
                 "routes[0].fallback.retry_after", "must be between 0"},
        bad_case{"retry_after_word", with("    fallback: {retry_after: soon}\n"), 7, 29,
                 "routes[0].fallback.retry_after", "expected an integer"},
        bad_case{"retry_after_float", with("    fallback: {retry_after: 1.5}\n"), 7, 29,
                 "routes[0].fallback.retry_after", "expected an integer"},
        bad_case{"log_level", "logging:\n  level: verbose\n" + std::string(minimal), 2, 10,
                 "logging.level", "invalid log level 'verbose'"},
        // Log format, sink and access log.
        bad_case{"log_format", "logging:\n  format: xml\n" + std::string(minimal), 2, 11,
                 "logging.format", "invalid log format 'xml' (expected text or json)"},
        bad_case{"log_sink", "logging: {sink: syslog}\n" + std::string(minimal), 1, 17,
                 "logging.sink", "invalid log sink 'syslog' (expected stderr or stdout)"},
        bad_case{"access_log_not_a_map", "logging:\n  access_log: yes\n" + std::string(minimal), 2,
                 15, "logging.access_log", "expected a map, got 'yes'"},
        bad_case{"access_log_unknown_key",
                 "logging:\n  access_log: {enable: true}\n" + std::string(minimal), 2, 16,
                 "logging.access_log.enable", "unknown key"},
        bad_case{"access_log_enabled_not_bool",
                 "logging:\n  access_log:\n    enabled: 1\n" + std::string(minimal), 3, 14,
                 "logging.access_log.enabled", "expected true or false, got '1'"},
        bad_case{"access_log_sample_zero",
                 "logging:\n  access_log: {sample: 0}\n" + std::string(minimal), 2, 24,
                 "logging.access_log.sample", "must be in (0, 1], got 0"},
        bad_case{"access_log_sample_above_one",
                 "logging:\n  access_log:\n    sample: 1.5\n" + std::string(minimal), 3, 13,
                 "logging.access_log.sample", "must be in (0, 1], got 1.5"},
        bad_case{"access_log_sample_string",
                 "logging:\n  access_log:\n    sample: '0.5'\n" + std::string(minimal), 3, 13,
                 "logging.access_log.sample", "expected a number, got a string"},
        bad_case{"access_log_max_per_second_negative",
                 "logging:\n  access_log:\n    max_per_second: -1\n" + std::string(minimal), 3, 21,
                 "logging.access_log.max_per_second", "must be >= 0, got -1"},
        bad_case{"access_log_max_per_second_above_bound",
                 "logging:\n  access_log:\n    max_per_second: 1000001\n" + std::string(minimal), 3,
                 21, "logging.access_log.max_per_second", "must be <= 1000000, got 1000001"},
        bad_case{"access_log_max_per_second_huge",
                 "logging:\n  access_log: {max_per_second: 9223372036854775807}\n" +
                     std::string(minimal),
                 2, 32, "logging.access_log.max_per_second",
                 "must be <= 1000000, got 9223372036854775807"},
        bad_case{"access_log_max_per_second_float",
                 "logging:\n  access_log:\n    max_per_second: 2.5\n" + std::string(minimal), 3, 21,
                 "logging.access_log.max_per_second", "expected an integer"},
        // Missing required keys point at the enclosing map.
        bad_case{"missing_groups", "routes: [{name: r, group: db}]\n", 1, 1, "groups",
                 "missing required key"},
        bad_case{"missing_routes", "server: {}\ngroups: [{name: db, max_concurrent: 1}]\n", 1, 1,
                 "routes", "missing required key"},
        bad_case{"empty_document", "# nothing here\n", 1, 1, "", "empty config"},
        bad_case{"missing_group_name",
                 "groups:\n  - max_queue: 5\n    max_concurrent: 1\nroutes: [{name: r, group: "
                 "db}]\n",
                 2, 5, "groups[0].name", "missing required key"},
        bad_case{"missing_max_concurrent",
                 "groups:\n  - name: db\nroutes: [{name: r, group: db}]\n", 2, 5,
                 "groups[0].max_concurrent", "missing required key"},
        bad_case{"missing_route_group", with("  - name: other\n    max_wait: 2s\n"), 7, 5,
                 "routes[1].group", "missing required key"},
        bad_case{"empty_groups", "groups: []\nroutes: [{name: r, group: db}]\n", 1, 9, "groups",
                 "must list at least one group"},
        bad_case{"empty_routes", "groups: [{name: db, max_concurrent: 1}]\nroutes: []\n", 2, 9,
                 "routes", "must list at least one route"},
        bad_case{"null_routes", "groups: [{name: db, max_concurrent: 1}]\nroutes:\n", 2, 1,
                 "routes", "expected a list, got null"},
        // Fallback contents.
        bad_case{"body_and_file",
                 with("    fallback:\n      timeout:\n        body: x\n        file: y.svg\n"), 10,
                 15, "routes[0].fallback.timeout.file", "body and file are mutually exclusive"},
        bad_case{"bad_header_name", with("    fallback:\n      headers: {'X Foo': bar}\n"), 8, 17,
                 "routes[0].fallback.headers.X Foo", "invalid header name"},
        bad_case{"reserved_header", with("    fallback:\n      headers: {Content-Length: 5}\n"), 8,
                 17, "routes[0].fallback.headers.Content-Length", "computed from the body"},
        bad_case{"header_line_break",
                 with("    fallback:\n      headers: {X-A: \"a\\r\\nSet-Cookie: x\"}\n"), 8, 22,
                 "routes[0].fallback.headers.X-A", "line breaks"},
        bad_case{"values_without_header", with("    priority:\n      values: {a: 1}\n"), 8, 15,
                 "routes[0].priority.values", "need a header"},
        bad_case{"bad_priority_header", with("    priority: {raw_header: 'X:P'}\n"), 7, 28,
                 "routes[0].priority.raw_header", "invalid header name"},
        // Adaptive limit (groups[].limit).
        bad_case{"limit_not_a_map", group_with("    limit: aimd\n"), 4, 12, "groups[0].limit",
                 "expected a map, got 'aimd'"},
        bad_case{"limit_unknown_key", group_with("    limit: {algorithm: aimd, maximum: 3}\n"), 4,
                 30, "groups[0].limit.maximum", "unknown key"},
        bad_case{"limit_missing_algorithm", group_with("    limit: {min: 2}\n"), 4, 12,
                 "groups[0].limit.algorithm", "missing required key"},
        bad_case{"limit_unknown_algorithm", group_with("    limit: {algorithm: bbr}\n"), 4, 24,
                 "groups[0].limit.algorithm",
                 "invalid algorithm 'bbr' (expected fixed, aimd, gradient2 or vegas)"},
        bad_case{"limit_algorithm_list", group_with("    limit: {algorithm: [aimd]}\n"), 4, 24,
                 "groups[0].limit.algorithm", "expected a string, got a list"},
        bad_case{"limit_min_zero", group_with("    limit: {algorithm: aimd, min: 0}\n"), 4, 35,
                 "groups[0].limit.min", "must be > 0, got 0"},
        bad_case{"limit_min_above_max",
                 group_with("    limit:\n      algorithm: aimd\n      min: 10\n      max: 5\n"), 7,
                 12, "groups[0].limit.max", "must be >= min"},
        bad_case{"limit_max_float", group_with("    limit: {algorithm: aimd, max: 2.5}\n"), 4, 35,
                 "groups[0].limit.max", "expected an integer"},
        bad_case{"limit_initial_below_min",
                 group_with("    limit: {algorithm: aimd, min: 2, max: 4, initial: 1}\n"), 4, 55,
                 "groups[0].limit.initial", "must be within [min, max]"},
        bad_case{"limit_initial_above_max",
                 group_with("    limit: {algorithm: aimd, max: 4, initial: 5}\n"), 4, 47,
                 "groups[0].limit.initial", "must be within [min, max]"},
        bad_case{"limit_initial_above_default_max",
                 group_with("    limit: {algorithm: aimd, initial: 33}\n"), 4, 39,
                 "groups[0].limit.initial", "must be within [min, max]"},
        bad_case{"backoff_ratio_too_low",
                 group_with("    limit: {algorithm: aimd, backoff_ratio: 0.4}\n"), 4, 45,
                 "groups[0].limit.backoff_ratio", "must be in [0.5, 1)"},
        bad_case{"backoff_ratio_one",
                 group_with("    limit: {algorithm: aimd, backoff_ratio: 1}\n"), 4, 45,
                 "groups[0].limit.backoff_ratio", "must be in [0.5, 1)"},
        bad_case{"backoff_ratio_bool",
                 group_with("    limit: {algorithm: aimd, backoff_ratio: true}\n"), 4, 45,
                 "groups[0].limit.backoff_ratio", "expected a number, got 'true'"},
        bad_case{"backoff_ratio_string",
                 group_with("    limit: {algorithm: aimd, backoff_ratio: '0.9'}\n"), 4, 45,
                 "groups[0].limit.backoff_ratio", "expected a number, got a string"},
        bad_case{"backoff_ratio_word",
                 group_with("    limit: {algorithm: aimd, backoff_ratio: high}\n"), 4, 45,
                 "groups[0].limit.backoff_ratio", "expected a number, got 'high'"},
        bad_case{"backoff_ratio_nan",
                 group_with("    limit: {algorithm: aimd, backoff_ratio: .nan}\n"), 4, 45,
                 "groups[0].limit.backoff_ratio", "expected a number"},
        bad_case{"aimd_timeout_zero", group_with("    limit: {algorithm: aimd, timeout: 0s}\n"), 4,
                 39, "groups[0].limit.timeout", "must be > 0"},
        bad_case{"aimd_timeout_negative",
                 group_with("    limit: {algorithm: aimd, timeout: -1s}\n"), 4, 39,
                 "groups[0].limit.timeout", "negative"},
        bad_case{"probe_interval_with_fixed",
                 group_with("    limit: {algorithm: fixed, probe_interval: 1s}\n"), 4, 47,
                 "groups[0].limit.probe_interval",
                 "applies only to algorithms gradient2 and vegas, not fixed"},
        bad_case{"parameter_of_other_algorithm",
                 group_with("    limit: {algorithm: vegas, backoff_ratio: 0.8}\n"), 4, 46,
                 "groups[0].limit.backoff_ratio", "applies only to algorithm aimd, not vegas"},
        bad_case{"rtt_tolerance_below_one",
                 group_with("    limit: {algorithm: gradient2, rtt_tolerance: 0.9}\n"), 4, 50,
                 "groups[0].limit.rtt_tolerance", "must be >= 1 and finite"},
        bad_case{"rtt_tolerance_infinite",
                 group_with("    limit: {algorithm: gradient2, rtt_tolerance: .inf}\n"), 4, 50,
                 "groups[0].limit.rtt_tolerance", "expected a number"},
        bad_case{"smoothing_zero", group_with("    limit: {algorithm: gradient2, smoothing: 0}\n"),
                 4, 46, "groups[0].limit.smoothing", "must be in (0, 1]"},
        bad_case{"smoothing_above_one",
                 group_with("    limit: {algorithm: gradient2, smoothing: 1.5}\n"), 4, 46,
                 "groups[0].limit.smoothing", "must be in (0, 1]"},
        bad_case{"long_window_zero",
                 group_with("    limit: {algorithm: gradient2, long_window: 0}\n"), 4, 48,
                 "groups[0].limit.long_window", "must be >= 1"},
        bad_case{"probe_interval_zero",
                 group_with("    limit: {algorithm: vegas, probe_interval: 0ms}\n"), 4, 47,
                 "groups[0].limit.probe_interval", "must be > 0"},
        bad_case{"probe_interval_with_aimd",
                 group_with("    limit: {algorithm: aimd, probe_interval: 1s}\n"), 4, 46,
                 "groups[0].limit.probe_interval",
                 "applies only to algorithms gradient2 and vegas, not aimd"},
        bad_case{"blocking_below_limit_max",
                 group_with("    blocking_threads: 16\n    limit: {algorithm: aimd, max: 32}\n"), 4,
                 23, "groups[0].blocking_threads", "must be 0 or >= limit.max (32), got 16"},
        bad_case{"blocking_below_default_limit_max",
                 group_with("    limit: {algorithm: aimd}\n    blocking_threads: 8\n"), 5, 23,
                 "groups[0].blocking_threads", "must be 0 or >= limit.max (32), got 8"},
        // Queue discipline, aging, shadow mode.
        bad_case{"queue_bad_discipline", group_with("    queue: {discipline: lifo}\n"), 4, 25,
                 "groups[0].queue.discipline",
                 "invalid discipline 'lifo' (expected fifo, codel or adaptive_lifo)"},
        bad_case{"queue_unknown_key", group_with("    queue: {discipline: codel, taget: 5ms}\n"), 4,
                 32, "groups[0].queue.taget", "unknown key"},
        bad_case{"queue_zero_target", group_with("    queue: {discipline: codel, target: 0ms}\n"),
                 4, 40, "groups[0].queue.target", "must be > 0"},
        bad_case{"queue_negative_interval",
                 group_with("    queue:\n      discipline: adaptive_lifo\n      interval: -5ms\n"),
                 6, 17, "groups[0].queue.interval", "negative"},
        bad_case{"queue_zero_interval", group_with("    queue: {discipline: codel, interval: 0}\n"),
                 4, 42, "groups[0].queue.interval", "must be > 0"},
        bad_case{"queue_target_without_codel",
                 group_with("    queue: {discipline: adaptive_lifo, target: 5ms}\n"), 4, 48,
                 "groups[0].queue.target", "applies only to discipline codel, not adaptive_lifo"},
        bad_case{"queue_interval_with_fifo", group_with("    queue: {interval: 1s}\n"), 4, 23,
                 "groups[0].queue.interval", "not fifo"},
        bad_case{"reserve_whole_limit", group_with("    reserve: {permits: 8, priority: 5}\n"), 4,
                 24, "groups[0].reserve.permits", "must be below max_concurrent (8)"},
        bad_case{"reserve_below_adaptive_min",
                 group_with("    limit: {algorithm: aimd, min: 2}\n"
                            "    reserve: {permits: 2, priority: 5}\n"),
                 5, 24, "groups[0].reserve.permits", "must be below limit.min (2)"},
        bad_case{"reserve_level_zero", group_with("    reserve: {permits: 1, priority: 0}\n"), 4,
                 37, "groups[0].reserve.priority", "must be at least 1"},
        bad_case{"reserve_level_too_high", group_with("    reserve: {permits: 1, priority: 16}\n"),
                 4, 37, "groups[0].reserve.priority", ""},
        bad_case{"reserve_without_priority", group_with("    reserve: {permits: 1}\n"), 4, 14,
                 "groups[0].reserve.priority", ""},
        bad_case{"aging_step_negative", group_with("    aging_step: -250ms\n"), 4, 17,
                 "groups[0].aging_step", "negative"},
        bad_case{"aging_step_word", group_with("    aging_step: often\n"), 4, 17,
                 "groups[0].aging_step", "invalid duration 'often'"},
        bad_case{"shadow_not_bool", group_with("    shadow: 1\n"), 4, 13, "groups[0].shadow",
                 "expected true or false, got '1'"},
        bad_case{"shadow_quoted", group_with("    shadow: 'true'\n"), 4, 13, "groups[0].shadow",
                 "expected true or false"},
        // Route overload keys.
        bad_case{"max_exec_zero", with("    max_exec: 0\n"), 7, 15, "routes[0].max_exec",
                 "must be > 0"},
        bad_case{"max_exec_negative", with("    max_exec: -2s\n"), 7, 15, "routes[0].max_exec",
                 "negative"},
        bad_case{"cost_zero", with("  - name: other\n    group: db\n    cost: 0\n"), 9, 11,
                 "routes[1].cost", "must be between 1 and 8 (group 'db' never grants more"},
        bad_case{"cost_above_max_concurrent", with("    cost: 9\n"), 7, 11, "routes[0].cost",
                 "must be between 1 and 8"},
        bad_case{"cost_above_limit_max",
                 "groups:\n  - name: db\n    max_concurrent: 8\n    limit: {algorithm: aimd, max: "
                 "16}\nroutes:\n  - {name: r, group: db, cost: 17}\n",
                 6, 32, "routes[0].cost", "must be between 1 and 16"},
        bad_case{"cost_bool", with("    cost: true\n"), 7, 11, "routes[0].cost",
                 "expected an integer"},
        bad_case{"cost_string", with("    cost: '2'\n"), 7, 11, "routes[0].cost",
                 "expected an integer, got a string"},
        bad_case{"deadline_not_a_map", with("    deadline: X-Request-Timeout\n"), 7, 15,
                 "routes[0].deadline", "expected a map"},
        bad_case{"deadline_unknown_key", with("    deadline: {headers: X-T}\n"), 7, 16,
                 "routes[0].deadline.headers", "unknown key"},
        bad_case{"deadline_bad_header", with("    deadline: {header: 'X Timeout'}\n"), 7, 24,
                 "routes[0].deadline.header", "invalid header name 'X Timeout'"},
        bad_case{"deadline_empty_header", with("    deadline: {header: ''}\n"), 7, 24,
                 "routes[0].deadline.header", "invalid header name"},
        bad_case{"deadline_grpc_header", with("    deadline: {header: Grpc-Timeout}\n"), 7, 24,
                 "routes[0].deadline.header", "set grpc_timeout: true instead"},
        bad_case{"deadline_grpc_not_bool", with("    deadline: {grpc_timeout: sometimes}\n"), 7, 30,
                 "routes[0].deadline.grpc_timeout", "expected true or false"},
        bad_case{"predictive_reject_number", with("    predictive_reject: 2\n"), 7, 24,
                 "routes[0].predictive_reject", "expected true or false, got '2'"},
        // New fallback reasons and retry_after: auto.
        bad_case{"retry_after_list", with("    fallback: {retry_after: [auto]}\n"), 7, 29,
                 "routes[0].fallback.retry_after", "expected an integer, none or auto, got a list"},
        bad_case{"reason_retry_after_word",
                 with("    fallback:\n      shed:\n        retry_after: soon\n"), 9, 22,
                 "routes[0].fallback.shed.retry_after", "expected an integer, none or auto"},
        bad_case{"retry_after_auto_uppercase", with("    fallback: {retry_after: AUTO}\n"), 7, 29,
                 "routes[0].fallback.retry_after", "got 'AUTO'"},
        bad_case{"exec_timeout_status",
                 with("    fallback:\n      exec_timeout:\n        status: 700\n"), 9, 17,
                 "routes[0].fallback.exec_timeout.status", "must be between 100 and 599, got 700"},
        bad_case{"predicted_timeout_unknown_key",
                 with("    fallback:\n      predicted_timeout: {stauts: 503}\n"), 8, 27,
                 "routes[0].fallback.predicted_timeout.stauts", "unknown key"},
        bad_case{"deadline_reason_nested",
                 with("    fallback:\n      deadline: {exec_timeout: {}}\n"), 8, 18,
                 "routes[0].fallback.deadline.exec_timeout", "unknown key"},
        // Syntax.
        bad_case{"syntax_error", "groups: [1, 2\nroutes: []\n", 2, 7, "",
                 "end of sequence flow not found"},
        bad_case{"bad_indentation", "server:\n  port: 1\n   backlog: 2\n", 3, 11, "",
                 "illegal map value"},
        bad_case{"two_documents", std::string(minimal) + "---\n" + minimal, 8, 1, "",
                 "single YAML document"}),
    [](const testing::TestParamInfo<bad_case>& param) { return param.param.name; });

// ---------------------------------------------------------------------------------------------
// One range check: a setting built in code and the same setting in YAML are refused the same
// way (validate()'s key and message), the YAML one at the line of the key.

// The complaint validate() makes about settings built in code.
template <typename... Options>
qos::invalid_option refusal(const Options&... options) {
  try {
    qos::validate(options...);
  } catch (const qos::invalid_option& e) {
    return e;
  }
  ADD_FAILURE() << "expected invalid_option";
  return qos::invalid_option("", "");
}

void expect_same_refusal(const qos::invalid_option& code, const config_error& yaml,
                         const std::string& key_prefix, int line, int column) {
  EXPECT_EQ(yaml.key(), key_prefix + code.key()) << yaml.what();
  EXPECT_EQ(yaml.line(), line) << yaml.what();
  EXPECT_EQ(yaml.column(), column) << yaml.what();
  EXPECT_EQ(yaml.message(), code.message()) << yaml.what();
}

TEST(config_validate, blocking_threads_below_max_concurrent_is_refused_both_ways) {
  const qos::group_options db{
      .name = "db", .limiter = {.max_concurrent = 8}, .blocking_threads = 4};
  const qos::invalid_option code = refusal(db);
  EXPECT_EQ(code.key(), "blocking_threads");
  EXPECT_EQ(code.message(), "must be 0 or >= max_concurrent (8), got 4");
  expect_same_refusal(code, load_error(group_with("    blocking_threads: 4\n")), "groups[0].", 4,
                      23);

  // And both take max_concurrent itself.
  EXPECT_NO_THROW(qos::validate(
      qos::group_options{.name = "db", .limiter = {.max_concurrent = 8}, .blocking_threads = 8}));
  EXPECT_NO_THROW(load_config_string(group_with("    blocking_threads: 8\n")));
}

TEST(config_validate, cost_above_what_the_group_grants_is_refused_both_ways) {
  const qos::group_options db{.name = "db", .limiter = {.max_concurrent = 8}};
  const qos::route_policy items{.name = "items", .group = "db", .cost = 9};
  const qos::invalid_option code = refusal(items, db);
  EXPECT_EQ(code.key(), "cost");
  EXPECT_TRUE(contains(code.message(), "must be between 1 and 8")) << code.what();
  expect_same_refusal(code, load_error(with("    cost: 9\n")), "routes[0].", 7, 11);

  EXPECT_NO_THROW(qos::validate(qos::route_policy{.name = "items", .group = "db", .cost = 8}, db));
  EXPECT_NO_THROW(load_config_string(with("    cost: 8\n")));
}

TEST(config_validate, limit_initial_outside_min_max_is_refused_both_ways) {
  const qos::group_options db{
      .name = "db",
      .limiter = {.max_concurrent = 8},
      .limit = qos::limit_options{.kind = qos::limit_kind::aimd, .min = 2, .max = 4, .initial = 5}};
  const qos::invalid_option code = refusal(db);
  EXPECT_EQ(code.key(), "limit.initial");
  EXPECT_EQ(code.message(), "must be within [min, max] = [2, 4], got 5");
  expect_same_refusal(
      code, load_error(group_with("    limit: {algorithm: aimd, min: 2, max: 4, initial: 5}\n")),
      "groups[0].", 4, 55);

  EXPECT_NO_THROW(qos::validate(qos::group_options{
      .name = "db",
      .limiter = {.max_concurrent = 8},
      .limit =
          qos::limit_options{.kind = qos::limit_kind::aimd, .min = 2, .max = 4, .initial = 4}}));
  EXPECT_NO_THROW(
      load_config_string(group_with("    limit: {algorithm: aimd, min: 2, max: 4, initial: 4}\n")));
}

}  // namespace

namespace {

TEST(config_server, endpoint_options_load_with_defaults_and_bounds) {
  const auto base = std::string(
      "groups: [{name: db, max_concurrent: 1}]\n"
      "routes: [{name: r, group: db}]\n");
  const auto defaults = qos::config::load_config_string(base);
  EXPECT_EQ(defaults.server.max_request_size, 64u * 1024u);
  EXPECT_EQ(defaults.server.header_timeout, std::chrono::seconds(60));
  EXPECT_EQ(defaults.server.keepalive_timeout, std::chrono::seconds(75));
  const auto set = qos::config::load_config_string(
      "server: {max_request_size: 4096, header_timeout: 5s, body_timeout: 10s, "
      "keepalive_timeout: 30s}\n" +
      base);
  EXPECT_EQ(set.server.max_request_size, 4096u);
  EXPECT_EQ(set.server.header_timeout, std::chrono::seconds(5));
  EXPECT_EQ(set.server.body_timeout, std::chrono::seconds(10));
  EXPECT_EQ(set.server.keepalive_timeout, std::chrono::seconds(30));
  for (const char* bad : {"server: {max_request_size: 100}\n", "server: {header_timeout: 10ms}\n",
                          "server: {keepalive_timeout: 48h}\n"}) {
    SCOPED_TRACE(bad);
    try {
      (void)qos::config::load_config_string(bad + base, "t.yaml");
      ADD_FAILURE() << "accepted";
    } catch (const qos::config::config_error& e) {
      EXPECT_EQ(e.line(), 1);
      EXPECT_EQ(e.key().rfind("server.", 0), 0u) << e.key();
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Hardening: every number has an upper bound, checked at its key (groups and routes by
// validate(), so code and YAML agree); empty files, YAML syntax errors and deep nesting name
// the line; no text makes the loader hang, crash or throw anything but config_error.

namespace {

// 1-based column of `value` on line `line` (1-based) of `yaml`.
int column_of(const std::string& yaml, int line, const std::string& value) {
  std::size_t start = 0;
  for (int i = 1; i < line; ++i) start = yaml.find('\n', start) + 1;
  return static_cast<int>(yaml.find(value, start) - start) + 1;
}

struct bound_case {
  std::string yaml;
  int line;
  std::string value;  // the text the error points at
  std::string key;
  std::string message;
};

std::string server_with(const std::string& keys) {
  return "server: {" + keys + "}\n" + std::string(minimal);
}

// Each file is refused with its message, at its key, line and column, and the error's text
// starts with the file name and line.
void expect_refused_at_their_keys(const std::vector<bound_case>& cases) {
  for (const bound_case& c : cases) {
    SCOPED_TRACE(c.yaml);
    const config_error e = load_error(c.yaml);
    EXPECT_EQ(e.key(), c.key) << e.what();
    EXPECT_EQ(e.line(), c.line) << e.what();
    EXPECT_EQ(e.column(), column_of(c.yaml, c.line, c.value)) << e.what();
    EXPECT_EQ(e.message(), c.message) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("test.yaml:" + std::to_string(c.line) + ":", 0), 0u)
        << e.what();
  }
}

TEST(config_bounds, every_number_above_its_bound_is_refused_at_its_key) {
  const std::vector<bound_case> cases = {
      {server_with("reactor_threads: 256"), 1, "256", "server.reactor_threads",
       "must be <= 255, got 256"},
      {server_with("fiber_threads: 100000"), 1, "100000", "server.fiber_threads",
       "must be <= 256, got 100000"},
      {server_with("max_pending_jobs: 1000000000000"), 1, "1000000000000",
       "server.max_pending_jobs", "must be <= 1048576, got 1000000000000"},
      {server_with("backlog: 65536"), 1, "65536", "server.backlog", "must be <= 65535, got 65536"},
      {server_with("shutdown_grace: 11m"), 1, "11m", "server.shutdown_grace",
       "must be <= 10m, got 660000ms"},
      {"groups:\n  - name: db\n    max_concurrent: 1000000\nroutes: [{name: r, group: db}]\n", 3,
       "1000000", "groups[0].max_concurrent", "must be <= 100000, got 1000000"},
      {group_with("    max_queue: 1000001\n"), 4, "1000001", "groups[0].max_queue",
       "must be <= 1000000, got 1000001"},
      {group_with("    blocking_threads: 100001\n"), 4, "100001", "groups[0].blocking_threads",
       "must be <= 100000, got 100001"},
      {group_with("    aging_step: 2h\n"), 4, "2h", "groups[0].aging_step",
       "must be <= 1h, got 7200000ms"},
      {group_with("    queue: {discipline: codel, target: 61m}\n"), 4, "61m",
       "groups[0].queue.target", "must be <= 1h, got 3660000ms"},
      {group_with("    queue: {discipline: adaptive_lifo, interval: 2h}\n"), 4, "2h",
       "groups[0].queue.interval", "must be <= 1h, got 7200000ms"},
      {group_with("    limit: {algorithm: aimd, max: 100001}\n"), 4, "100001",
       "groups[0].limit.max", "must be <= 100000, got 100001"},
      {group_with("    limit: {algorithm: aimd, min: 200000}\n"), 4, "200000",
       "groups[0].limit.min", "must be <= 100000, got 200000"},
      {group_with("    limit: {algorithm: aimd, timeout: 2h}\n"), 4, "2h",
       "groups[0].limit.timeout", "must be <= 1h, got 7200000ms"},
      {group_with("    limit: {algorithm: gradient2, rtt_tolerance: 11}\n"), 4, "11",
       "groups[0].limit.rtt_tolerance", "must be <= 10, got 11"},
      {group_with("    limit: {algorithm: gradient2, long_window: 100001}\n"), 4, "100001",
       "groups[0].limit.long_window", "must be <= 100000, got 100001"},
      {group_with("    limit: {algorithm: vegas, probe_interval: 2h}\n"), 4, "2h",
       "groups[0].limit.probe_interval", "must be <= 1h, got 7200000ms"},
      {with("    max_wait: 61m\n"), 7, "61m", "routes[0].max_wait", "must be <= 1h, got 3660000ms"},
      {with("    max_exec: 2h\n"), 7, "2h", "routes[0].max_exec", "must be <= 1h, got 7200000ms"},
      {with("    fallback: {retry_after: 86401}\n"), 7, "86401", "routes[0].fallback.retry_after",
       "must be between 0 and 86400, got 86401"},
  };
  expect_refused_at_their_keys(cases);
}

TEST(config_bounds, every_bound_itself_is_accepted) {
  const app_config cfg = load_config_string(
      "server: {reactor_threads: 255, fiber_threads: 256, max_pending_jobs: 1048576,\n"
      "         backlog: 65535, shutdown_grace: 10m}\n"
      "groups:\n"
      "  - name: db\n"
      "    max_concurrent: 100000\n"
      "    max_queue: 1000000\n"
      "    blocking_threads: 100000\n"
      "    limit: {algorithm: gradient2, max: 100000, rtt_tolerance: 10, long_window: 100000,\n"
      "            probe_interval: 1h}\n"
      "    queue: {discipline: codel, target: 1h, interval: 1h}\n"
      "    aging_step: 1h\n"
      "routes:\n"
      "  - {name: r, group: db, max_wait: 1h, max_exec: 1h, cost: 100000,\n"
      "     fallback: {retry_after: 86400}}\n");
  EXPECT_EQ(cfg.server.fiber_threads, 256u);
  EXPECT_EQ(cfg.server.max_pending_jobs, 1048576u);
  EXPECT_EQ(cfg.groups[0].limiter.max_queue, 1000000u);
  EXPECT_EQ(cfg.groups[0].limit->max, 100000u);
  EXPECT_EQ(cfg.routes[0].max_wait, 1h);
  EXPECT_EQ(cfg.routes[0].fallback.route.retry_after_s, 86400);
}

TEST(config_bounds, default_limit_max_stays_within_the_permit_bound) {
  // 4 x max_concurrent, but never a default that validate() would refuse.
  for (const std::size_t n : {std::size_t{25000}, std::size_t{30000}, std::size_t{100000}}) {
    SCOPED_TRACE(n);
    const app_config cfg =
        load_config_string("groups:\n  - name: db\n    max_concurrent: " + std::to_string(n) +
                           "\n    limit: {algorithm: aimd}\n"
                           "routes: [{name: r, group: db}]\n");
    EXPECT_EQ(cfg.groups[0].limit->max, std::min<std::size_t>(4 * n, qos::bounds::permits));
  }
}

TEST(config_bounds, group_and_route_bounds_are_validate_s_both_ways) {
  const auto group = [](qos::limiter_options l) {
    return qos::group_options{.name = "db", .limiter = l};
  };
  expect_same_refusal(
      refusal(group({.max_concurrent = 100001})),
      load_error(
          "groups:\n  - name: db\n    max_concurrent: 100001\nroutes: [{name: r, group: db}]\n"),
      "groups[0].", 3, 21);
  expect_same_refusal(refusal(group({.max_concurrent = 8, .max_queue = 1000001})),
                      load_error(group_with("    max_queue: 1000001\n")), "groups[0].", 4, 16);
  expect_same_refusal(refusal(group({.max_concurrent = 8, .aging_step = 2h})),
                      load_error(group_with("    aging_step: 2h\n")), "groups[0].", 4, 17);
  qos::group_options adaptive = group({.max_concurrent = 8});
  adaptive.limit = qos::limit_options{
      .kind = qos::limit_kind::gradient2, .min = 1, .max = 32, .initial = 8, .rtt_tolerance = 11};
  expect_same_refusal(
      refusal(adaptive),
      load_error(group_with("    limit: {algorithm: gradient2, rtt_tolerance: 11}\n")),
      "groups[0].", 4, 50);
  const qos::route_policy slow{.name = "items", .group = "db", .max_wait = 2h};
  expect_same_refusal(refusal(slow, group({.max_concurrent = 8})),
                      load_error(with("    max_wait: 2h\n")), "routes[0].", 7, 15);
}

TEST(config_bounds, a_fraction_past_the_largest_duration_is_too_large_not_an_overflow) {
  // Found by tests/fuzz/headers_fuzz under UBSan: the whole units fit in int64 nanoseconds,
  // the fraction added to them did not.
  EXPECT_THROW(parse_duration("9223372036.9s"), std::invalid_argument);
  EXPECT_THROW(parse_duration("9223372036854.9"), std::invalid_argument);
  EXPECT_THROW(parse_duration("9223372036854775.9us"), std::invalid_argument);
  EXPECT_EQ(parse_duration("9223372036.8s"), 9223372036800ms);
  EXPECT_EQ(parse_duration("9223372036854.7"), 9223372036854ms);
}

// ----- empty files, syntax, nesting

void expect_error_at(const std::string& yaml, int line, int column, const std::string& message) {
  SCOPED_TRACE(yaml.substr(0, 80));
  const config_error e = load_error(yaml);
  EXPECT_EQ(e.line(), line) << e.what();
  EXPECT_EQ(e.column(), column) << e.what();
  EXPECT_TRUE(contains(e.what(), message)) << e.what();
}

TEST(config_document, an_empty_file_says_so_at_line_1) {
  for (const char* empty : {"", "\n\n", "# only a comment\n", "---\n", "~\n", "null\n"}) {
    expect_error_at(empty, 1, 1, "empty config (expected groups and routes)");
  }
  temp_dir dir;
  const fs::path file = dir.write("empty.yaml", "");
  try {
    load_config(file.string());
    ADD_FAILURE() << "accepted an empty file";
  } catch (const config_error& e) {
    EXPECT_EQ(std::string(e.what()),
              file.string() + ":1:1: empty config (expected groups and routes)");
  }
}

TEST(config_document, syntax_errors_name_line_and_column) {
  expect_error_at("groups: [1, 2\nroutes: []\n", 2, 7,
                  "invalid YAML: end of sequence flow not found");
  expect_error_at(std::string(minimal) + "  - name: x\n   group: db\n", 8, 4,
                  "invalid YAML: end of sequence not found");
}

TEST(config_document, a_token_yaml_cpp_cannot_consume_is_an_error_not_a_hang) {
  // yaml-cpp 0.7's LoadAll loops forever on these, allocating until the process dies (found
  // by tests/fuzz/config_fuzz as a timeout).
  expect_error_at(",", 1, 1, "invalid YAML: unexpected ','");
  expect_error_at("# comment\n,\n", 2, 1, "invalid YAML: unexpected ','");
  expect_error_at("\"x\",", 1, 4, "invalid YAML: unexpected ','");
  expect_error_at("&a ,", 1, 4, "invalid YAML: unexpected ','");
  expect_error_at("--- ,", 1, 5, "invalid YAML: unexpected ','");
  expect_error_at(std::string(minimal) + "---\n,\n", 8, 1, "invalid YAML: unexpected ','");
}

TEST(config_document, deep_flow_nesting_is_refused_at_the_bracket_that_goes_too_deep) {
  // `groups:` is one level, so the 64th '[' is the 65th level.
  expect_error_at("groups: " + std::string(10000, '['), 1, 9 + 63, "nested deeper than 64 levels");
  // Here `groups`, its list and the entry's map are three.
  expect_error_at("groups:\n  - name: " + std::string(100, '{'), 2, 11 + 61,
                  "nested deeper than 64 levels");
  // 64 levels pass the nesting check and meet the schema's.
  const config_error e = load_error("groups: " + std::string(63, '[') + std::string(63, ']'));
  EXPECT_FALSE(contains(e.what(), "nested")) << e.what();
}

TEST(config_document, deep_block_nesting_is_refused_at_its_line) {
  std::string indented = "groups:\n";
  for (int i = 1; i <= 100; ++i) indented += std::string(2 * i, ' ') + "k:\n";
  expect_error_at(indented, 65, 129, "nested deeper than 64 levels");
  std::string dashes = "groups:\n  ";
  for (int i = 0; i < 100; ++i) dashes += "- ";
  expect_error_at(dashes + "x\n", 2, 3 + 2 * 63, "nested deeper than 64 levels");
}

TEST(config_document, brackets_and_indentation_inside_scalars_are_not_nesting) {
  const std::string deep_text(200, '[');
  std::string yaml = with("    fallback:\n");
  yaml += "      body: '" + deep_text + " # it''s'\n";
  yaml += "      headers: {X-A: \"" + deep_text + "\\\"\"}\n";
  yaml += "      timeout:\n        body: |\n";
  for (int i = 0; i < 100; ++i) yaml += std::string(10 + i, ' ') + "{[\n";
  yaml += "      queue_full:\n        body: a [ plain { scalar\n";
  const app_config cfg = load_config_string(yaml);
  EXPECT_EQ(cfg.routes[0].fallback.route.body, deep_text + " # it's");
  EXPECT_EQ(cfg.routes[0].fallback.route.headers.at("X-A"), deep_text + "\"");
  EXPECT_EQ(own(cfg.routes[0].fallback, outcome::queue_full)->body, "a [ plain { scalar");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Operating keys: the admin listener, connection cap, drain, send_timeout and the write-stall
// watchdog. Loaded, bounded and refused at their key like the others; their behaviour belongs
// to the server.

namespace {

using qos::config::drain_mode;
using qos::config::is_loopback_address;

// Sets an environment variable for one test and restores what was there.
class scoped_env {
 public:
  scoped_env(std::string name, const std::string& value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) old_ = old;
    ::setenv(name_.c_str(), value.c_str(), 1);
  }
  ~scoped_env() {
    if (old_) {
      ::setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

std::string admin_with(const std::string& keys) {
  return "admin: {" + keys + "}\n" + std::string(minimal);
}

TEST(config_operate, drain_and_connection_keys_default_to_today_s_behaviour) {
  const app_config cfg = load_config_string(minimal);
  EXPECT_EQ(cfg.server.max_connections, 0u);
  EXPECT_EQ(cfg.server.drain_delay, 0ms);
  EXPECT_EQ(cfg.server.drain_parked, drain_mode::shed);
  EXPECT_FALSE(cfg.admin) << "the admin listener is off unless configured";
}

TEST(config_operate, drain_and_connection_keys_load) {
  const app_config cfg =
      load_config_string(server_with("max_connections: 5000, drain_delay: 15s, "
                                     "drain_parked: serve"));
  EXPECT_EQ(cfg.server.max_connections, 5000u);
  EXPECT_EQ(cfg.server.drain_delay, 15s);
  EXPECT_EQ(cfg.server.drain_parked, drain_mode::serve);
  EXPECT_EQ(load_config_string(server_with("drain_parked: shed")).server.drain_parked,
            drain_mode::shed);
}

TEST(config_operate, drain_and_connection_bounds_are_accepted_and_refused_at_their_key) {
  const app_config at_bounds =
      load_config_string(server_with("max_connections: 1000000, drain_delay: 5m"));
  EXPECT_EQ(at_bounds.server.max_connections, 1000000u);
  EXPECT_EQ(at_bounds.server.drain_delay, 5min);
  const std::vector<bound_case> cases = {
      {server_with("max_connections: 1000001"), 1, "1000001", "server.max_connections",
       "must be <= 1000000, got 1000001"},
      {server_with("max_connections: -1"), 1, "-1", "server.max_connections",
       "must be >= 0, got -1"},
      {server_with("drain_delay: 301s"), 1, "301s", "server.drain_delay",
       "must be <= 5m, got 301000ms"},
      {server_with("drain_delay: -1s"), 1, "-1s", "server.drain_delay",
       "invalid duration '-1s': must not be negative"},
      {server_with("drain_parked: finish"), 1, "finish", "server.drain_parked",
       "invalid mode 'finish' (expected shed or serve)"},
  };
  expect_refused_at_their_keys(cases);
}

TEST(config_server, send_timeout_and_write_stall_default_to_60s_and_1s) {
  // connection_options::send_timeout and listener_options::write_stall, which qos::server used
  // before the keys existed.
  const app_config cfg = load_config_string(minimal);
  EXPECT_EQ(cfg.server.send_timeout, 60s);
  EXPECT_EQ(cfg.server.write_stall, 1s);
}

TEST(config_server, send_timeout_and_write_stall_load) {
  const app_config cfg = load_config_string(server_with("send_timeout: 30s, write_stall: 500ms"));
  EXPECT_EQ(cfg.server.send_timeout, 30s);
  EXPECT_EQ(cfg.server.write_stall, 500ms);
  EXPECT_EQ(load_config_string(server_with("write_stall: 2.5s")).server.write_stall, 2500ms);
  EXPECT_EQ(load_config_string(server_with("write_stall: 0")).server.write_stall, 0ms) << "off";
  EXPECT_EQ(load_config_string(server_with("write_stall: 0s")).server.write_stall, 0ms) << "off";
}

TEST(config_server, send_timeout_and_write_stall_bounds_are_accepted_and_refused_at_their_key) {
  const app_config low = load_config_string(server_with("send_timeout: 1s, write_stall: 100ms"));
  EXPECT_EQ(low.server.send_timeout, 1s);
  EXPECT_EQ(low.server.write_stall, 100ms);
  const app_config high = load_config_string(server_with("send_timeout: 24h, write_stall: 1h"));
  EXPECT_EQ(high.server.send_timeout, 24h);
  EXPECT_EQ(high.server.write_stall, 1h);
  const std::string block = std::string("server:\n  port: 0\n  write_stall: 50ms\n") + minimal;
  const std::vector<bound_case> cases = {
      {server_with("send_timeout: 999ms"), 1, "999ms", "server.send_timeout",
       "must be between 1s and 24h, got 999ms"},
      {server_with("send_timeout: 25h"), 1, "25h", "server.send_timeout",
       "must be between 1s and 24h, got 90000000ms"},
      {server_with("send_timeout: 0"), 1, "0", "server.send_timeout",
       "must be between 1s and 24h, got 0ms"},
      {server_with("write_stall: 99ms"), 1, "99ms", "server.write_stall",
       "must be 0 (off) or between 100ms and 1h, got 99ms"},
      {server_with("write_stall: 61m"), 1, "61m", "server.write_stall",
       "must be 0 (off) or between 100ms and 1h, got 3660000ms"},
      // A positive duration below a millisecond stays positive: it is not 0, not off.
      {server_with("write_stall: 100us"), 1, "100us", "server.write_stall",
       "must be 0 (off) or between 100ms and 1h, got 1ms"},
      {server_with("write_stall: -1s"), 1, "-1s", "server.write_stall",
       "invalid duration '-1s': must not be negative"},
      {block, 3, "50ms", "server.write_stall", "must be 0 (off) or between 100ms and 1h, got 50ms"},
  };
  expect_refused_at_their_keys(cases);
}

TEST(config_operate, loopback_addresses) {
  for (const char* a : {"127.0.0.1", "127.1.2.3", "127.255.255.255", "::1", "localhost",
                        "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"}) {
    EXPECT_TRUE(is_loopback_address(a)) << a;
  }
  for (const char* a :
       {"0.0.0.0", "::", "10.0.0.1", "128.0.0.1", "127.0.0", "127.0.0.1.5", "127.0.0.256",
        "127.0.0.1 ", "example.com", "", "::ffff:10.0.0.1", "localhost.example.com"}) {
    EXPECT_FALSE(is_loopback_address(a)) << a;
  }
}

TEST(config_operate, admin_defaults_to_loopback_without_a_token) {
  const app_config cfg = load_config_string(admin_with("port: 9081"));
  ASSERT_TRUE(cfg.admin);
  EXPECT_EQ(cfg.admin->address, "127.0.0.1");
  EXPECT_EQ(cfg.admin->port, 9081);
  EXPECT_EQ(cfg.admin->token, "");
  EXPECT_EQ(cfg.admin->token_file, "");
  EXPECT_EQ(cfg.admin->token_env, "");
  EXPECT_EQ(load_config_string(admin_with("port: 0")).admin->port, 0) << "0: any free port";
}

TEST(config_operate, admin_port_is_required_and_bounded) {
  const config_error missing = load_error(admin_with("address: 127.0.0.1"));
  EXPECT_EQ(missing.key(), "admin.port");
  EXPECT_EQ(missing.message(), "missing required key");
  const config_error big = load_error(admin_with("port: 65536"));
  EXPECT_EQ(big.key(), "admin.port");
  EXPECT_EQ(big.line(), 1);
  EXPECT_EQ(big.message(), "must be between 0 and 65535, got 65536");
  const config_error unknown = load_error(admin_with("port: 1, reactor_threads: 2"));
  EXPECT_EQ(unknown.key(), "admin.reactor_threads");
  EXPECT_TRUE(contains(unknown.message(), "unknown key")) << unknown.what();
}

TEST(config_operate, admin_needs_a_port_of_its_own) {
  const std::string same = "server: {port: 9080}\n" + admin_with("port: 9080");
  const config_error e = load_error(same);
  EXPECT_EQ(e.key(), "admin.port");
  EXPECT_EQ(e.line(), 2);
  EXPECT_TRUE(contains(e.message(), "a port of its own")) << e.what();
  // The default server port counts too, and a wildcard overlaps every address.
  EXPECT_EQ(load_error(admin_with("port: 9080")).key(), "admin.port");
  EXPECT_EQ(load_error("server: {address: 0.0.0.0}\n" + admin_with("port: 9080")).key(),
            "admin.port");
  // Another address, or both on ephemeral ports, is fine.
  EXPECT_NO_THROW(
      load_config_string("server: {address: 10.0.0.1, port: 9080}\n" + admin_with("port: 9080")));
  EXPECT_NO_THROW(load_config_string("server: {port: 0}\n" + admin_with("port: 0")));
}

TEST(config_operate, admin_token_from_a_file_drops_one_trailing_line_break) {
  const temp_dir dir;
  dir.write("token", "s3cret-token\n");
  dir.write("crlf", "abc\r\n");
  dir.write("plain", "xyz");
  for (const auto& [file, token] : std::vector<std::pair<std::string, std::string>>{
           {"token", "s3cret-token"}, {"crlf", "abc"}, {"plain", "xyz"}}) {
    const app_config cfg = load_config_string(admin_with("port: 9081, token_file: " + file),
                                              "test.yaml", dir.path().string());
    EXPECT_EQ(cfg.admin->token, token);
    EXPECT_EQ(fs::path(cfg.admin->token_file), dir.path() / file) << "relative to the config";
  }
}

TEST(config_operate, admin_token_file_must_hold_a_usable_token) {
  const temp_dir dir;
  dir.write("empty", "");
  dir.write("newline", "\n");
  dir.write("big", std::string(4097, 'a'));
  dir.write("max", std::string(4096, 'a') + "\n");
  dir.write("spaces", "two words\n");
  const auto error_for = [&](const std::string& file) {
    return load_error(admin_with("port: 9081, token_file: " + file), dir.path().string());
  };
  for (const char* file : {"empty", "newline", "big", "spaces", "missing"}) {
    SCOPED_TRACE(file);
    const config_error e = error_for(file);
    EXPECT_EQ(e.key(), "admin.token_file") << e.what();
    EXPECT_EQ(e.line(), 1) << e.what();
  }
  EXPECT_TRUE(contains(error_for("empty").message(), "is empty"));
  EXPECT_TRUE(contains(error_for("big").message(), "longer than 4096 bytes (4097)"));
  EXPECT_TRUE(contains(error_for("missing").message(), "cannot read token file"));
  EXPECT_EQ(load_config_string(admin_with("port: 9081, token_file: max"), "test.yaml",
                               dir.path().string())
                .admin->token.size(),
            4096u);
}

TEST(config_operate, admin_token_from_the_environment) {
  const scoped_env env("QOS_CONFIG_TEST_TOKEN", "from-env");
  const app_config cfg =
      load_config_string(admin_with("port: 9081, token_env: QOS_CONFIG_TEST_TOKEN"));
  EXPECT_EQ(cfg.admin->token, "from-env");
  EXPECT_EQ(cfg.admin->token_env, "QOS_CONFIG_TEST_TOKEN");

  ::unsetenv("QOS_CONFIG_TEST_TOKEN_UNSET");
  const config_error unset =
      load_error(admin_with("port: 9081, token_env: QOS_CONFIG_TEST_TOKEN_UNSET"));
  EXPECT_EQ(unset.key(), "admin.token_env");
  EXPECT_TRUE(contains(unset.message(), "is not set")) << unset.what();
  const scoped_env empty("QOS_CONFIG_TEST_TOKEN_EMPTY", "");
  EXPECT_EQ(load_error(admin_with("port: 9081, token_env: QOS_CONFIG_TEST_TOKEN_EMPTY")).key(),
            "admin.token_env");
}

TEST(config_operate, admin_token_sources_are_mutually_exclusive) {
  const temp_dir dir;
  dir.write("token", "t");
  const scoped_env env("QOS_CONFIG_TEST_TOKEN", "e");
  const config_error e =
      load_error(admin_with("port: 9081, token_file: token, token_env: QOS_CONFIG_TEST_TOKEN"),
                 dir.path().string());
  EXPECT_EQ(e.key(), "admin.token_env");
  EXPECT_EQ(e.message(), "token_file and token_env are mutually exclusive");
}

TEST(config_operate, admin_beyond_loopback_requires_a_token_source) {
  for (const char* address : {"0.0.0.0", "10.1.2.3", "'::'"}) {
    SCOPED_TRACE(address);
    const std::string yaml = admin_with(std::string("address: ") + address + ", port: 9081");
    const config_error e = load_error(yaml);
    EXPECT_EQ(e.key(), "admin.address");
    EXPECT_EQ(e.line(), 1);
    EXPECT_EQ(e.column(), column_of(yaml, 1, address));
    EXPECT_TRUE(contains(e.message(), "set token_file or token_env")) << e.what();
  }
  const scoped_env env("QOS_CONFIG_TEST_TOKEN", "t0k3n");
  const app_config cfg = load_config_string(
      admin_with("address: 0.0.0.0, port: 9081, token_env: QOS_CONFIG_TEST_TOKEN"));
  EXPECT_EQ(cfg.admin->address, "0.0.0.0");
  EXPECT_EQ(cfg.admin->token, "t0k3n");
  for (const char* loopback : {"localhost", "::1", "127.0.0.2"}) {
    EXPECT_NO_THROW(
        load_config_string(admin_with(std::string("address: '") + loopback + "', port: 9081")))
        << loopback;
  }
}

}  // namespace

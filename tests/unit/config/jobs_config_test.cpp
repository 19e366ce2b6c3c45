// Tests of the config of accept-mode routes and of the job store: `jobs:` and a route's `mode`
// and `accept:` load with their defaults and every key, every bound and rule fails naming the
// file, line, column and key, the effective config prints them (never a connection string) and
// reads them back, the warnings fire on what they are about, and a reload applies what the gate
// reads per request and leaves the rest to a restart.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "qos/config/config.hpp"
#include "qos/config/effective.hpp"
#include "qos/config/reload_plan.hpp"

#ifndef QOS_SOURCE_DIR
#error "QOS_SOURCE_DIR must name the repository root"
#endif

namespace qos::config {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr const char* groups = R"(groups:
  - name: db
    max_concurrent: 8
  - name: images
    max_concurrent: 4
)";

// `jobs` (the text of a top-level jobs: section, or empty for none) and one route `orders`
// whose extra keys are `route` (indented by four spaces).
std::string config_with(const std::string& jobs, const std::string& route) {
  return jobs + groups + "routes:\n  - name: orders\n    group: db\n" + route;
}

constexpr const char* accept_route = "    mode: accept\n";
constexpr const char* sqlite_jobs = "jobs:\n  store: sqlite\n";

app_config load(const std::string& yaml, const std::string& base_dir = "/etc/qos") {
  return load_config_string(yaml, "test.yaml", base_dir);
}

// The loader's message for `yaml`, which must fail.
std::string error_of(const std::string& yaml) {
  try {
    load(yaml);
  } catch (const config_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected config_error for:\n" << yaml;
  return "";
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.rfind(prefix, 0) == 0;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// An environment variable set for one test's scope.
class scoped_env {
 public:
  scoped_env(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~scoped_env() { ::unsetenv(name_); }
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;

 private:
  const char* name_;
};

// ---------------------------------------------------------------------------------------------
// Loading

TEST(jobs_config_load, defaults_no_store_and_guard_routes) {
  const app_config cfg = load(config_with("", ""));
  EXPECT_FALSE(cfg.jobs);
  EXPECT_EQ(cfg.routes[0].mode, route_mode::guard);
  EXPECT_TRUE(cfg.routes[0].accept == accept_config{});
}

TEST(jobs_config_load, an_empty_jobs_section_and_an_accept_route_take_the_defaults) {
  const app_config cfg = load(config_with("jobs:\n", accept_route));
  ASSERT_TRUE(cfg.jobs);
  const jobs_config& j = *cfg.jobs;
  EXPECT_EQ(j.line, 1);
  EXPECT_EQ(j.store, job_store_kind::sqlite);
  EXPECT_EQ(j.sqlite_path, "/etc/qos/qos-jobs.db") << "the default resolves like a given path";
  EXPECT_EQ(j.synchronous, sqlite_sync::full);
  EXPECT_EQ(j.group_commit, 0us);
  EXPECT_FALSE(j.prefetch.has_value()) << "auto";
  EXPECT_EQ(j.conninfo, "");
  EXPECT_EQ(j.pool, 8u);
  EXPECT_TRUE(j.consume);
  EXPECT_EQ(j.store_threads, 32u);
  EXPECT_EQ(j.max_pending, 4096u);
  EXPECT_EQ(j.retention, 168h);
  EXPECT_EQ(j.prune_interval, 1min);
  EXPECT_EQ(j.poll_interval, 1s);
  EXPECT_TRUE(j.rates.empty());

  const route_config& r = cfg.routes[0];
  EXPECT_EQ(r.mode, route_mode::accept);
  const accept_config& a = r.accept;
  EXPECT_EQ(a.max_depth, 10000u);
  EXPECT_EQ(a.full_status, 503);
  EXPECT_EQ(a.retry_after_s, 1);
  EXPECT_TRUE(a.keep_headers.empty());
  EXPECT_EQ(a.tenant_header, "");
  EXPECT_FALSE(a.require_idempotency_key);
  EXPECT_EQ(a.idempotency_retention, 24h);
  EXPECT_EQ(a.max_attempts, 5);
  EXPECT_EQ(a.backoff_base, 1s);
  EXPECT_EQ(a.backoff_cap, 5min);
  EXPECT_EQ(a.lease, 30s);
  // The route's admission policy is still its own.
  EXPECT_EQ(r.group, "db");
  EXPECT_EQ(r.max_wait, 1s);
}

TEST(jobs_config_load, every_sqlite_and_accept_key) {
  const app_config cfg = load(config_with(R"(jobs:
  store: sqlite
  sqlite_path: data/jobs.db
  synchronous: normal
  group_commit: 250us
  prefetch: 3
  consume: false
  store_threads: 4
  max_pending: 100
  retention: 2h
  prune_interval: 30s
  poll_interval: 20ms
  rates:
    db: {per_second: 2.5, burst: 4}
    images: {per_second: 100}
)",
                                          R"(    mode: accept
    max_exec: 2s
    accept:
      max_depth: 7
      full_status: 429
      retry_after: 0
      keep_headers: [X-Request-Id, Accept-Language]
      tenant_header: X-Tenant
      require_idempotency_key: true
      idempotency_retention: 90m
      max_attempts: 1000
      backoff_base: 10ms
      backoff_cap: 10ms
      lease: 1h
)"));
  ASSERT_TRUE(cfg.jobs);
  const jobs_config& j = *cfg.jobs;
  EXPECT_EQ(j.sqlite_path, "/etc/qos/data/jobs.db");
  EXPECT_EQ(j.synchronous, sqlite_sync::normal);
  EXPECT_EQ(j.group_commit, 250us);
  EXPECT_EQ(j.prefetch, 3u);
  EXPECT_FALSE(j.consume);
  EXPECT_EQ(j.store_threads, 4u);
  EXPECT_EQ(j.max_pending, 100u);
  EXPECT_EQ(j.retention, 2h);
  EXPECT_EQ(j.prune_interval, 30s);
  EXPECT_EQ(j.poll_interval, 20ms);
  ASSERT_EQ(j.rates.size(), 2u);
  EXPECT_EQ(j.rates.at("db").per_second, 2.5);
  EXPECT_EQ(j.rates.at("db").burst, 4);
  EXPECT_EQ(j.rates.at("images").per_second, 100);
  EXPECT_EQ(j.rates.at("images").burst, 1) << "burst defaults to 1";

  const accept_config& a = cfg.routes[0].accept;
  EXPECT_EQ(a.max_depth, 7u);
  EXPECT_EQ(a.full_status, 429);
  EXPECT_EQ(a.retry_after_s, 0);
  EXPECT_EQ(a.keep_headers, (std::vector<std::string>{"x-request-id", "accept-language"}))
      << "stored lowercase";
  EXPECT_EQ(a.tenant_header, "X-Tenant");
  EXPECT_TRUE(a.require_idempotency_key);
  EXPECT_EQ(a.idempotency_retention, 90min);
  EXPECT_EQ(a.max_attempts, 1000);
  EXPECT_EQ(a.backoff_base, 10ms);
  EXPECT_EQ(a.backoff_cap, 10ms);
  EXPECT_EQ(a.lease, 1h);
  EXPECT_EQ(cfg.routes[0].max_exec, std::optional<duration>(2s));
}

TEST(jobs_config_load, sqlite_paths_resolve_against_the_config_folder) {
  EXPECT_EQ(load(config_with("jobs: {sqlite_path: /var/lib/q.db}\n", "")).jobs->sqlite_path,
            "/var/lib/q.db");
  EXPECT_EQ(load(config_with("jobs: {sqlite_path: ../run/q.db}\n", ""), "/srv/app/config")
                .jobs->sqlite_path,
            "/srv/app/run/q.db");
  // load_config: against the file's own folder, as fallback files are.
  const app_config shipped = load_config(std::string(QOS_SOURCE_DIR) + "/config/qos.yaml");
  ASSERT_TRUE(shipped.jobs);
  EXPECT_EQ(fs::path(shipped.jobs->sqlite_path).lexically_normal(),
            (fs::path(QOS_SOURCE_DIR) / "config/../build/catalog-jobs.db").lexically_normal());
}

TEST(jobs_config_load, group_commit_keeps_microseconds) {
  for (const auto& [text, us] : std::vector<std::pair<std::string, std::chrono::microseconds>>{
           {"0", 0us}, {"1us", 1us}, {"1.5ms", 1500us}, {"100ms", 100ms}, {"0.1us", 1us}}) {
    SCOPED_TRACE(text);
    EXPECT_EQ(load(config_with("jobs: {group_commit: " + text + "}\n", "")).jobs->group_commit, us);
  }
}

TEST(jobs_config_load, postgres_with_an_inline_or_an_environment_conninfo) {
  const app_config inline_cfg = load(config_with(
      "jobs: {store: postgres, conninfo: 'host=/run/postgresql dbname=qos', pool: 3}\n", ""));
  EXPECT_EQ(inline_cfg.jobs->store, job_store_kind::postgres);
  EXPECT_EQ(inline_cfg.jobs->conninfo, "host=/run/postgresql dbname=qos");
  EXPECT_FALSE(inline_cfg.jobs->prefetch.has_value()) << "auto: ahead of the run slots";
  const auto ahead = load(config_with("jobs: {store: postgres, conninfo: x, prefetch: 2}\n", ""));
  EXPECT_EQ(ahead.jobs->prefetch, 2u);
  EXPECT_EQ(inline_cfg.jobs->conninfo_env, "");
  EXPECT_EQ(inline_cfg.jobs->pool, 3u);

  const scoped_env env("QOS_TEST_JOBS_CONNINFO", "postgresql://qos:s3cret@db/qos");
  const app_config env_cfg =
      load(config_with("jobs: {store: postgres, conninfo_env: QOS_TEST_JOBS_CONNINFO}\n", ""));
  EXPECT_EQ(env_cfg.jobs->conninfo, "postgresql://qos:s3cret@db/qos") << "read at load";
  EXPECT_EQ(env_cfg.jobs->conninfo_env, "QOS_TEST_JOBS_CONNINFO");
}

TEST(jobs_config_load, the_shipped_example_has_an_accept_and_a_guarded_order_route) {
  const app_config cfg = load_config(std::string(QOS_SOURCE_DIR) + "/config/qos.yaml");
  ASSERT_TRUE(cfg.jobs);
  EXPECT_EQ(cfg.jobs->store, job_store_kind::sqlite);
  const route_config* orders = cfg.find_route("orders");
  const route_config* orders_sync = cfg.find_route("orders_sync");
  ASSERT_NE(orders, nullptr);
  ASSERT_NE(orders_sync, nullptr);
  EXPECT_EQ(orders->mode, route_mode::accept);
  EXPECT_EQ(orders->group, "db");
  EXPECT_TRUE(orders->max_exec);
  EXPECT_EQ(orders_sync->mode, route_mode::guard);
  EXPECT_EQ(orders_sync->group, "db");
  EXPECT_EQ(cfg.find_route("db")->mode, route_mode::guard);
}

// Each bound and rule: the whole "file:line:column: key: message" prefix, so the place is
// checked as well as the words.
TEST(jobs_config_errors, name_file_line_column_and_key) {
  struct bad {
    std::string jobs;
    std::string route;
    std::string expected;  // prefix of what()
  };
  const std::vector<bad> cases = {
      // The rules between sections.
      {"", accept_route, "test.yaml:9:11: routes[0].mode: mode accept needs a top-level `jobs:`"},
      {sqlite_jobs, "    accept: {max_depth: 5}\n",
       "test.yaml:11:13: routes[0].accept: applies only to mode accept"},
      {sqlite_jobs, "    mode: guard\n    accept: {}\n",
       "test.yaml:12:13: routes[0].accept: applies only to mode accept"},
      {sqlite_jobs, "    mode: queue\n",
       "test.yaml:11:11: routes[0].mode: invalid mode 'queue' (expected guard or accept)"},
      {"jobs: {rates: {nosuch: {per_second: 1}}}\n", "",
       "test.yaml:1:16: jobs.rates.nosuch: unknown group 'nosuch'"},
      // Unknown keys.
      {"jobs: {stor: sqlite}\n", "", "test.yaml:1:8: jobs.stor: unknown key"},
      {sqlite_jobs, "    mode: accept\n    accept: {depth: 1}\n",
       "test.yaml:12:14: routes[0].accept.depth: unknown key"},
      {"jobs: {rates: {db: {rate: 1}}}\n", "", "test.yaml:1:21: jobs.rates.db.rate: unknown key"},
      // jobs: words and the keys of the other store.
      {"jobs: {store: mysql}\n", "",
       "test.yaml:1:15: jobs.store: invalid store 'mysql' (expected sqlite or postgres)"},
      {"jobs: {synchronous: off}\n", "",
       "test.yaml:1:21: jobs.synchronous: invalid synchronous 'off' (expected full or normal)"},
      {"jobs: {conninfo: 'dbname=q'}\n", "",
       "test.yaml:1:18: jobs.conninfo: applies only to store postgres, not sqlite"},
      {"jobs: {pool: 2}\n", "", "test.yaml:1:14: jobs.pool: applies only to store postgres"},
      {"jobs: {store: postgres, conninfo: x, sqlite_path: a.db}\n", "",
       "test.yaml:1:51: jobs.sqlite_path: applies only to store sqlite, not postgres"},
      {"jobs: {store: postgres, conninfo: x, synchronous: full}\n", "",
       "test.yaml:1:51: jobs.synchronous: applies only to store sqlite"},
      {"jobs: {store: postgres, conninfo: x, group_commit: 1ms}\n", "",
       "test.yaml:1:52: jobs.group_commit: applies only to store sqlite"},
      // postgres: exactly one of conninfo and conninfo_env, the variable set and not empty.
      {"jobs: {store: postgres}\n", "",
       "test.yaml:1:7: jobs.conninfo: store postgres needs conninfo or conninfo_env"},
      {"jobs: {store: postgres, conninfo: x, conninfo_env: HOME}\n", "",
       "test.yaml:1:52: jobs.conninfo_env: conninfo and conninfo_env are mutually exclusive"},
      {"jobs: {store: postgres, conninfo: ''}\n", "",
       "test.yaml:1:35: jobs.conninfo: must not be empty"},
      {"jobs: {store: postgres, conninfo_env: QOS_TEST_UNSET_VARIABLE}\n", "",
       "test.yaml:1:39: jobs.conninfo_env: environment variable QOS_TEST_UNSET_VARIABLE is not "
       "set"},
      {"jobs: {store: postgres, conninfo_env: QOS_TEST_EMPTY_VARIABLE}\n", "",
       "test.yaml:1:39: jobs.conninfo_env: environment variable QOS_TEST_EMPTY_VARIABLE is "
       "empty"},
      {"jobs: {sqlite_path: ''}\n", "", "test.yaml:1:21: jobs.sqlite_path: must not be empty"},
      // jobs: bounds.
      {"jobs: {group_commit: 101ms}\n", "",
       "test.yaml:1:22: jobs.group_commit: must be between 0 and 100ms, got 101000us"},
      {"jobs: {group_commit: -1ms}\n", "", "test.yaml:1:22: jobs.group_commit: invalid duration"},
      {"jobs: {prefetch: 65537}\n", "",
       "test.yaml:1:18: jobs.prefetch: must be <= 65536, got 65537"},
      {"jobs: {prefetch: -1}\n", "", "test.yaml:1:18: jobs.prefetch: must be >= 0, got -1"},
      {"jobs: {prefetch: 'auto'}\n", "",
       "test.yaml:1:18: jobs.prefetch: expected an integer or auto, got a string"},
      {"jobs: {prefetch: [1]}\n", "", "test.yaml:1:18: jobs.prefetch: expected an integer or auto"},
      {"jobs: {store: postgres, conninfo: x, pool: 0}\n", "",
       "test.yaml:1:44: jobs.pool: must be > 0, got 0"},
      {"jobs: {store: postgres, conninfo: x, pool: 257}\n", "",
       "test.yaml:1:44: jobs.pool: must be <= 256, got 257"},
      {"jobs: {consume: yes please}\n", "", "test.yaml:1:17: jobs.consume: expected true or false"},
      {"jobs: {store_threads: 0}\n", "", "test.yaml:1:23: jobs.store_threads: must be > 0"},
      {"jobs: {store_threads: 1025}\n", "",
       "test.yaml:1:23: jobs.store_threads: must be <= 1024, got 1025"},
      {"jobs: {max_pending: 0}\n", "", "test.yaml:1:21: jobs.max_pending: must be > 0"},
      {"jobs: {max_pending: 1048577}\n", "",
       "test.yaml:1:21: jobs.max_pending: must be <= 1048576, got 1048577"},
      {"jobs: {retention: 59s}\n", "",
       "test.yaml:1:19: jobs.retention: must be between 1m and 8760h (365 days), got 59000ms"},
      {"jobs: {retention: 8761h}\n", "", "test.yaml:1:19: jobs.retention: must be between 1m"},
      {"jobs: {prune_interval: 999ms}\n", "",
       "test.yaml:1:24: jobs.prune_interval: must be between 1s and 24h, got 999ms"},
      {"jobs: {prune_interval: 25h}\n", "", "test.yaml:1:24: jobs.prune_interval: must be between"},
      {"jobs: {poll_interval: 9ms}\n", "",
       "test.yaml:1:23: jobs.poll_interval: must be between 10ms and 1m, got 9ms"},
      {"jobs: {poll_interval: 61s}\n", "", "test.yaml:1:23: jobs.poll_interval: must be between"},
      {"jobs: {rates: {db: {burst: 2}}}\n", "",
       "test.yaml:1:20: jobs.rates.db.per_second: missing required key"},
      {"jobs: {rates: {db: {per_second: 0}}}\n", "",
       "test.yaml:1:33: jobs.rates.db.per_second: must be in (0, 1000000], got 0"},
      {"jobs: {rates: {db: {per_second: 1000001}}}\n", "",
       "test.yaml:1:33: jobs.rates.db.per_second: must be in (0, 1000000]"},
      {"jobs: {rates: {db: {per_second: 1, burst: 0.5}}}\n", "",
       "test.yaml:1:43: jobs.rates.db.burst: must be in [1, 1000000], got 0.5"},
      {"jobs: {rates: {db: {per_second: 1, burst: 1000001}}}\n", "",
       "test.yaml:1:43: jobs.rates.db.burst: must be in [1, 1000000]"},
      {"jobs: {rates: [db]}\n", "", "test.yaml:1:15: jobs.rates: expected a map, got a list"},
      {"jobs: [sqlite]\n", "", "test.yaml:1:7: jobs: expected a map, got a list"},
      // accept: bounds and rules.
      {sqlite_jobs, "    mode: accept\n    accept: {max_depth: 0}\n",
       "test.yaml:12:25: routes[0].accept.max_depth: must be > 0, got 0"},
      {sqlite_jobs, "    mode: accept\n    accept: {max_depth: 100000001}\n",
       "test.yaml:12:25: routes[0].accept.max_depth: must be <= 100000000, got 100000001"},
      {sqlite_jobs, "    mode: accept\n    accept: {full_status: 500}\n",
       "test.yaml:12:27: routes[0].accept.full_status: must be 429 or 503, got 500"},
      {sqlite_jobs, "    mode: accept\n    accept: {retry_after: 3601}\n",
       "test.yaml:12:27: routes[0].accept.retry_after: must be between 0 and 3600, got 3601"},
      {sqlite_jobs, "    mode: accept\n    accept: {retry_after: -1}\n",
       "test.yaml:12:27: routes[0].accept.retry_after: must be between 0 and 3600, got -1"},
      {sqlite_jobs, "    mode: accept\n    accept: {keep_headers: [X-Ok, 'bad header']}\n",
       "test.yaml:12:35: routes[0].accept.keep_headers[1]: invalid header name 'bad header'"},
      {sqlite_jobs, "    mode: accept\n    accept: {keep_headers: [X-Id, x-id]}\n",
       "test.yaml:12:35: routes[0].accept.keep_headers[1]: duplicate header 'x-id'"},
      {sqlite_jobs, "    mode: accept\n    accept: {keep_headers: X-Id}\n",
       "test.yaml:12:28: routes[0].accept.keep_headers: expected a list, got 'X-Id'"},
      {sqlite_jobs, "    mode: accept\n    accept: {tenant_header: 'a:b'}\n",
       "test.yaml:12:29: routes[0].accept.tenant_header: invalid header name 'a:b'"},
      {sqlite_jobs, "    mode: accept\n    accept: {require_idempotency_key: 1}\n",
       "test.yaml:12:39: routes[0].accept.require_idempotency_key: expected true or false"},
      {sqlite_jobs, "    mode: accept\n    accept: {idempotency_retention: 59s}\n",
       "test.yaml:12:37: routes[0].accept.idempotency_retention: must be between 1m and 720h (30 "
       "days), got 59000ms"},
      {sqlite_jobs, "    mode: accept\n    accept: {idempotency_retention: 721h}\n",
       "test.yaml:12:37: routes[0].accept.idempotency_retention: must be between 1m and 720h"},
      {sqlite_jobs, "    mode: accept\n    accept: {max_attempts: 0}\n",
       "test.yaml:12:28: routes[0].accept.max_attempts: must be between 1 and 1000, got 0"},
      {sqlite_jobs, "    mode: accept\n    accept: {max_attempts: 1001}\n",
       "test.yaml:12:28: routes[0].accept.max_attempts: must be between 1 and 1000, got 1001"},
      {sqlite_jobs, "    mode: accept\n    accept: {backoff_base: 0}\n",
       "test.yaml:12:28: routes[0].accept.backoff_base: must be between 1ms and 1h, got 0ms"},
      {sqlite_jobs, "    mode: accept\n    accept: {backoff_base: 2h}\n",
       "test.yaml:12:28: routes[0].accept.backoff_base: must be between 1ms and 1h"},
      {sqlite_jobs, "    mode: accept\n    accept: {backoff_cap: 25h}\n",
       "test.yaml:12:27: routes[0].accept.backoff_cap: must be between 1ms and 24h"},
      {sqlite_jobs, "    mode: accept\n    accept: {backoff_base: 2s, backoff_cap: 1s}\n",
       "test.yaml:12:45: routes[0].accept.backoff_cap: must be >= backoff_base (backoff_base "
       "2000ms, backoff_cap 1000ms)"},
      {sqlite_jobs, "    mode: accept\n    accept: {backoff_base: 10m}\n",
       "test.yaml:12:28: routes[0].accept.backoff_base: must be <= backoff_cap, 5m unless set"},
      {sqlite_jobs, "    mode: accept\n    accept: {lease: 999ms}\n",
       "test.yaml:12:21: routes[0].accept.lease: must be between 1s and 1h, got 999ms"},
      {sqlite_jobs, "    mode: accept\n    accept: {lease: 61m}\n",
       "test.yaml:12:21: routes[0].accept.lease: must be between 1s and 1h"},
      {sqlite_jobs, "    mode: accept\n    accept: [1]\n",
       "test.yaml:12:13: routes[0].accept: expected a map, got a list"},
  };
  const scoped_env empty("QOS_TEST_EMPTY_VARIABLE", "");
  ::unsetenv("QOS_TEST_UNSET_VARIABLE");
  for (const bad& c : cases) {
    const std::string yaml = config_with(c.jobs, c.route);
    SCOPED_TRACE(yaml);
    const std::string what = error_of(yaml);
    EXPECT_TRUE(starts_with(what, c.expected)) << what << "\nexpected: " << c.expected;
  }
}

TEST(jobs_config_errors, keep_headers_hold_at_most_64_names) {
  std::string list = "[";
  for (int i = 0; i < 64; ++i) list += (i == 0 ? "h" : ", h") + std::to_string(i);
  EXPECT_EQ(load(config_with(sqlite_jobs,
                             "    mode: accept\n    accept: {keep_headers: " + list + "]}\n"))
                .routes[0]
                .accept.keep_headers.size(),
            64u);
  const std::string what = error_of(config_with(
      sqlite_jobs, "    mode: accept\n    accept: {keep_headers: " + list + ", h64]}\n"));
  EXPECT_TRUE(starts_with(what,
                          "test.yaml:12:28: routes[0].accept.keep_headers: at most 64 "
                          "headers, got 65"))
      << what;
}

// ---------------------------------------------------------------------------------------------
// Effective config

// Everything set away from its default (sqlite), and a postgres store from the environment.
std::string every_key_sqlite() {
  return config_with(R"(jobs:
  sqlite_path: "weird: name.db"
  synchronous: normal
  group_commit: 1.25ms
  prefetch: 0
  consume: false
  store_threads: 3
  max_pending: 9
  retention: 90m
  prune_interval: 5s
  poll_interval: 15ms
  rates: {db: {per_second: 0.5, burst: 2.5}, "images": {per_second: 7}}
)",
                     R"(    mode: accept
    max_exec: 3s
    accept:
      max_depth: 11
      full_status: 429
      retry_after: 0
      keep_headers: ["X-True", Yes, "null"]
      tenant_header: X-Tenant
      require_idempotency_key: true
      idempotency_retention: 61m
      max_attempts: 2
      backoff_base: 5ms
      backoff_cap: 7ms
      lease: 2s
)");
}

void expect_round_trip(const app_config& first) {
  const std::string printed = effective_yaml(first);
  app_config second;
  try {
    second = load_config_string(printed, "effective.yaml", "/nonexistent");
  } catch (const config_error& e) {
    FAIL() << e.what() << "\n" << printed;
  }
  ASSERT_EQ(first.jobs.has_value(), second.jobs.has_value());
  if (first.jobs) {
    jobs_config a = *first.jobs, b = *second.jobs;
    a.line = b.line = 0;
    if (a.store == job_store_kind::sqlite) {
      a.sqlite_path = fs::absolute(a.sqlite_path).lexically_normal().string();
    }
    EXPECT_TRUE(a == b) << printed;
  }
  ASSERT_EQ(first.routes.size(), second.routes.size());
  for (std::size_t i = 0; i < first.routes.size(); ++i) {
    EXPECT_EQ(first.routes[i].mode, second.routes[i].mode);
    EXPECT_TRUE(first.routes[i].accept == second.routes[i].accept) << printed;
  }
  EXPECT_EQ(effective_yaml(second), printed);
  EXPECT_EQ(config_hash(second), config_hash(first));
}

TEST(jobs_config_effective, every_key_round_trips) {
  const app_config sqlite = load(every_key_sqlite(), "relative/dir");
  EXPECT_EQ(sqlite.routes[0].accept.keep_headers,
            (std::vector<std::string>{"x-true", "yes", "null"}));
  expect_round_trip(sqlite);

  const scoped_env env("QOS_TEST_JOBS_CONNINFO", "postgresql://qos:s3cret@db/qos");
  const app_config pg =
      load(config_with("jobs: {store: postgres, conninfo_env: QOS_TEST_JOBS_CONNINFO, pool: 2, "
                       "rates: {db: {per_second: 3}}}\n",
                       accept_route));
  expect_round_trip(pg);
  expect_round_trip(load(config_with("", "")));
  expect_round_trip(load(config_with("jobs:\n", accept_route)));
}

TEST(jobs_config_effective, prints_the_defaults) {
  const std::string yaml = effective_yaml(load(config_with("jobs:\n", accept_route)));
  for (const char* key : {"store: sqlite",
                          "sqlite_path: \"/etc/qos/qos-jobs.db\"",
                          "synchronous: full",
                          "group_commit: 0us",
                          "prefetch: auto",
                          "consume: true",
                          "store_threads: 32",
                          "max_pending: 4096",
                          "retention: 604800s",
                          "prune_interval: 60000ms",
                          "poll_interval: 1000ms",
                          "rates: {}",
                          "mode: accept",
                          "max_depth: 10000",
                          "full_status: 503",
                          "keep_headers: []",
                          "require_idempotency_key: false",
                          "idempotency_retention: 86400s",
                          "max_attempts: 5",
                          "backoff_base: 1000ms",
                          "backoff_cap: 300000ms",
                          "lease: 30000ms"}) {
    EXPECT_TRUE(contains(yaml, key)) << key << "\n" << yaml;
  }
  EXPECT_FALSE(contains(yaml, "conninfo")) << "postgres keys only for store postgres";
  EXPECT_FALSE(contains(yaml, "pool:"));
  const std::string guard = effective_yaml(load(config_with("", "")));
  EXPECT_TRUE(contains(guard, "mode: guard")) << guard;
  EXPECT_FALSE(contains(guard, "accept:")) << "accept: only on accept routes";
  EXPECT_FALSE(contains(guard, "\njobs:"));
}

TEST(jobs_config_effective, never_prints_the_connection_string) {
  const scoped_env env("QOS_TEST_JOBS_CONNINFO", "host=db password=from-the-environment");
  const app_config from_env =
      load(config_with("jobs: {store: postgres, conninfo_env: QOS_TEST_JOBS_CONNINFO}\n", ""));
  const app_config inline_cfg =
      load(config_with("jobs: {store: postgres, conninfo: 'host=db password=in-the-file'}\n", ""));
  for (const app_config* cfg : {&from_env, &inline_cfg}) {
    for (const std::string& text : {effective_yaml(*cfg), summary(*cfg)}) {
      EXPECT_FALSE(contains(text, "from-the-environment")) << text;
      EXPECT_FALSE(contains(text, "in-the-file")) << text;
    }
  }
  EXPECT_TRUE(contains(effective_yaml(from_env), "conninfo_env: \"QOS_TEST_JOBS_CONNINFO\""));
  EXPECT_TRUE(contains(effective_yaml(inline_cfg), "conninfo: \"<set>\""));
  // The printed placeholder loads (as a connection string that is not the original).
  EXPECT_NO_THROW(load_config_string(effective_yaml(inline_cfg)));
}

TEST(jobs_config_effective, the_hash_follows_every_new_key) {
  const std::string base = every_key_sqlite();
  const std::string hash = config_hash(load(base));
  const std::vector<std::pair<std::string, std::string>> edits = {
      {"weird: name.db", "other.db"},
      {"synchronous: normal", "synchronous: full"},
      {"group_commit: 1.25ms", "group_commit: 1.26ms"},
      {"consume: false", "consume: true"},
      {"store_threads: 3", "store_threads: 4"},
      {"max_pending: 9", "max_pending: 10"},
      {"retention: 90m", "retention: 91m"},
      {"prune_interval: 5s", "prune_interval: 6s"},
      {"poll_interval: 15ms", "poll_interval: 16ms"},
      {"per_second: 0.5", "per_second: 0.6"},
      {"burst: 2.5", "burst: 3"},
      {"max_depth: 11", "max_depth: 12"},
      {"full_status: 429", "full_status: 503"},
      {"retry_after: 0", "retry_after: 1"},
      {"Yes, ", ""},
      {"X-Tenant", "X-Other"},
      {"require_idempotency_key: true", "require_idempotency_key: false"},
      {"idempotency_retention: 61m", "idempotency_retention: 62m"},
      {"max_attempts: 2", "max_attempts: 3"},
      {"backoff_base: 5ms", "backoff_base: 6ms"},
      {"backoff_cap: 7ms", "backoff_cap: 8ms"},
      {"lease: 2s", "lease: 3s"},
  };
  for (const auto& [from, to] : edits) {
    SCOPED_TRACE(from + " -> " + to);
    std::string edited = base;
    const auto at = edited.find(from);
    ASSERT_NE(at, std::string::npos);
    edited.replace(at, from.size(), to);
    EXPECT_NE(config_hash(load(edited)), hash);
  }
}

// ---------------------------------------------------------------------------------------------
// Warnings

std::vector<std::string> warned(const app_config& cfg) {
  std::vector<std::string> keys;
  for (const auto& w : warnings(cfg)) keys.push_back(w.key);
  return keys;
}

bool has(const std::vector<std::string>& lines, const std::string& line) {
  return std::find(lines.begin(), lines.end(), line) != lines.end();
}

TEST(jobs_config_warnings, synchronous_normal_is_not_durable_across_power_loss) {
  const app_config normal =
      load(config_with("jobs: {synchronous: normal}\n", "    mode: accept\n    max_exec: 1s\n"));
  const auto w = warnings(normal);
  ASSERT_FALSE(w.empty());
  EXPECT_EQ(w[0].key, "jobs.synchronous");
  EXPECT_TRUE(contains(w[0].message, "power loss")) << w[0].message;
  EXPECT_EQ(w[0].line, 1);
  EXPECT_FALSE(has(warned(load(config_with("jobs: {synchronous: full}\n",
                                           "    mode: accept\n    max_exec: 1s\n"))),
                   "jobs.synchronous"));
}

TEST(jobs_config_warnings, a_password_in_the_file) {
  for (const char* conninfo : {"host=db password=x", "postgresql://qos:x@db/qos",
                               "postgres://qos:x@db:5432/qos?sslmode=require"}) {
    SCOPED_TRACE(conninfo);
    EXPECT_TRUE(
        has(warned(load(config_with(
                "jobs: {store: postgres, conninfo: '" + std::string(conninfo) + "'}\n", ""))),
            "jobs.conninfo"));
  }
  for (const char* conninfo :
       {"host=/run/postgresql dbname=qos", "postgresql://qos@db/qos", "postgresql://db:5432/q"}) {
    SCOPED_TRACE(conninfo);
    EXPECT_FALSE(
        has(warned(load(config_with(
                "jobs: {store: postgres, conninfo: '" + std::string(conninfo) + "'}\n", ""))),
            "jobs.conninfo"));
  }
  const scoped_env env("QOS_TEST_JOBS_CONNINFO", "host=db password=x");
  EXPECT_FALSE(has(warned(load(config_with(
                       "jobs: {store: postgres, conninfo_env: QOS_TEST_JOBS_CONNINFO}\n", ""))),
                   "jobs.conninfo"));
}

TEST(jobs_config_warnings, a_rate_for_a_group_without_accept_routes) {
  const app_config cfg =
      load(config_with("jobs: {rates: {db: {per_second: 1}, images: {per_second: 1}}}\n",
                       "    mode: accept\n    max_exec: 1s\n"));
  const auto keys = warned(cfg);
  EXPECT_TRUE(has(keys, "jobs.rates.images"));
  EXPECT_FALSE(has(keys, "jobs.rates.db")) << "orders is an accept route of db";
}

TEST(jobs_config_warnings, an_accept_route_without_max_exec) {
  EXPECT_TRUE(has(warned(load(config_with(sqlite_jobs, accept_route))), "routes[0].max_exec"));
  EXPECT_FALSE(has(warned(load(config_with(sqlite_jobs, ""))), "routes[0].max_exec"))
      << "a guarded route without max_exec is the default";
}

TEST(jobs_config_warnings, the_shipped_example_has_none) {
  const app_config cfg = load_config(std::string(QOS_SOURCE_DIR) + "/config/qos.yaml");
  EXPECT_TRUE(warnings(cfg).empty());
}

// ---------------------------------------------------------------------------------------------
// Reload plan

const guarded_routes guarded{};

std::string edit(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

TEST(jobs_config_reload, every_jobs_key_needs_a_restart) {
  const std::string base = every_key_sqlite();
  const app_config current = load(base);
  const std::vector<std::tuple<std::string, std::string, std::string>> edits = {
      {"weird: name.db", "other.db",
       "jobs.sqlite_path '/etc/qos/weird: name.db' -> '/etc/qos/other.db'"},
      {"synchronous: normal", "synchronous: full", "jobs.synchronous normal -> full"},
      {"group_commit: 1.25ms", "group_commit: 2ms", "jobs.group_commit 1250us -> 2ms"},
      {"prefetch: 0", "prefetch: auto", "jobs.prefetch 0 -> auto"},
      {"consume: false", "consume: true", "jobs.consume false -> true"},
      {"store_threads: 3", "store_threads: 4", "jobs.store_threads 3 -> 4"},
      {"max_pending: 9", "max_pending: 10", "jobs.max_pending 9 -> 10"},
      {"retention: 90m", "retention: 91m", "jobs.retention 5400s -> 5460s"},
      {"prune_interval: 5s", "prune_interval: 6s", "jobs.prune_interval 5s -> 6s"},
      {"poll_interval: 15ms", "poll_interval: 16ms", "jobs.poll_interval 15ms -> 16ms"},
      {"per_second: 0.5, burst: 2.5", "per_second: 1, burst: 2.5",
       "jobs.rates.db per_second 0.5, burst 2.5 -> per_second 1, burst 2.5"},
      {", \"images\": {per_second: 7}", "", "jobs.rates.images per_second 7, burst 1 -> none"},
  };
  for (const auto& [from, to, line] : edits) {
    SCOPED_TRACE(line);
    const app_config next = load(edit(base, from, to));
    const reload_plan plan = plan_reload(current, next, guarded);
    EXPECT_EQ(plan.restart_needed, std::vector<std::string>{line});
    EXPECT_TRUE(plan.changes.empty()) << plan.changes.front();
    ASSERT_TRUE(plan.effective.jobs);
    EXPECT_TRUE(*plan.effective.jobs == *current.jobs) << "the running store's settings stay";
  }
}

TEST(jobs_config_reload, the_store_added_removed_or_switched) {
  const std::string with = config_with("jobs:\n", "");
  const std::string without = config_with("", "");
  EXPECT_EQ(plan_reload(load(without), load(with), guarded).restart_needed,
            std::vector<std::string>{"jobs: added"});
  const reload_plan removed = plan_reload(load(with), load(without), guarded);
  EXPECT_EQ(removed.restart_needed, std::vector<std::string>{"jobs: removed"});
  EXPECT_TRUE(removed.effective.jobs);

  const scoped_env env("QOS_TEST_JOBS_CONNINFO", "host=db password=secret-one");
  const app_config pg =
      load(config_with("jobs: {store: postgres, conninfo_env: QOS_TEST_JOBS_CONNINFO}\n", ""));
  const reload_plan switched = plan_reload(load(with), pg, guarded);
  EXPECT_EQ(switched.restart_needed, std::vector<std::string>{"jobs.store sqlite -> postgres"})
      << "the keys of one store are not compared with the other's";

  ::setenv("QOS_TEST_JOBS_CONNINFO", "host=db password=secret-two", 1);
  const reload_plan rotated = plan_reload(pg,
                                          load(config_with("jobs: {store: postgres, conninfo_env: "
                                                           "QOS_TEST_JOBS_CONNINFO}\n",
                                                           "")),
                                          guarded);
  EXPECT_EQ(rotated.restart_needed, std::vector<std::string>{"jobs.conninfo changed"});
  for (const auto& line : rotated.restart_needed) EXPECT_FALSE(contains(line, "secret"));
}

TEST(jobs_config_reload, a_mode_change_needs_a_restart) {
  const app_config guard_cfg = load(config_with(sqlite_jobs, "    max_exec: 1s\n"));
  const app_config accept_cfg =
      load(config_with(sqlite_jobs, "    mode: accept\n    max_exec: 1s\n"));
  const reload_plan to_accept = plan_reload(guard_cfg, accept_cfg, guarded);
  EXPECT_EQ(to_accept.restart_needed,
            std::vector<std::string>{"route orders: mode guard -> accept"});
  EXPECT_TRUE(to_accept.changes.empty());
  EXPECT_EQ(to_accept.effective.find_route("orders")->mode, route_mode::guard);
  const reload_plan to_guard = plan_reload(accept_cfg, guard_cfg, guarded);
  EXPECT_EQ(to_guard.restart_needed,
            std::vector<std::string>{"route orders: mode accept -> guard"});
  EXPECT_EQ(to_guard.effective.find_route("orders")->mode, route_mode::accept);
}

TEST(jobs_config_reload, accept_keys_the_gate_reads_apply_and_the_consumer_s_wait) {
  const std::string base = every_key_sqlite();
  const app_config current = load(base);
  std::string next_text = base;
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"max_depth: 11", "max_depth: 12"},
           {"full_status: 429", "full_status: 503"},
           {"retry_after: 0", "retry_after: 2"},
           {"Yes, ", ""},
           {"X-Tenant", "X-Org"},
           {"require_idempotency_key: true", "require_idempotency_key: false"},
           {"idempotency_retention: 61m", "idempotency_retention: 2h"},
           {"max_attempts: 2", "max_attempts: 3"},
           {"backoff_base: 5ms", "backoff_base: 6ms"},
           {"backoff_cap: 7ms", "backoff_cap: 8ms"},
           {"lease: 2s", "lease: 3s"},
       }) {
    next_text = edit(next_text, from, to);
  }
  const reload_plan plan = plan_reload(current, load(next_text), guarded);
  const std::vector<std::string> applied = {
      "route orders: accept.max_depth 11 -> 12",
      "route orders: accept.full_status 429 -> 503",
      "route orders: accept.retry_after 0 -> 2",
      "route orders: accept.keep_headers [x-true, yes, null] -> [x-true, null]",
      "route orders: accept.tenant_header 'X-Tenant' -> 'X-Org'",
      "route orders: accept.require_idempotency_key true -> false",
      "route orders: accept.idempotency_retention 3660s -> 7200s",
  };
  const std::vector<std::string> later = {
      "route orders: accept.max_attempts 2 -> 3",
      "route orders: accept.backoff_base 5ms -> 6ms",
      "route orders: accept.backoff_cap 7ms -> 8ms",
      "route orders: accept.lease 2s -> 3s",
  };
  EXPECT_EQ(plan.changes, applied);
  EXPECT_EQ(plan.restart_needed, later);
  const accept_config& eff = plan.effective.find_route("orders")->accept;
  EXPECT_EQ(eff.max_depth, 12u);
  EXPECT_EQ(eff.full_status, 503);
  EXPECT_EQ(eff.keep_headers, (std::vector<std::string>{"x-true", "null"}));
  EXPECT_EQ(eff.idempotency_retention, 2h);
  EXPECT_EQ(eff.max_attempts, 2) << "kept until a restart";
  EXPECT_EQ(eff.backoff_base, 5ms);
  EXPECT_EQ(eff.backoff_cap, 7ms);
  EXPECT_EQ(eff.lease, 2s);
}

TEST(jobs_config_reload, code_built_configs_are_checked_as_loaded_ones) {
  const app_config current = load(config_with(sqlite_jobs, ""));
  app_config next = current;
  next.jobs.reset();
  next.routes[0].mode = route_mode::accept;
  try {
    plan_reload(current, next, guarded);
    ADD_FAILURE() << "an accept route without jobs was planned";
  } catch (const config_error& e) {
    EXPECT_EQ(e.key(), "routes[0].mode");
  }
  next = current;
  next.jobs->rates["nosuch"] = job_rate_config{1, 1};
  try {
    plan_reload(current, next, guarded);
    ADD_FAILURE() << "a rate for an unknown group was planned";
  } catch (const config_error& e) {
    EXPECT_EQ(e.key(), "jobs.rates.nosuch");
  }
}

TEST(jobs_config_load, accept_routes_of_one_group_share_lease_and_retries) {
  const std::string two = std::string(sqlite_jobs) + groups +
                          "routes:\n"
                          "  - name: orders\n    group: db\n    mode: accept\n"
                          "    accept:\n      max_attempts: 3\n"
                          "  - name: refunds\n    group: images\n    mode: accept\n"
                          "  - name: returns\n    group: db\n    mode: accept\n"
                          "    accept:\n      max_attempts: 4\n";
  const std::string e = error_of(two);
  EXPECT_TRUE(starts_with(e,
                          "test.yaml:21:7: routes[2].accept: max_attempts differs from accept "
                          "route 'orders' of the same group 'db'"))
      << e;
  // Another group may differ, and agreeing routes load.
  std::string same = two;
  same.replace(same.rfind("max_attempts: 4"), 15, "max_attempts: 3");
  const app_config cfg = load(same);
  EXPECT_EQ(cfg.routes[2].accept.max_attempts, 3);
}

}  // namespace
}  // namespace qos::config

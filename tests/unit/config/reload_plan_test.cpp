// config::plan_reload: what a reload applies, what it leaves to a restart, and what it refuses,
// from two configs written as YAML.
#include "qos/config/reload_plan.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

namespace qos::config {
namespace {

using namespace std::chrono_literals;

const char* const base = R"(
server: {port: 9080, fiber_threads: 2}
groups:
  - {name: db, max_concurrent: 8, max_queue: 500}
  - {name: images, max_concurrent: 4}
routes:
  - {name: items, group: db, max_wait: 200ms}
  - {name: report, group: db, max_wait: 2s, max_exec: 1s}
  - {name: thumbs, group: images}
)";

app_config load(const std::string& yaml) {
  return load_config_string(yaml, "next.yaml");
}

// `base` with `from` replaced by `to` (each must occur).
std::string edit(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

bool has(const std::vector<std::string>& lines, const std::string& line) {
  return std::find(lines.begin(), lines.end(), line) != lines.end();
}

const guarded_routes guarded{{"items", guarded_as::writer}, {"report", guarded_as::result}};

TEST(reload_plan_test, the_same_config_changes_nothing) {
  const auto plan = plan_reload(load(base), load(base), guarded);
  EXPECT_TRUE(plan.empty());
  EXPECT_EQ(plan.effective.groups.size(), 2u);
}

TEST(reload_plan_test, group_and_route_settings_are_applied_one_line_each) {
  const auto next = edit(edit(edit(base, "max_concurrent: 8, max_queue: 500",
                                   "max_concurrent: 16, max_queue: 100, aging_step: 50ms, "
                                   "queue: {discipline: codel}, shadow: true"),
                              "max_wait: 200ms}", "max_wait: 1500ms, priority: {default: 3}}"),
                         "max_exec: 1s", "max_exec: 500ms");
  const auto plan = plan_reload(load(base), load(next), guarded);
  EXPECT_TRUE(plan.restart_needed.empty());
  const std::vector<std::string> expected = {
      "group db: max_concurrent 8 -> 16",         "group db: max_queue 500 -> 100",
      "group db: queue.discipline fifo -> codel", "group db: aging_step 0ms -> 50ms",
      "group db: shadow false -> true",           "route items: max_wait 200ms -> 1500ms",
      "route items: priority.default 0 -> 3",     "route report: max_exec 1s -> 500ms",
  };
  EXPECT_EQ(plan.changes, expected);
  EXPECT_EQ(plan.effective.find_group("db")->limiter.max_concurrent, 16u);
  EXPECT_EQ(plan.effective.find_route("items")->max_wait, 1500ms);
}

TEST(reload_plan_test, fixed_to_adaptive_is_applied_and_says_where_it_starts) {
  const auto next =
      edit(base, "max_concurrent: 8, max_queue: 500",
           "max_concurrent: 8, max_queue: 500, limit: {algorithm: aimd, max: 32, initial: 10}");
  const auto plan = plan_reload(load(base), load(next), guarded);
  EXPECT_TRUE(has(plan.changes,
                  "group db: limit fixed -> aimd (min 1, max 32; starts at limit.initial 10)"))
      << plan.changes.front();
  const auto back = plan_reload(load(next), load(base), guarded);
  EXPECT_TRUE(has(back.changes, "group db: limit aimd -> fixed (max_concurrent 8)"));
}

TEST(reload_plan_test, server_and_logging_settings_need_a_restart_and_keep_their_values) {
  const auto next = edit(edit(base, "port: 9080, fiber_threads: 2", "port: 9090, fiber_threads: 4"),
                         "server:", "logging: {level: debug}\nserver:");
  const auto plan = plan_reload(load(base), load(next), guarded);
  EXPECT_TRUE(plan.changes.empty());
  const std::vector<std::string> expected = {
      "server.port 9080 -> 9090", "server.fiber_threads 2 -> 4", "logging.level 'info' -> 'debug'"};
  EXPECT_EQ(plan.restart_needed, expected);
  EXPECT_EQ(plan.effective.server.port, 9080);
  EXPECT_EQ(plan.effective.server.fiber_threads, 2u);
  EXPECT_EQ(plan.effective.logging.level, "info");
}

TEST(reload_plan_test, connection_cap_and_drain_settings_need_a_restart_and_keep_their_values) {
  const auto next = edit(base, "port: 9080, fiber_threads: 2",
                         "port: 9080, fiber_threads: 2, max_connections: 5000, "
                         "drain_delay: 2s, drain_parked: serve");
  const auto plan = plan_reload(load(base), load(next), guarded);
  EXPECT_TRUE(plan.changes.empty());
  const std::vector<std::string> expected = {"server.max_connections 0 -> 5000",
                                             "server.drain_delay 0ms -> 2s",
                                             "server.drain_parked shed -> serve"};
  EXPECT_EQ(plan.restart_needed, expected);
  EXPECT_EQ(plan.effective.server.max_connections, 0u);
  EXPECT_EQ(plan.effective.server.drain_delay, 0ms);
  EXPECT_EQ(plan.effective.server.drain_parked, drain_mode::shed);
  // And back: the running values are what a second reload compares with.
  const auto back = plan_reload(load(next), load(base), guarded);
  const std::vector<std::string> undo = {"server.max_connections 5000 -> 0",
                                         "server.drain_delay 2s -> 0ms",
                                         "server.drain_parked serve -> shed"};
  EXPECT_EQ(back.restart_needed, undo);
}

TEST(reload_plan_test, send_timeout_and_write_stall_need_a_restart_and_keep_their_values) {
  const auto next = edit(base, "port: 9080, fiber_threads: 2",
                         "port: 9080, fiber_threads: 2, send_timeout: 30s, write_stall: 0");
  const auto plan = plan_reload(load(base), load(next), guarded);
  EXPECT_TRUE(plan.changes.empty());
  const std::vector<std::string> expected = {"server.send_timeout 60s -> 30s",
                                             "server.write_stall 1s -> 0ms"};
  EXPECT_EQ(plan.restart_needed, expected);
  EXPECT_EQ(plan.effective.server.send_timeout, 60s);
  EXPECT_EQ(plan.effective.server.write_stall, 1s);
  const auto back = plan_reload(load(next), load(base), guarded);
  const std::vector<std::string> undo = {"server.send_timeout 30s -> 60s",
                                         "server.write_stall 0ms -> 1s"};
  EXPECT_EQ(back.restart_needed, undo);
}

TEST(reload_plan_test, the_admin_section_needs_a_restart_and_its_token_is_never_printed) {
  ::setenv("QOS_RELOAD_PLAN_TOKEN_A", "first-secret", 1);
  ::setenv("QOS_RELOAD_PLAN_TOKEN_B", "second-secret", 1);
  const std::string with_admin =
      edit(base, "groups:", "admin: {port: 9901, token_env: QOS_RELOAD_PLAN_TOKEN_A}\ngroups:");
  const auto running = load(with_admin);

  // Added: the listener is not started by a reload.
  auto plan = plan_reload(load(base), running, guarded);
  EXPECT_TRUE(plan.changes.empty());
  EXPECT_EQ(plan.restart_needed, std::vector<std::string>{"admin: added"});
  EXPECT_FALSE(plan.effective.admin.has_value());

  // Removed: the listener keeps serving.
  plan = plan_reload(running, load(base), guarded);
  EXPECT_EQ(plan.restart_needed, std::vector<std::string>{"admin: removed"});
  ASSERT_TRUE(plan.effective.admin.has_value());
  EXPECT_EQ(plan.effective.admin->port, 9901);

  // Moved, and a token from another variable.
  plan = plan_reload(running,
                     load(edit(edit(with_admin, "port: 9901", "address: 127.0.0.2, port: 9902"),
                               "TOKEN_A", "TOKEN_B")),
                     guarded);
  const std::vector<std::string> expected = {
      "admin.address '127.0.0.1' -> '127.0.0.2'", "admin.port 9901 -> 9902",
      "admin.token_env 'QOS_RELOAD_PLAN_TOKEN_A' -> 'QOS_RELOAD_PLAN_TOKEN_B'",
      "admin.token changed"};
  EXPECT_EQ(plan.restart_needed, expected);
  ASSERT_TRUE(plan.effective.admin.has_value());
  EXPECT_EQ(plan.effective.admin->address, "127.0.0.1");
  EXPECT_EQ(plan.effective.admin->port, 9901);
  EXPECT_EQ(plan.effective.admin->token, "first-secret");

  // The same variable with another value: only that the token changed.
  ::setenv("QOS_RELOAD_PLAN_TOKEN_A", "rotated-secret", 1);
  plan = plan_reload(running, load(with_admin), guarded);
  EXPECT_EQ(plan.restart_needed, std::vector<std::string>{"admin.token changed"});
  EXPECT_EQ(plan.effective.admin->token, "first-secret");
  for (const auto& line : plan.restart_needed) {
    EXPECT_EQ(line.find("secret"), std::string::npos) << line;
  }
  ::unsetenv("QOS_RELOAD_PLAN_TOKEN_A");
  ::unsetenv("QOS_RELOAD_PLAN_TOKEN_B");
}

TEST(reload_plan_test, a_route_keeps_its_group_until_a_restart_even_if_the_group_goes) {
  // thumbs moves to db and images leaves the file: thumbs runs on in images, as it was.
  const auto next = edit(edit(base, "  - {name: images, max_concurrent: 4}\n", ""),
                         "{name: thumbs, group: images}", "{name: thumbs, group: db}");
  const auto plan = plan_reload(load(base), load(next), guarded);
  EXPECT_TRUE(has(plan.restart_needed, "route thumbs: group 'images' -> 'db'"));
  EXPECT_TRUE(has(plan.restart_needed, "group images: removed, but route thumbs still uses it"));
  EXPECT_EQ(plan.effective.find_route("thumbs")->group, "images");
  ASSERT_NE(plan.effective.find_group("images"), nullptr);
  EXPECT_EQ(plan.effective.find_group("images")->limiter.max_concurrent, 4u);
  EXPECT_FALSE(has(plan.changes, "group images: removed"));
}

TEST(reload_plan_test, added_groups_and_routes_and_removed_unguarded_routes_are_accepted) {
  const auto next =
      edit(edit(base, "  - {name: thumbs, group: images}\n", "  - {name: search, group: index}\n"),
           "groups:\n", "groups:\n  - {name: index, max_concurrent: 2}\n");
  const auto plan = plan_reload(load(base), load(next), guarded);
  EXPECT_TRUE(has(plan.changes, "group index: added (no route uses it before a restart)"));
  EXPECT_TRUE(has(plan.changes, "route search: added (no handler guards it before a restart)"));
  EXPECT_TRUE(has(plan.changes, "route thumbs: removed"));
  EXPECT_TRUE(plan.restart_needed.empty());
}

TEST(reload_plan_test, removing_a_guarded_route_is_refused) {
  const auto next = edit(base, "  - {name: items, group: db, max_wait: 200ms}\n", "");
  try {
    plan_reload(load(base), load(next), guarded);
    FAIL() << "removing a guarded route must be refused";
  } catch (const config_error& e) {
    EXPECT_EQ(e.key(), "routes");
    EXPECT_NE(std::string(e.what()).find("next.yaml: routes: route 'items' is guarded"),
              std::string::npos)
        << e.what();
  }
}

TEST(reload_plan_test, max_exec_for_a_handler_that_writes_its_response_is_refused) {
  const auto next = edit(base, "max_wait: 200ms}", "max_wait: 200ms, max_exec: 1s}");
  try {
    plan_reload(load(base), load(next), guarded);
    FAIL() << "max_exec on a guard() route must be refused";
  } catch (const config_error& e) {
    EXPECT_EQ(e.key(), "routes[0].max_exec");
    EXPECT_EQ(e.line(), 7);
  }
}

TEST(reload_plan_test, a_config_built_in_code_is_validated_like_a_loaded_one) {
  app_config next = load(base);
  next.source = "<code>";
  next.groups[0].limiter.max_queue = 0;
  try {
    plan_reload(load(base), next, guarded);
    FAIL() << "max_queue 0 must be refused";
  } catch (const config_error& e) {
    EXPECT_EQ(std::string(e.what()), "<code>:4: groups[0].max_queue: must be >= 1, got 0");
  }
  next = load(base);
  next.routes[2].group = "nowhere";
  EXPECT_THROW(plan_reload(load(base), next, guarded), config_error);
  next = load(base);
  next.routes.push_back(next.routes[0]);
  EXPECT_THROW(plan_reload(load(base), next, guarded), config_error);
}

TEST(reload_plan_test, a_cost_that_no_longer_fits_the_group_kept_is_refused) {
  // thumbs asks for db (16 permits) with cost 8, but stays in images (4) until a restart.
  const auto next =
      edit(base, "{name: thumbs, group: images}", "{name: thumbs, group: db, cost: 8}");
  EXPECT_THROW(plan_reload(load(base), load(next), guarded), config_error);
}

}  // namespace
}  // namespace qos::config

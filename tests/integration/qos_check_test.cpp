// qos-check (and the example's --check) as a process: what an operator or a deploy script sees.
// Exit 0 with a summary on a valid file, 2 with the loader's file:line:col: key: message on an
// invalid one, 2 on an unreadable file or a usage error, warnings on stderr (1 with --strict),
// --print-effective YAML that qos-check accepts again with the same hash, --version.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <vector>

#include "qos/version.hpp"

#ifndef QOS_CHECK
#error "QOS_CHECK must name the qos-check binary"
#endif
#ifndef QOS_SOURCE_DIR
#error "QOS_SOURCE_DIR must name the repository root"
#endif

extern char** environ;

namespace {

namespace fs = std::filesystem;

struct run_result {
  int status = -1;  // exit status; -1 when it did not exit normally
  std::string out;
  std::string err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class qos_check_test : public testing::Test {
 protected:
  void SetUp() override {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("qos_check_test_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }

  // Runs `program args...` with stdout and stderr in files, and waits for it.
  run_result run(const std::string& program, const std::vector<std::string>& args) {
    const std::string out = (dir_ / "stdout").string(), err = (dir_ / "stderr").string();
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    std::vector<char*> argv{const_cast<char*>(program.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = 0;
    const int spawned = posix_spawn(&pid, program.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    run_result r;
    if (spawned != 0) {
      ADD_FAILURE() << "cannot run " << program;
      return r;
    }
    int wstatus = 0;
    ::waitpid(pid, &wstatus, 0);
    if (WIFEXITED(wstatus)) r.status = WEXITSTATUS(wstatus);
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  run_result check(const std::vector<std::string>& args) { return run(QOS_CHECK, args); }

  fs::path dir_;
};

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

const std::string shipped = std::string(QOS_SOURCE_DIR) + "/config/qos.yaml";

TEST_F(qos_check_test, a_valid_file_exits_0_with_the_effective_summary) {
  const run_result r = check({shipped});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err, "") << "the shipped config has no warnings";
  EXPECT_TRUE(
      contains(r.out, shipped + ": OK (qos " + std::string(qos::version()) + "), config hash "))
      << r.out;
  for (const char* part :
       {"server: 127.0.0.1:9080", "admin: 127.0.0.1:9081, token none", "group db: limit fixed 8",
        "route db -> group db: max_wait 1000ms", "route image", "route item",
        "exec_timeout      504", "drain: drain_delay 0ms"}) {
    EXPECT_TRUE(contains(r.out, part)) << part << "\n" << r.out;
  }
}

TEST_F(qos_check_test, an_invalid_file_exits_2_naming_file_line_column_and_key) {
  const std::string path = write("bad.yaml",
                                 "groups:\n"
                                 "  - name: db\n"
                                 "    max_concurrent: 0\n"
                                 "routes: [{name: r, group: db}]\n");
  const run_result r = check({path});
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, path + ":3:21: groups[0].max_concurrent: must be > 0, got 0\n");

  const std::string admin = write("admin.yaml",
                                  "admin: {address: 0.0.0.0, port: 9081}\n"
                                  "groups: [{name: db, max_concurrent: 1}]\n"
                                  "routes: [{name: r, group: db}]\n");
  const run_result a = check({admin});
  EXPECT_EQ(a.status, 2);
  EXPECT_TRUE(contains(a.err, admin + ":1:18: admin.address: ")) << a.err;
}

TEST_F(qos_check_test, blocking_threads_below_the_limit_is_an_error_not_a_warning) {
  const std::string path = write("pool.yaml",
                                 "groups:\n"
                                 "  - {name: db, max_concurrent: 8, blocking_threads: 4}\n"
                                 "routes: [{name: r, group: db}]\n");
  const run_result r = check({path});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.err, "groups[0].blocking_threads: must be 0 or >= max_concurrent (8)"))
      << r.err;
}

TEST_F(qos_check_test, unreadable_files_and_usage_errors_exit_2) {
  const run_result missing = check({(dir_ / "none.yaml").string()});
  EXPECT_EQ(missing.status, 2);
  EXPECT_EQ(missing.err, (dir_ / "none.yaml").string() + ": cannot read config file\n");
  const run_result folder = check({dir_.string()});
  EXPECT_EQ(folder.status, 2);
  EXPECT_TRUE(contains(folder.err, "cannot read config file")) << folder.err;

  for (const auto& args :
       std::vector<std::vector<std::string>>{{},
                                             {"--frobnicate", shipped},
                                             {shipped, shipped},
                                             {shipped, "--service-time"},
                                             {shipped, "--service-time", "db"},
                                             {shipped, "--service-time", "db=fast"},
                                             {shipped, "--service-time", "nosuchgroup=10ms"}}) {
    const run_result r = check(args);
    EXPECT_EQ(r.status, 2) << testing::PrintToString(args);
    EXPECT_NE(r.err, "") << testing::PrintToString(args);
  }
  EXPECT_TRUE(contains(check({}).err, "usage: qos-check FILE"));
}

TEST_F(qos_check_test, warnings_go_to_stderr_and_fail_only_with_strict) {
  const std::string path =
      write("risky.yaml",
            "server: {address: 0.0.0.0}\n"
            "groups: [{name: db, max_concurrent: 8}]\n"
            "routes:\n"
            "  - name: r\n"
            "    group: db\n"
            "    priority: {raw_header: X-Priority, raw_header_trusted: true}\n");
  const run_result r = check({path});
  EXPECT_EQ(r.status, 0);
  EXPECT_TRUE(contains(r.out, ": OK")) << r.out;
  EXPECT_TRUE(contains(r.err, path + ":4: warning: routes[0].priority.raw_header_trusted: "))
      << r.err;
  EXPECT_TRUE(contains(r.err, "1 warning\n")) << r.err;
  EXPECT_EQ(check({"--strict", path}).status, 1);
  EXPECT_EQ(check({"--strict", shipped}).status, 0);
}

TEST_F(qos_check_test, service_time_checks_max_wait) {
  const std::string path = write("wait.yaml",
                                 "groups: [{name: db, max_concurrent: 4}]\n"
                                 "routes: [{name: r, group: db, max_wait: 50ms}]\n");
  EXPECT_EQ(check({"--strict", path}).status, 0);
  const run_result r = check({"--strict", path, "--service-time", "db=200ms"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err,
                       "routes[0].max_wait: max_wait 50ms is shorter than group 'db''s "
                       "service time 200ms"))
      << r.err;
}

TEST_F(qos_check_test, print_effective_is_yaml_qos_check_accepts_with_the_same_hash) {
  // The benchmark configs read their admin token from this variable (bench/lib/common.sh).
  ::setenv("QOS_BENCH_ADMIN_TOKEN", "bench-token", 0);
  for (const std::string& file :
       {shipped, std::string(QOS_SOURCE_DIR) + "/config/advanced.yaml",
        std::string(QOS_SOURCE_DIR) + "/bench/config/qos-n8-reserve.yaml"}) {
    SCOPED_TRACE(file);
    const run_result first = check({"--print-effective", file});
    ASSERT_EQ(first.status, 0) << first.err;
    std::smatch hash;
    ASSERT_TRUE(std::regex_search(first.out, hash, std::regex("config hash ([0-9a-f]{16})")))
        << first.out;
    const std::string again = write("effective.yaml", first.out);
    const run_result second = check({again});
    EXPECT_EQ(second.status, 0) << second.err;
    EXPECT_TRUE(contains(second.out, "config hash " + hash[1].str())) << second.out;
    EXPECT_TRUE(contains(check({file}).out, "config hash " + hash[1].str()));
  }
}

TEST_F(qos_check_test, version_and_help) {
  const run_result v = check({"--version"});
  EXPECT_EQ(v.status, 0);
  EXPECT_EQ(v.out, "qos-check (qos) " + std::string(qos::version()) + "\n");
  const run_result h = check({"--help"});
  EXPECT_EQ(h.status, 0);
  EXPECT_TRUE(contains(h.out, "--print-effective")) << h.out;
}

#ifdef CATALOG_SERVICE
TEST_F(qos_check_test, the_example_s_check_says_the_same_and_adds_its_own_needs) {
  const run_result ours = run(CATALOG_SERVICE, {"--check", shipped});
  const run_result tool = check({shipped});
  EXPECT_EQ(ours.status, 0) << ours.err;
  EXPECT_EQ(ours.out, tool.out);

  const std::string bad = write("bad.yaml",
                                "groups: [{name: db, max_concurrent: x}]\n"
                                "routes: [{name: db, group: db}]\n");
  const run_result ours_bad = run(CATALOG_SERVICE, {"--check", bad});
  EXPECT_EQ(ours_bad.status, 2);
  EXPECT_EQ(ours_bad.err, check({bad}).err);

  // Valid for qos, but the example guards a group and a route named db.
  const std::string other = write("other.yaml",
                                  "groups: [{name: x, max_concurrent: 1}]\n"
                                  "routes: [{name: x, group: x}]\n");
  EXPECT_EQ(check({other}).status, 0);
  const run_result needs = run(CATALOG_SERVICE, {"--check", other});
  EXPECT_EQ(needs.status, 2);
  EXPECT_EQ(needs.err, other + ": groups: the example needs a group 'db'\n");
  EXPECT_EQ(run(CATALOG_SERVICE, {"--check", other, "--strict"}).status, 2);
}
#endif

}  // namespace

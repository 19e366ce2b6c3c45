// A program run as a child process by a test: its stdout and stderr merged into one pipe the
// test reads, waits bounded by deadlines, and a SIGKILL when the test ends with it still running
// (a failed assertion midway must not leave it behind); public_port() reads the port a qos
// service announces. Header-only; POSIX.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <vector>

extern char** environ;

namespace qos::test {

struct child_process {
  using clock_type = std::chrono::steady_clock;

  pid_t pid = -1;
  int out = -1;  // the child's stdout and stderr, merged
  std::string output;
  int exit_status = -1;  // once alive() or wait_exit() saw the exit: the status, or 128 + signal
  bool eof = false;      // the pipe is closed: the child and everything it started ended

  child_process() = default;
  child_process(child_process&& o) noexcept
      : pid(o.pid),
        out(o.out),
        output(std::move(o.output)),
        exit_status(o.exit_status),
        eof(o.eof) {
    o.pid = -1;
    o.out = -1;
  }
  child_process& operator=(child_process&&) = delete;
  ~child_process() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (out >= 0) ::close(out);
  }

  // Reads what the child wrote so far, waiting at most `wait` for the first bytes.
  void drain_output(std::chrono::milliseconds wait = std::chrono::milliseconds(0)) {
    for (;;) {
      pollfd p{out, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return;
      char buf[4096];
      const ssize_t n = ::read(out, buf, sizeof buf);
      if (n == 0) eof = true;
      if (n <= 0) return;
      output.append(buf, static_cast<std::size_t>(n));
      wait = std::chrono::milliseconds(0);
    }
  }

  // Reads output until `pattern` matches or `limit` passes; returns the first capture group
  // (the whole match when the pattern has none), or nothing (also as soon as the output ended
  // without a match).
  std::optional<std::string> read_until(const std::regex& pattern,
                                        std::chrono::milliseconds limit) {
    const auto until = clock_type::now() + limit;
    std::smatch m;
    while (!std::regex_search(output, m, pattern)) {
      if (eof || clock_type::now() > until) return std::nullopt;
      drain_output(std::chrono::milliseconds(10));
    }
    return m.size() > 1 ? m[1].str() : m[0].str();
  }

  // Still running (not exited, not killed by a signal).
  bool alive() {
    if (pid <= 0) return false;
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == 0) return true;
    if (r == pid) {
      pid = -1;
      exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    return false;
  }

  // Waits for exit, reading output meanwhile; returns the exit status (128 + signal when
  // killed), or -1 after `limit` (the child then still runs; the destructor kills it).
  int wait_exit(std::chrono::milliseconds limit) {
    const auto until = clock_type::now() + limit;
    while (clock_type::now() < until) {
      if (!alive()) return exit_status;
      drain_output(std::chrono::milliseconds(5));
    }
    return -1;
  }

  bool signal(int sig) const { return pid > 0 && ::kill(pid, sig) == 0; }
};

struct spawn_options {
  // The child's RLIMIT_AS in bytes (with 8 MiB thread stacks), to make startup run out of memory.
  std::optional<rlim_t> address_space{};
  std::vector<std::string> extra_env{};  // "NAME=value", added to this process's environment
};

// Runs `program` with `args`. Returns a child_process with pid -1 when the pipe or fork failed.
inline child_process spawn_process(const std::string& program, const std::vector<std::string>& args,
                                   const spawn_options& options = {}) {
  // Built before fork: the child only calls async-signal-safe functions.
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  for (const auto& e : options.extra_env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(program.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  child_process c;
  int fds[2];
  if (::pipe(fds) != 0) return c;
  c.pid = ::fork();
  if (c.pid == 0) {
    if (options.address_space) {
      const rlimit limit{*options.address_space, *options.address_space};
      ::setrlimit(RLIMIT_AS, &limit);
      // A known size for every thread's stack (glibc's default is RLIMIT_STACK's soft limit).
      const rlimit stack{rlim_t{8} << 20, rlim_t{8} << 20};
      ::setrlimit(RLIMIT_STACK, &stack);
    }
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execve(program.c_str(), argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  if (c.pid < 0) {
    ::close(fds[0]);
    return c;
  }
  c.out = fds[0];
  return c;
}

// The public port a qos service prints in its startup message ("curl http://127.0.0.1:PORT/"),
// read within 30 s; 0 (and a failed expectation showing the output so far) without one.
inline std::uint16_t public_port(child_process& c) {
  const auto text =
      c.read_until(std::regex("curl http://127\\.0\\.0\\.1:([0-9]+)/"), std::chrono::seconds(30));
  EXPECT_TRUE(text) << c.output;
  return text ? static_cast<std::uint16_t>(std::stoi(*text)) : 0;
}

}  // namespace qos::test

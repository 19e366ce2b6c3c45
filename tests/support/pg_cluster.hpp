// A private PostgreSQL 15 cluster for tests (and bench/jobs/store_bench): initdb and pg_ctl in a
// fresh temporary folder (under /tmp, or under `base`, which the postgres user must reach),
// a unix socket in that folder only (listen_addresses=''), trust authentication. The server runs
// as `postgres` (initdb refuses root, and CI runs as root). RAII: the destructor stops the
// server and removes the folder. Not thread-safe; one per test process.
#pragma once

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace qos::test {

class pg_cluster {
 public:
  static constexpr const char* bin = "/usr/lib/postgresql/15/bin";

  // Whether the server binaries are installed; tests skip (visibly) only when they are not.
  static bool available() { return ::access((std::string(bin) + "/initdb").c_str(), X_OK) == 0; }

  // initdb and start; throws std::runtime_error (with the log's path) when either fails.
  explicit pg_cluster(const std::string& base = "/tmp") {
    std::string tmpl = base + "/qos-pg-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed under " + base);
    dir_ = tmpl;
    as_root_ = ::geteuid() == 0;
    if (as_root_) {
      const passwd* pw = ::getpwnam("postgres");
      if (!pw || ::chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
        remove();
        throw std::runtime_error("cannot give " + dir_ + " to the postgres user");
      }
    }
    ::chmod(dir_.c_str(), 0700);
    if (!run("initdb -D " + dir_ + "/data -A trust -U postgres --no-sync -E UTF8 --locale=C",
             "initdb.log")) {
      remove();
      throw std::runtime_error("initdb failed (see its log; folder removed)");
    }
    start();
  }
  pg_cluster(const pg_cluster&) = delete;
  pg_cluster& operator=(const pg_cluster&) = delete;
  ~pg_cluster() {
    if (running_) stop();
    remove();
  }

  void start() {
    // The port only names the socket file inside our own folder.
    if (!run("pg_ctl -D " + dir_ + "/data -l " + dir_ + "/server.log -w -t 60 -o \"-k " + dir_ +
                 " -p 5432 -c listen_addresses=''\" start",
             "pg_ctl.log")) {
      throw std::runtime_error("pg_ctl start failed: see " + dir_ + "/server.log");
    }
    running_ = true;
  }

  void stop() {
    run("pg_ctl -D " + dir_ + "/data -m fast -w -t 60 stop", "pg_ctl.log");
    running_ = false;
  }

  std::string conninfo(const std::string& db = "postgres") const {
    return "host=" + dir_ + " port=5432 user=postgres dbname=" + db + " connect_timeout=5";
  }

 private:
  bool run(const std::string& cmd, const char* log) const {
    const std::string prefix = as_root_ ? "runuser -u postgres -- " : "";
    const std::string line =
        prefix + bin + "/" + cmd + " >>" + dir_ + "/" + log + " 2>&1 </dev/null";
    return std::system(line.c_str()) == 0;
  }

  void remove() const {
    if (!dir_.empty()) [[maybe_unused]]
      int rc = std::system(("rm -rf " + dir_).c_str());
  }

  // <base>/qos-pg-XXXXXX: used in command lines unquoted, so `base` must be a plain path.
  std::string dir_;
  bool as_root_ = false;
  bool running_ = false;
};

}  // namespace qos::test

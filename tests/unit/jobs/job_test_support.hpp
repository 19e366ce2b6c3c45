// What the job store tests share: a temporary folder, a manual wall clock, a request builder.
#pragma once

#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include "qos/jobs/job_store.hpp"

namespace qos::jobs::test {

// A folder under $TMPDIR (or /tmp), removed with everything in it.
class temp_dir {
 public:
  temp_dir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/qos_jobs_XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~temp_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Read on the store's writer thread, set by the test: atomic.
class manual_clock {
 public:
  explicit manual_clock(wall_time start) : ms_(to_ms(start)) {}
  manual_clock() : manual_clock(wall_time(std::chrono::milliseconds(1'700'000'000'000))) {}
  now_fn fn() {
    return [this] { return wall_time(std::chrono::milliseconds(ms_.load())); };
  }
  wall_time now() const { return wall_time(std::chrono::milliseconds(ms_.load())); }
  void advance(std::chrono::milliseconds by) { ms_ += by.count(); }

 private:
  static std::int64_t to_ms(wall_time t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  }
  std::atomic<std::int64_t> ms_;
};

inline job_result status_only(int status) {
  job_result r;
  r.status = status;
  return r;
}

inline job_request order(std::string body, std::optional<std::string> key = std::nullopt,
                         int priority = 0) {
  job_request job;
  job.route = "orders";
  job.group = "db";
  job.method = "POST";
  job.target = "/orders";
  job.headers = {{"content-type", "application/json"}};
  job.payload_hash = "hash:" + body;
  job.body = std::move(body);
  job.priority = priority;
  job.idempotency_key = std::move(key);
  return job;
}

}  // namespace qos::jobs::test

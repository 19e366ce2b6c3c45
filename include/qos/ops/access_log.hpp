// The access log: one line per guarded request through its own spdlog logger "qos.access",
// sampled and rate-limited so that an overload cannot flood it. Thread-safe: any reactor or
// fiber thread writes; admit() is lock-free and neither formats nor allocates.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include <spdlog/common.h>
#include <spdlog/logger.h>

#include "qos/config/config.hpp"
#include "qos/core/clock.hpp"
#include "qos/core/outcome.hpp"
#include "qos/core/priority.hpp"

namespace qos {

// One finished request, as the edge saw it. Views: valid for the write() call only.
struct access_record {
  std::string_view method;  // "GET"
  std::string_view path;    // the request's path, without the query
  int status = 0;           // the status sent; 0: nothing was sent (the client was gone)
  outcome result = outcome::admitted;
  std::string_view route;  // the route policy's name
  priority level = 0;
  duration waited{};      // arrival to admission or fallback
  duration handled{};     // how long the handler held its permit; zero when it did not run
  std::size_t bytes = 0;  // bytes sent on the wire: status line, headers and body
  std::string_view peer;  // "ip:port" of the client; empty when unknown
};

class access_log {
 public:
  // On the sink and in the format of `cfg` (stderr or stdout; text or json), with the options
  // of cfg.access_log. Throws std::invalid_argument for a sample outside (0, 1].
  explicit access_log(const config::logging_config& cfg);
  // Writing to `sink` (a file, a test's stream); the sink's formatter is replaced by the one of
  // `format`, so the sink should be this log's alone.
  access_log(const config::access_log_config& options, config::log_format format,
             spdlog::sink_ptr sink);
  access_log(const access_log&) = delete;
  access_log& operator=(const access_log&) = delete;
  // Reports the lines still counted as dropped.
  ~access_log();

  bool enabled() const noexcept { return enabled_; }

  // Whether a request (the gate asks on its arrival) gets a line: no when disabled (one
  // branch); then a sample draw from a thread-local generator (no shared write); then the rate
  // limit, a token bucket holding one second of lines (one compare-and-swap), which counts what
  // it refuses. Call write() once for each yes: the caller gathers the record (the peer's
  // address) only then. Also writes the dropped-lines report when one is due.
  bool admit(time_point now) noexcept;
  bool admit() noexcept { return admit(clock::now()); }

  // Writes the line of one request admit() said yes to. Text: "GET /items/7 200 admitted
  // route=items priority=3 waited_ms=0.012 handled_ms=4.210 bytes=187 peer=127.0.0.1:50412";
  // json: the same keys (method, path, status, outcome, ...) as members of the line's object.
  void write(const access_record& r) noexcept;

  // Writes "N access log lines dropped" if the rate limit refused any line since the last
  // report. Reports otherwise come on their own at most once a second, with a later request.
  void flush() noexcept;

  spdlog::logger& logger() const noexcept { return *logger_; }

 private:
  void count_drop(std::int64_t now_ns) noexcept;
  void maybe_report(std::int64_t now_ns) noexcept;
  void report(std::uint64_t dropped) noexcept;

  const bool enabled_;
  const bool sample_all_;
  const std::uint64_t sample_below_;  // a 53-bit draw below this is logged
  const std::int64_t interval_ns_;    // between two tokens; 0: no rate limit
  const std::int64_t burst_ns_;       // the bucket's depth: one second of tokens
  const config::log_format format_;
  std::shared_ptr<spdlog::logger> logger_;

  // The token bucket as a virtual schedule (GCRA): the time at which the bucket would be full
  // again. Atomic: every thread that logs takes a token with one compare-and-swap.
  alignas(64) std::atomic<std::int64_t> full_at_ns_{0};
  // Lines refused since the last report, and when the next report is due (once a second, the
  // first a second after the first drop). Atomics, apart from the bucket: only drops write them.
  alignas(64) std::atomic<std::uint64_t> dropped_{0};
  std::atomic<std::int64_t> report_due_ns_{0};
};

}  // namespace qos

// Configuration of a qos server as plain structs, and the YAML loader (the only code that sees
// yaml-cpp). load_config validates everything once; a bad file throws config_error naming the
// file, line, column and key. Thread-safety: plain values; load_config is reentrant.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "qos/core/limit_algorithm.hpp"
#include "qos/core/limiter.hpp"
#include "qos/core/priority.hpp"

namespace qos::config {

class config_error : public std::runtime_error {
 public:
  // what() reads "<file>:<line>:<column>: <key>: <message>" (line/column 1-based, omitted
  // when unknown).
  config_error(std::string file, int line, int column, std::string key, std::string message);
  const std::string& file() const noexcept { return file_; }
  int line() const noexcept { return line_; }
  int column() const noexcept { return column_; }
  const std::string& key() const noexcept { return key_; }
  const std::string& message() const noexcept { return message_; }

 private:
  std::string file_;
  int line_;
  int column_;
  std::string key_;
  std::string message_;
};

struct server_config {
  std::string address = "127.0.0.1";
  std::uint16_t port = 9080;                       // 0: any free port
  std::size_t reactor_threads = 2;                 // Pistache reactor threads
  std::size_t fiber_threads = 2;                   // OS threads running the fiber executor
  std::size_t max_pending_jobs = 16384;            // executor inbox; rounded up to a power of two
  std::chrono::milliseconds shutdown_grace{5000};  // running handlers get this long on stop
  std::size_t backlog = 1024;                      // listen backlog
};

struct logging_config {
  std::string level = "info";  // trace|debug|info|warn|error|critical|off; QOS_LOG_LEVEL wins
};

// YAML `limit:` of a group. Absent: the limit is max_concurrent, fixed.
struct limit_config {
  limit_options options;  // kind, min, max, initial and the algorithm's parameters
};

// YAML `queue:` of a group: the discipline within each priority level.
struct queue_config {
  queue_discipline discipline = queue_discipline::fifo;
  std::chrono::milliseconds target{5};      // codel
  std::chrono::milliseconds interval{100};  // codel, adaptive_lifo
};

struct group_config {
  std::string name;
  std::size_t max_concurrent = 0;    // required, > 0; the initial limit when `limit` is set
  std::size_t max_queue = 1000;      // > 0; parked requests beyond this are shed at once
  std::size_t blocking_threads = 0;  // 0: max_concurrent (or limit.max); else >= that
  std::optional<limit_config> limit;
  queue_config queue;
  // Starvation guard: a waiter rises one priority level per aging_step waited; 0: off.
  std::chrono::milliseconds aging_step{0};
  // Headroom: `reserve.permits` units only for requests at `reserve.priority` or above
  // (requests below are granted only while that many stay free). 0: off.
  std::size_t reserve = 0;
  priority reserve_level = max_priority;
  // Decide and count what would be queued or shed, but let every request through.
  bool shadow = false;
  int line = 0;  // where it was declared, for messages
};

// A response qos makes on behalf of a route when it does not run the handler.
struct fallback_config {
  int status = 503;
  std::optional<int> retry_after_s = 1;  // Retry-After seconds; nullopt: no header
  // `retry_after: auto`: computed from the group's queue and throughput (Little's law),
  // bounded to [1, 60] s and jittered; retry_after_s is then ignored.
  bool retry_after_auto = false;
  std::map<std::string, std::string> headers;  // extra headers
  std::string body = "{\"error\":\"overloaded\"}";
  std::string content_type = "application/json";
  std::string file;  // when set, body was read from this file at load time
};

// Fallbacks by reason; a reason without its own entry uses `any` (exec_timeout: `any` with
// status 504 unless its own entry sets a status).
struct fallback_set {
  fallback_config any;
  std::optional<fallback_config> timeout;            // waited max_wait
  std::optional<fallback_config> queue_full;         // queue full, or the executor refused
  std::optional<fallback_config> shutdown;           // server stopping
  std::optional<fallback_config> shed;               // dropped by the queue discipline (codel)
  std::optional<fallback_config> deadline;           // the client's deadline cannot be met
  std::optional<fallback_config> predicted_timeout;  // predicted wait > wait budget
  std::optional<fallback_config> exec_timeout;       // handler ran past max_exec
};

// Client deadlines: the header is read as a duration ("800ms", "2s", a bare number is ms);
// grpc_timeout also reads `grpc-timeout` ("100m", "2S", units H M S m u n).
struct deadline_config {
  std::string header;         // empty: no header
  bool grpc_timeout = false;  // also honour grpc-timeout
};

struct priority_config {
  priority default_level = 0;
  // Header whose values map to levels (for example an API key to a tier). Unknown values and
  // a missing header give default_level.
  std::string header;
  std::map<std::string, priority> values;
  // Header carrying a raw level 0..max; honoured only when trusted is true (a proxy sets it).
  std::string raw_header;
  bool raw_header_trusted = false;
};

struct route_config {
  std::string name;
  std::string group;
  std::chrono::milliseconds max_wait{1000};  // > 0
  // Execution timeout: the client gets the exec_timeout fallback (504) at max_exec, the permit
  // stays held until the handler really ends, its late result is discarded. Needs a handler
  // that returns its response (gate::guard_result). Absent: none.
  std::optional<std::chrono::milliseconds> max_exec;
  std::uint32_t cost = 1;  // permit units taken from the group, 1..max_concurrent
  deadline_config deadline;
  // Answer at once (predicted_timeout) when the estimated wait exceeds the wait budget.
  bool predictive_reject = false;
  priority_config priority;
  fallback_set fallback;
  int line = 0;
};

struct app_config {
  std::string source;  // file it was loaded from, or "<string>"
  server_config server;
  logging_config logging;
  std::vector<group_config> groups;
  std::vector<route_config> routes;

  const group_config* find_group(const std::string& name) const;
  const route_config* find_route(const std::string& name) const;
};

// Loads and validates. Relative fallback file paths resolve against the config file's folder.
app_config load_config(const std::string& path);
// Same, from text; `source_name` stands for the file in messages; relative paths resolve
// against `base_dir`.
app_config load_config_string(const std::string& yaml, const std::string& source_name = "<string>",
                              const std::string& base_dir = ".");

// Parses "250ms", "1s", "1.5s", "2m", "100us"; a bare number is milliseconds. Throws
// std::invalid_argument on anything else or a negative value.
std::chrono::milliseconds parse_duration(const std::string& text);

}  // namespace qos::config

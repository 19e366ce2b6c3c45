// Configuration of a qos server as plain structs, and the YAML loader (the only code that sees
// yaml-cpp). load_config validates everything once; a bad file throws config_error naming the
// file, line, column and key. Thread-safety: plain values; load_config is reentrant.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "qos/admission/options.hpp"
#include "qos/core/outcome.hpp"
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

// What happens to requests still parked in a queue when a drain (SIGTERM) begins.
enum class drain_mode : std::uint8_t {
  shed,   // answered at once with the route's `shutdown` fallback
  serve,  // may still be granted and served until shutdown_grace ends; then the fallback
};

// The loader bounds every number (config/qos.yaml gives the reasons): reactor_threads 1..255
// (Pistache's own limit), fiber_threads 1..256, max_pending_jobs 1..2^20, shutdown_grace
// <= 10m, drain_delay <= 5m, backlog 1..65535, max_connections 0..10^6, max_request_size
// 512..2^30, the timeouts (send_timeout too) 1s..24h, write_stall 0 or 100ms..1h. Groups and
// routes are bounded by validate() (admission/options.hpp, qos::bounds).
struct server_config {
  std::string address = "127.0.0.1";
  std::uint16_t port = 9080;                       // 0: any free port
  std::size_t reactor_threads = 2;                 // Pistache reactor threads
  std::size_t fiber_threads = 2;                   // OS threads running the fiber executor
  std::size_t max_pending_jobs = 16384;            // executor inbox; rounded up to a power of two
  std::chrono::milliseconds shutdown_grace{5000};  // running handlers get this long on stop
  std::size_t backlog = 4096;                      // listen backlog (somaxconn caps it)
  // Pistache endpoint options (qos::server only; a service with its own endpoint sets its
  // own). Defaults as nginx's client_header_timeout, client_body_timeout, keepalive_timeout,
  // send_timeout.
  std::size_t max_request_size = 64 * 1024;            // bytes, head and body
  std::chrono::milliseconds header_timeout{60000};     // a complete request head within this
  std::chrono::milliseconds body_timeout{60000};       // the body within this, once the head is in
  std::chrono::milliseconds keepalive_timeout{75000};  // an idle keep-alive connection's life
  // A client with 64 responses queued that reads none of them this long is torn down
  // (connection_options::send_timeout).
  std::chrono::milliseconds send_timeout{60000};
  // Open connections at most; 0: derived from the descriptor limit (RLIMIT_NOFILE) at start.
  std::size_t max_connections = 0;
  // The listener's watchdog against Pistache 0.0.5's busy write loop (defect 18): a reactor
  // that makes no progress this long has its connections whose socket is full shut down
  // (listener_options::write_stall). 0: no watchdog, and one client that does not read a large
  // answer freezes every connection of its reactor until it reads.
  std::chrono::milliseconds write_stall{1000};
  // On SIGTERM, how long /readyz answers 503 before the listener closes, so that a load
  // balancer stops sending first.
  std::chrono::milliseconds drain_delay{0};
  drain_mode drain_parked = drain_mode::shed;

  friend bool operator==(const server_config&, const server_config&) = default;
};

// The admin listener (`admin:`), separate from the public one: metrics, status, reload,
// health and readiness. Present only when the file configures it with a port. The loader
// refuses an address beyond loopback without a token source, and reads the token once.
struct admin_config {
  std::string address = "127.0.0.1";
  std::uint16_t port = 0;  // required in the file; 0: any free port (tests)
  // Where the bearer token comes from: at most one of them; both empty: no token.
  std::string token_file;
  std::string token_env;
  // The token itself, read at load: a file's content less one trailing line break, or the
  // variable's value; 1..4096 visible ASCII characters. Never printed (effective.hpp).
  std::string token;

  friend bool operator==(const admin_config&, const admin_config&) = default;
};

// Whether an address is reached only from this machine: 127.0.0.0/8, ::1 (also written
// ::ffff:127.x.y.z) or `localhost`. Anything else, the wildcards 0.0.0.0 and :: included, is not.
bool is_loopback_address(const std::string& address);

// How log lines are written: a readable line, or one JSON object per line.
enum class log_format : std::uint8_t { text, json };
// Where log lines go (YAML `stderr`, `stdout`; those words are macros in C++).
enum class log_sink : std::uint8_t { standard_error, standard_output };

// One line per guarded request (ops/access_log.hpp), sampled and rate-limited.
struct access_log_config {
  bool enabled = false;
  double sample = 1.0;             // fraction of requests logged, in (0, 1]
  std::size_t max_per_second = 0;  // lines per second, <= 10^6 (a token bucket); 0: unlimited

  friend bool operator==(const access_log_config&, const access_log_config&) = default;
};

struct logging_config {
  std::string level = "info";  // trace|debug|info|warn|error|critical|off; QOS_LOG_LEVEL wins
  log_format format = log_format::text;
  log_sink sink = log_sink::standard_error;
  access_log_config access_log;

  friend bool operator==(const logging_config&, const logging_config&) = default;
};

// A limit group: the admission options (limits, queue, adaptive limit, reserve, shadow; YAML
// keys map onto them, e.g. `queue.discipline` to limiter.discipline, `limit` to limit) and
// where it was declared.
struct group_config : group_options {
  int line = 0;
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

  friend bool operator==(const fallback_config&, const fallback_config&) = default;
};

// The fallbacks of a route. The rule is outcome_table's (core/outcome.hpp): a reason with an
// entry of its own uses it (keys it does not set come from the route-level response); a reason
// without one uses the response of the reason it inherits from (shed and rejected: queue_full;
// deadline and predicted_timeout: timeout; the others: the route-level response);
// exec_timeout's status is 504 unless its own entry sets one; error is a fixed 500.
struct fallback_set {
  fallback_config route;  // the keys directly under `fallback`
  std::array<std::optional<fallback_config>, outcome_count> own{};  // entries by reason

  friend bool operator==(const fallback_set&, const fallback_set&) = default;
};

// The response a reason without an entry of its own starts from: the route-level response,
// with the table's status for that reason.
fallback_config fallback_base(const fallback_config& route, outcome why);
// The response for every outcome, by the rule above (the gate calls it once per route).
std::array<fallback_config, outcome_count> resolve(const fallback_set& f);

// Client deadlines: the header is read as a duration ("800ms", "2s", a bare number is ms);
// grpc_timeout also reads `grpc-timeout` ("100m", "2S", units H M S m u n).
struct deadline_config {
  std::string header;         // empty: no header
  bool grpc_timeout = false;  // also honour grpc-timeout

  friend bool operator==(const deadline_config&, const deadline_config&) = default;
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

  friend bool operator==(const priority_config&, const priority_config&) = default;
};

// How a route meets its requests: `guard` (the default) runs the handler once admission grants a
// permit, the client waiting; `accept` stores the request durably, answers 202 Accepted with
// Location: /jobs/{id} once the store committed it, and a consumer runs the handler later
// under the same group (include/qos/jobs/consumer.hpp).
enum class route_mode : std::uint8_t { guard, accept };

// An accept route's settings (`accept:` under the route). Bounds are the loader's: max_depth
// 1..10^8, retry_after 0..3600 s, keep_headers at most 64 names, idempotency_retention
// 1m..30d, max_attempts 1..1000, backoff_base 1ms..1h, backoff_cap backoff_base..24h, lease
// 1s..1h, rate per_second (0, 10^6], burst 1..10^6.
struct accept_config {
  // Queued + running jobs of the route at most; beyond, `full_status` + Retry-After.
  std::size_t max_depth = 10000;
  int full_status = 503;  // 503 or 429
  // Retry-After seconds on the 202, and on GET /jobs/{id} while the job is pending.
  int retry_after_s = 1;
  // Request headers stored with the job, lowercase (Content-Type is always kept). The rest is
  // dropped: credentials are not written to the store unless listed.
  std::vector<std::string> keep_headers;
  // Header naming the tenant (as written in the file): idempotency keys are scoped per route
  // and per its value.
  std::string tenant_header;
  bool require_idempotency_key = false;  // a request without Idempotency-Key gets 400
  std::chrono::seconds idempotency_retention{24 * 3600};
  // Retries: capped exponential backoff with ±20 % jitter; after max_attempts, dead.
  int max_attempts = 5;
  std::chrono::milliseconds backoff_base{1000};
  std::chrono::milliseconds backoff_cap{300000};
  // A claimed job's lease (heartbeaten every lease/3; an expired one runs again elsewhere).
  std::chrono::milliseconds lease{30000};

  friend bool operator==(const accept_config&, const accept_config&) = default;
};

enum class job_store_kind : std::uint8_t { sqlite, postgres };
enum class sqlite_sync : std::uint8_t { full, normal };

// A steady rate for one group's consumer: a token bucket of claims.
struct job_rate_config {
  double per_second = 0;
  double burst = 1;

  friend bool operator==(const job_rate_config&, const job_rate_config&) = default;
};

// The durable job store of the accept routes and this process's part in it (`jobs:`; needed
// when a route has mode accept). Every key is restart-needed on reload. Bounds: group_commit
// 0..100ms, pool 1..256, store_threads 1..1024, max_pending 1..2^20, retention 1m..365d,
// prune_interval 1s..1d, poll_interval 10ms..1m, prefetch auto or 0..65536.
struct jobs_config {
  job_store_kind store = job_store_kind::sqlite;
  // sqlite: the database file (relative: against the config file's folder) and durability.
  std::string sqlite_path = "qos-jobs.db";
  sqlite_sync synchronous = sqlite_sync::full;
  std::chrono::microseconds group_commit{0};
  // Jobs a consumer leases ahead of its group's free permits (consumer_options::prefetch;
  // with postgres, ahead of the run slots it holds). nullopt: auto (the group's limit); 0: none.
  std::optional<std::size_t> prefetch;
  // postgres: a libpq connection string, given inline or read at load from the variable
  // conninfo_env (the file sets exactly one of the two; conninfo holds the string either way,
  // conninfo_env only the variable's name); pool: connections this process opens. Never
  // printed (effective.hpp): it may hold a password.
  std::string conninfo;
  std::string conninfo_env;
  std::size_t pool = 8;
  // Whether this process runs consumers for the accept routes (a gateway-only process: false).
  bool consume = true;
  // Threads making store calls for requests (enqueue, GET /jobs/{id}); requests beyond
  // max_pending waiting for one get 503.
  std::size_t store_threads = 32;
  std::size_t max_pending = 4096;
  std::chrono::seconds retention{7 * 24 * 3600};  // succeeded and dead jobs kept this long
  std::chrono::milliseconds prune_interval{60000};
  std::chrono::milliseconds poll_interval{1000};  // consumers look for work at least this often
  std::map<std::string, job_rate_config> rates;   // by group: a steady claim rate
  int line = 0;

  friend bool operator==(const jobs_config&, const jobs_config&) = default;
};

// A guarded route: its admission policy (group, max_wait, max_exec, cost, predictive_reject),
// what the HTTP edge reads from requests for it, its fallbacks, and where it was declared.
struct route_config : route_policy {
  deadline_config deadline;
  priority_config priority;
  fallback_set fallback;
  route_mode mode = route_mode::guard;
  accept_config accept;  // mode accept only
  int line = 0;
};

struct app_config {
  std::string source;  // file it was loaded from, or "<string>"
  server_config server;
  logging_config logging;
  std::optional<admin_config> admin;  // nullopt: no admin listener
  std::optional<jobs_config> jobs;    // nullopt: no job store (no accept route)
  std::vector<group_config> groups;
  std::vector<route_config> routes;

  const group_config* find_group(const std::string& name) const;
  const route_config* find_route(const std::string& name) const;
};

// Loads and validates. Relative fallback file paths resolve against the config file's folder.
// Any text either loads or throws config_error (std::bad_alloc aside; tests/fuzz/ checks it):
// an empty file, a YAML syntax error or nesting deeper than 64 levels (refused before the
// parser recurses) name the line too.
app_config load_config(const std::string& path);
// Same, from text; `source_name` stands for the file in messages; relative paths resolve
// against `base_dir`.
app_config load_config_string(const std::string& yaml, const std::string& source_name = "<string>",
                              const std::string& base_dir = ".");

// Parses "250ms", "1s", "1.5s", "2m", "100us"; a bare number is milliseconds. Throws
// std::invalid_argument on anything else or a negative value.
std::chrono::milliseconds parse_duration(const std::string& text);

}  // namespace qos::config

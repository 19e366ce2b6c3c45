// What a config reload would do, worked out before anything changes: the config that will run
// (the new one, except the settings that need a restart, which keep their running values), one
// line per setting that changes, and one per setting left as it was until a restart. A pure
// function of two configs: nothing here touches a running gate. Thread-safe (plain values).
//
// Applied by a reload (see qos::runtime::reload):
//   groups  max_concurrent, max_queue, queue.* (discipline, target, interval), aging_step,
//           reserve.*, limit.* (fixed <-> adaptive too; an adaptive limit whose settings change
//           restarts from its new limit.initial, as at startup), blocking_threads (the pool
//           grows; threads already started stay), shadow;
//   routes  max_wait, max_exec (only for a handler guarded with guard_result), cost,
//           predictive_reject, deadline.*, priority.*, fallback.*, and of an accept route
//           (the gate reads them per request) accept.max_depth, full_status, retry_after,
//           keep_headers, tenant_header, require_idempotency_key, idempotency_retention.
// Added groups and routes are accepted and listed, but nothing uses them before a restart:
// handlers are guarded at setup. Removing a route the code does not guard is accepted; it
// stays inert.
// Left unchanged until a restart (listed in restart_needed):
//   server.*  (listen address and port, reactor and fiber threads, the executor's inbox,
//              backlog, request size and timeouts, max_connections, write_stall,
//              shutdown_grace, and drain_delay and drain_parked, which the drain reads from
//              the startup config);
//   admin     (added, removed, address, port, token source or token: the listener is bound
//              and the token read at startup; a changed token is reported, never printed);
//   logging.* (level, format, sink, access log: the process's loggers are the application's);
//   jobs.*    (added, removed, or any key: the store is opened and the consumers started at
//              startup; a changed conninfo is reported, never printed);
//   a route's `group` (its requests would otherwise wait in one queue and run in another);
//   a route's `mode` (its handler was registered as guarded or accepting at setup);
//   an accept route's accept.max_attempts, backoff_base, backoff_cap and lease (its group's
//              consumer reads them when it starts);
//   a removed group that a kept route still uses (it runs on with its old settings).
// Refused (config_error, nothing changes): a config that fails validation; removing a route
// the code guards; max_exec on a route whose handler writes its own response (guard()); a
// route with mode accept and no `jobs:`, or a jobs.rates entry naming no group (code-built
// configs; the loader refuses both).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "qos/config/config.hpp"

namespace qos::config {

// How the code guards a route (gate().guard... at setup).
enum class guarded_as : std::uint8_t {
  writer,  // guard(): the handler writes its own response, so it cannot take max_exec
  result,  // guard_result(): the handler returns its response
};
using guarded_routes = std::map<std::string, guarded_as, std::less<>>;

struct reload_plan {
  app_config effective;                     // what runs once the reload is applied
  std::vector<std::string> changes;         // "group db: max_concurrent 8 -> 16"
  std::vector<std::string> restart_needed;  // "server.port 9080 -> 9090"
  bool empty() const noexcept { return changes.empty() && restart_needed.empty(); }
};

// Plans the move from `current` (the config running now) to `next` for a runtime whose code
// guards `guarded`. Validates `next` as the runtime's constructor would (every group and
// route in range, names unique, every route's group declared), so a config built in code is
// checked like a loaded one. Throws config_error, whose what() reads as the loader's
// ("<file>:<line>:<column>: <key>: <message>", with next.source as the file and the line of
// the group or route concerned), for a config that fails validation or a change a reload
// cannot make (see the top of this file).
reload_plan plan_reload(const app_config& current, const app_config& next,
                        const guarded_routes& guarded);

}  // namespace qos::config

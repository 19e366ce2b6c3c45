#include "qos/config/reload_plan.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <type_traits>

#include "qos/config/detail/names.hpp"

namespace qos::config {

namespace {

// Values as the YAML spells them, for the change lines.
std::string text(duration d) {
  using namespace std::chrono;
  const auto ns = duration_cast<nanoseconds>(d).count();
  if (ns != 0 && ns % 1'000'000'000 == 0) return std::to_string(ns / 1'000'000'000) + "s";
  if (ns % 1'000'000 == 0) return std::to_string(ns / 1'000'000) + "ms";
  if (ns % 1'000 == 0) return std::to_string(ns / 1'000) + "us";
  return std::to_string(ns) + "ns";
}
std::string text(std::chrono::milliseconds d) {
  return text(std::chrono::duration_cast<duration>(d));
}
std::string text(std::chrono::microseconds d) {
  return text(std::chrono::duration_cast<duration>(d));
}
std::string text(std::chrono::seconds d) {
  return text(std::chrono::duration_cast<duration>(d));
}
std::string text(const std::optional<duration>& d) {
  return d ? text(*d) : "none";
}
std::string text(const std::string& s) {
  return s.empty() ? "none" : "'" + s + "'";
}
std::string text(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}
std::string text(const std::vector<std::string>& names) {
  std::string out = "[";
  for (const auto& n : names) out += (out.size() == 1 ? "" : ", ") + n;
  return out + "]";
}
// jobs.prefetch: a count, or auto.
std::string text(const std::optional<std::size_t>& n) {
  return n ? std::to_string(*n) : std::string("auto");
}
std::string text(const job_rate_config& r) {
  return "per_second " + text(r.per_second) + ", burst " + text(r.burst);
}
template <typename E>
requires std::is_enum_v<E> std::string text(E v) {
  return std::string(detail::name(v));
}
template <class T>
requires std::is_integral_v<T> std::string text(T v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else {
    return std::to_string(static_cast<unsigned long long>(v));
  }
}

// Appends "<prefix><key> <before> -> <after>" to `out` when the values differ.
class differ {
 public:
  differ(std::vector<std::string>& out, std::string prefix)
      : out_(out), prefix_(std::move(prefix)) {}

  template <class T>
  bool operator()(std::string_view key, const T& before, const T& after) {
    if (before == after) return false;
    line(std::string(key) + " " + text(before) + " -> " + text(after));
    return true;
  }
  void line(const std::string& what) { out_.push_back(prefix_ + what); }

 private:
  std::vector<std::string>& out_;
  std::string prefix_;
};

bool same(const fallback_config& a, const fallback_config& b) {
  return a.status == b.status && a.retry_after_s == b.retry_after_s &&
         a.retry_after_auto == b.retry_after_auto && a.headers == b.headers && a.body == b.body &&
         a.content_type == b.content_type && a.file == b.file;
}

void diff_limit(differ& d, const std::optional<limit_options>& a,
                const std::optional<limit_options>& b, std::size_t max_concurrent) {
  if (!a && !b) return;
  if (!b) {
    d.line("limit " + text(a->kind) + " -> fixed (max_concurrent " + text(max_concurrent) + ")");
    return;
  }
  const std::string start = "starts at limit.initial " + text(b->initial);
  if (!a) {
    d.line("limit fixed -> " + text(b->kind) + " (min " + text(b->min) + ", max " + text(b->max) +
           "; " + start + ")");
    return;
  }
  bool changed = d("limit.algorithm", a->kind, b->kind);
  changed |= d("limit.min", a->min, b->min);
  changed |= d("limit.max", a->max, b->max);
  changed |= d("limit.initial", a->initial, b->initial);
  changed |= d("limit.backoff_ratio", a->backoff_ratio, b->backoff_ratio);
  changed |= d("limit.timeout", a->timeout, b->timeout);
  changed |= d("limit.rtt_tolerance", a->rtt_tolerance, b->rtt_tolerance);
  changed |= d("limit.smoothing", a->smoothing, b->smoothing);
  changed |= d("limit.long_window", a->long_window, b->long_window);
  changed |= d("limit.probe_interval", a->probe_interval, b->probe_interval);
  if (changed) d.line("limit: the algorithm " + start);
}

void diff_group(std::vector<std::string>& out, const group_config& a, const group_config& b) {
  differ d(out, "group " + a.name + ": ");
  const limiter_options& x = a.limiter;
  const limiter_options& y = b.limiter;
  d("max_concurrent", x.max_concurrent, y.max_concurrent);
  d("max_queue", x.max_queue, y.max_queue);
  d("queue.discipline", x.discipline, y.discipline);
  d("queue.target", x.target, y.target);
  d("queue.interval", x.interval, y.interval);
  d("aging_step", x.aging_step, y.aging_step);
  d("reserve.permits", x.reserve, y.reserve);
  d("reserve.priority", x.reserve_level, y.reserve_level);
  diff_limit(d, a.limit, b.limit, y.max_concurrent);
  d("blocking_threads", a.blocking_threads, b.blocking_threads);
  d("shadow", a.shadow, b.shadow);
}

// What the gate reads per request, so a reload applies it.
void diff_accept_applied(differ& d, const accept_config& a, const accept_config& b) {
  d("accept.max_depth", a.max_depth, b.max_depth);
  d("accept.full_status", a.full_status, b.full_status);
  d("accept.retry_after", a.retry_after_s, b.retry_after_s);
  d("accept.keep_headers", a.keep_headers, b.keep_headers);
  d("accept.tenant_header", a.tenant_header, b.tenant_header);
  d("accept.require_idempotency_key", a.require_idempotency_key, b.require_idempotency_key);
  d("accept.idempotency_retention", a.idempotency_retention, b.idempotency_retention);
}

// What the group's consumer reads when it starts.
void diff_accept_restart(differ& d, const accept_config& a, const accept_config& b) {
  d("accept.max_attempts", a.max_attempts, b.max_attempts);
  d("accept.backoff_base", a.backoff_base, b.backoff_base);
  d("accept.backoff_cap", a.backoff_cap, b.backoff_cap);
  d("accept.lease", a.lease, b.lease);
}

void diff_route(std::vector<std::string>& out, const route_config& a, const route_config& b) {
  differ d(out, "route " + a.name + ": ");
  d("max_wait", a.max_wait, b.max_wait);
  d("max_exec", a.max_exec, b.max_exec);
  d("cost", a.cost, b.cost);
  d("predictive_reject", a.predictive_reject, b.predictive_reject);
  d("deadline.header", a.deadline.header, b.deadline.header);
  d("deadline.grpc_timeout", a.deadline.grpc_timeout, b.deadline.grpc_timeout);
  d("priority.default", a.priority.default_level, b.priority.default_level);
  d("priority.header", a.priority.header, b.priority.header);
  if (a.priority.values != b.priority.values) {
    d.line("priority.values changed (" + text(a.priority.values.size()) + " -> " +
           text(b.priority.values.size()) + " entries)");
  }
  d("priority.raw_header", a.priority.raw_header, b.priority.raw_header);
  d("priority.raw_header_trusted", a.priority.raw_header_trusted, b.priority.raw_header_trusted);
  const auto before = resolve(a.fallback);
  const auto after = resolve(b.fallback);
  std::string reasons;
  for (const auto& row : outcome_table) {
    if (row.answer != answer_kind::fallback) continue;
    if (same(before[index(row.value)], after[index(row.value)])) continue;
    reasons += (reasons.empty() ? "" : ", ") + std::string(row.name);
  }
  if (!reasons.empty()) d.line("fallback changed for " + reasons);
  // A mode change keeps the running mode (plan_reload), so both are accept or neither.
  if (a.mode == route_mode::accept && b.mode == route_mode::accept) {
    diff_accept_applied(d, a.accept, b.accept);
  }
}

// The store is opened, and the consumers started, once at startup. The connection string is
// never written out (it may hold a password): only that it changed.
void diff_jobs(std::vector<std::string>& out, const std::optional<jobs_config>& a,
               const std::optional<jobs_config>& b) {
  if (!a && !b) return;
  if (!a || !b) {
    out.push_back(std::string("jobs: ") + (a ? "removed" : "added"));
    return;
  }
  differ d(out, "");
  // A store's own keys, only against the same store's: the other store's are not in force.
  if (!d("jobs.store", a->store, b->store)) {
    if (b->store == job_store_kind::sqlite) {
      d("jobs.sqlite_path", a->sqlite_path, b->sqlite_path);
      d("jobs.synchronous", a->synchronous, b->synchronous);
      d("jobs.group_commit", a->group_commit, b->group_commit);
      d("jobs.prefetch", a->prefetch, b->prefetch);
    } else {
      d("jobs.conninfo_env", a->conninfo_env, b->conninfo_env);
      if (a->conninfo != b->conninfo) d.line("jobs.conninfo changed");
      d("jobs.pool", a->pool, b->pool);
    }
  }
  d("jobs.consume", a->consume, b->consume);
  d("jobs.store_threads", a->store_threads, b->store_threads);
  d("jobs.max_pending", a->max_pending, b->max_pending);
  d("jobs.retention", a->retention, b->retention);
  d("jobs.prune_interval", a->prune_interval, b->prune_interval);
  d("jobs.poll_interval", a->poll_interval, b->poll_interval);
  for (const auto& [group, rate] : a->rates) {
    const auto it = b->rates.find(group);
    if (it == b->rates.end()) {
      d.line("jobs.rates." + group + " " + text(rate) + " -> none");
    } else {
      d("jobs.rates." + group, rate, it->second);
    }
  }
  for (const auto& [group, rate] : b->rates) {
    if (!a->rates.contains(group)) d.line("jobs.rates." + group + " none -> " + text(rate));
  }
}

void diff_server(std::vector<std::string>& out, const server_config& a, const server_config& b) {
  differ d(out, "");
  d("server.address", a.address, b.address);
  d("server.port", a.port, b.port);
  d("server.reactor_threads", a.reactor_threads, b.reactor_threads);
  d("server.fiber_threads", a.fiber_threads, b.fiber_threads);
  d("server.max_pending_jobs", a.max_pending_jobs, b.max_pending_jobs);
  d("server.shutdown_grace", a.shutdown_grace, b.shutdown_grace);
  d("server.backlog", a.backlog, b.backlog);
  d("server.max_request_size", a.max_request_size, b.max_request_size);
  d("server.header_timeout", a.header_timeout, b.header_timeout);
  d("server.body_timeout", a.body_timeout, b.body_timeout);
  d("server.keepalive_timeout", a.keepalive_timeout, b.keepalive_timeout);
  d("server.send_timeout", a.send_timeout, b.send_timeout);
  d("server.max_connections", a.max_connections, b.max_connections);
  d("server.write_stall", a.write_stall, b.write_stall);
  // The drain reads the config the server started with (server::shutdown).
  d("server.drain_delay", a.drain_delay, b.drain_delay);
  d("server.drain_parked", a.drain_parked, b.drain_parked);
}

// The admin listener is bound, and its token read, once at startup. The token itself is never
// written out: only that it changed.
void diff_admin(std::vector<std::string>& out, const std::optional<admin_config>& a,
                const std::optional<admin_config>& b) {
  if (!a && !b) return;
  if (!a || !b) {
    out.push_back(std::string("admin: ") + (a ? "removed" : "added"));
    return;
  }
  differ d(out, "");
  d("admin.address", a->address, b->address);
  d("admin.port", a->port, b->port);
  d("admin.token_file", a->token_file, b->token_file);
  d("admin.token_env", a->token_env, b->token_env);
  if (a->token != b->token) d.line("admin.token changed");
}

void diff_logging(std::vector<std::string>& out, const logging_config& a, const logging_config& b) {
  differ d(out, "");
  d("logging.level", a.level, b.level);
  d("logging.format", a.format, b.format);
  d("logging.sink", a.sink, b.sink);
  d("logging.access_log.enabled", a.access_log.enabled, b.access_log.enabled);
  d("logging.access_log.sample", a.access_log.sample, b.access_log.sample);
  d("logging.access_log.max_per_second", a.access_log.max_per_second, b.access_log.max_per_second);
}

std::string item(std::string_view list, std::size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

// What the runtime's constructor checks (admission), with the loader's way of saying it.
void validate_next(const app_config& next) {
  std::set<std::string, std::less<>> names;
  for (std::size_t i = 0; i < next.groups.size(); ++i) {
    const group_config& g = next.groups[i];
    if (!names.insert(g.name).second) {
      throw config_error(next.source, g.line, 0, item("groups", i) + ".name",
                         "duplicate group '" + g.name + "'");
    }
    try {
      validate(g);
    } catch (const invalid_option& e) {
      throw config_error(next.source, g.line, 0, item("groups", i) + "." + e.key(), e.message());
    }
  }
  names.clear();
  for (std::size_t i = 0; i < next.routes.size(); ++i) {
    const route_config& r = next.routes[i];
    if (!names.insert(r.name).second) {
      throw config_error(next.source, r.line, 0, item("routes", i) + ".name",
                         "duplicate route '" + r.name + "'");
    }
    const group_config* g = next.find_group(r.group);
    if (g == nullptr) {
      throw config_error(next.source, r.line, 0, item("routes", i) + ".group",
                         "unknown group '" + r.group + "'");
    }
    try {
      validate(r, *g);
    } catch (const invalid_option& e) {
      throw config_error(next.source, r.line, 0, item("routes", i) + "." + e.key(), e.message());
    }
    if (r.mode == route_mode::accept && !next.jobs) {
      throw config_error(next.source, r.line, 0, item("routes", i) + ".mode",
                         "mode accept needs a top-level `jobs:` section");
    }
  }
  if (next.jobs) {
    for (const auto& [group, rate] : next.jobs->rates) {
      if (next.find_group(group) == nullptr) {
        throw config_error(next.source, next.jobs->line, 0, "jobs.rates." + group,
                           "unknown group '" + group + "'");
      }
    }
  }
}

}  // namespace

reload_plan plan_reload(const app_config& current, const app_config& next,
                        const guarded_routes& guarded) {
  validate_next(next);
  reload_plan plan;
  plan.effective = next;
  app_config& eff = plan.effective;

  // Guarded routes must stay, and keep a response path that their handler supports.
  for (const auto& [name, how] : guarded) {
    // A named copy: clang 14 cannot capture a structured binding.
    const std::string& wanted = name;
    const auto it = std::find_if(next.routes.begin(), next.routes.end(),
                                 [&](const route_config& r) { return r.name == wanted; });
    if (it == next.routes.end()) {
      throw config_error(next.source, 0, 0, "routes",
                         "route '" + name +
                             "' is guarded by the code and cannot be removed by a reload "
                             "(remove it with a restart)");
    }
    if (how == guarded_as::writer && it->max_exec) {
      throw config_error(
          next.source, it->line, 0,
          item("routes", static_cast<std::size_t>(it - next.routes.begin())) + ".max_exec",
          "route '" + name +
              "' is guarded with a handler that writes its own response, whose "
              "late result cannot be discarded (guard it with guard_result)");
    }
  }

  // Settings a running gate cannot change keep their values.
  diff_server(plan.restart_needed, current.server, next.server);
  eff.server = current.server;
  diff_logging(plan.restart_needed, current.logging, next.logging);
  eff.logging = current.logging;
  diff_admin(plan.restart_needed, current.admin, next.admin);
  eff.admin = current.admin;
  diff_jobs(plan.restart_needed, current.jobs, next.jobs);
  eff.jobs = current.jobs;
  for (std::size_t i = 0; i < eff.routes.size(); ++i) {
    route_config& r = eff.routes[i];
    const route_config* was = current.find_route(r.name);
    if (was == nullptr) continue;
    // The handler was registered for its mode at setup (guard or accept), and the group's
    // consumer took its retry and lease settings when it started.
    differ later(plan.restart_needed, "route " + r.name + ": ");
    if (later("mode", was->mode, r.mode)) {
      r.mode = was->mode;
      r.accept = was->accept;
    } else if (r.mode == route_mode::accept) {
      diff_accept_restart(later, was->accept, r.accept);
      r.accept.max_attempts = was->accept.max_attempts;
      r.accept.backoff_base = was->accept.backoff_base;
      r.accept.backoff_cap = was->accept.backoff_cap;
      r.accept.lease = was->accept.lease;
    }
    if (was->group == r.group) continue;
    plan.restart_needed.push_back("route " + r.name + ": group " + text(was->group) + " -> " +
                                  text(r.group));
    r.group = was->group;
    if (eff.find_group(r.group) == nullptr) {
      // The group left the file but this route still runs in it: it runs on as it was.
      plan.restart_needed.push_back("group " + r.group + ": removed, but route " + r.name +
                                    " still uses it");
      eff.groups.push_back(*current.find_group(r.group));
    }
    const group_config& g = *eff.find_group(r.group);
    try {
      validate(r, g);
    } catch (const invalid_option& e) {
      throw config_error(next.source, r.line, 0, item("routes", i) + "." + e.key(),
                         e.message() + " (route '" + r.name + "' stays in group '" + r.group +
                             "' until a restart)");
    }
  }

  for (const group_config& g : eff.groups) {
    if (const group_config* was = current.find_group(g.name)) {
      diff_group(plan.changes, *was, g);
    } else {
      plan.changes.push_back("group " + g.name + ": added (no route uses it before a restart)");
    }
  }
  for (const group_config& g : current.groups) {
    if (eff.find_group(g.name) == nullptr) plan.changes.push_back("group " + g.name + ": removed");
  }
  for (const route_config& r : eff.routes) {
    if (const route_config* was = current.find_route(r.name)) {
      diff_route(plan.changes, *was, r);
    } else {
      plan.changes.push_back("route " + r.name + ": added (no handler guards it before a restart)");
    }
  }
  for (const route_config& r : current.routes) {
    if (eff.find_route(r.name) == nullptr) {
      plan.changes.push_back("route " + r.name + ": removed");
    }
  }
  return plan;
}

}  // namespace qos::config

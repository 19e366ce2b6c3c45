// The effective configuration: the YAML printer (yaml-cpp's emitter, so quoting is the
// parser's own), its hash, the summary for people, and the warnings with their reasons.
#include "qos/config/effective.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string_view>
#include <system_error>
#include <utility>

#include "qos/config/detail/names.hpp"

namespace qos::config {

namespace {

namespace fs = std::filesystem;

std::uint64_t fnv1a64(std::string_view bytes) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string hex64(std::uint64_t v) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) out[static_cast<std::size_t>(i)] = digits[v & 0xf];
  return out;
}

template <typename Rep, typename Period>
std::string ms(std::chrono::duration<Rep, Period> d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + "ms";
}

std::string us(std::chrono::microseconds d) {
  return std::to_string(d.count()) + "us";
}

std::string secs(std::chrono::seconds d) {
  return std::to_string(d.count()) + "s";
}

// The shortest text that reads back as the same double.
std::string number(double v) {
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, ec == std::errc() ? end : buf);
}

// A path as the loader would resolve it from another folder.
std::string absolute(const std::string& path) {
  std::error_code ec;
  const fs::path p = fs::absolute(path, ec);
  return ec ? path : p.lexically_normal().string();
}

using detail::name;

// ---------------------------------------------------------------------------------------------
// YAML

// Free text is always double-quoted: "null", "true", "" or "80" must come back as the same
// string, and the loader reads any scalar as a string where it expects one.
YAML::Emitter& text(YAML::Emitter& e, const std::string& s) {
  return e << YAML::DoubleQuoted << s;
}

void key(YAML::Emitter& e, const char* k) {
  e << YAML::Key << k << YAML::Value;
}

void emit_server(YAML::Emitter& e, const server_config& s) {
  key(e, "server");
  e << YAML::BeginMap;
  key(e, "address");
  text(e, s.address);
  key(e, "port");
  e << s.port;
  key(e, "reactor_threads");
  e << s.reactor_threads;
  key(e, "fiber_threads");
  e << s.fiber_threads;
  key(e, "max_pending_jobs");
  e << s.max_pending_jobs;
  key(e, "shutdown_grace");
  e << ms(s.shutdown_grace);
  key(e, "drain_delay");
  e << ms(s.drain_delay);
  key(e, "drain_parked");
  e << std::string(name(s.drain_parked));
  key(e, "backlog");
  e << s.backlog;
  key(e, "max_connections");
  e << s.max_connections;
  key(e, "max_request_size");
  e << s.max_request_size;
  key(e, "header_timeout");
  e << ms(s.header_timeout);
  key(e, "body_timeout");
  e << ms(s.body_timeout);
  key(e, "keepalive_timeout");
  e << ms(s.keepalive_timeout);
  key(e, "send_timeout");
  e << ms(s.send_timeout);
  key(e, "write_stall");
  e << ms(s.write_stall);
  e << YAML::EndMap;
}

void emit_logging(YAML::Emitter& e, const logging_config& l) {
  key(e, "logging");
  e << YAML::BeginMap;
  key(e, "level");
  e << l.level;
  key(e, "format");
  e << std::string(name(l.format));
  key(e, "sink");
  e << std::string(name(l.sink));
  key(e, "access_log");
  e << YAML::BeginMap;
  key(e, "enabled");
  e << l.access_log.enabled;
  key(e, "sample");
  e << number(l.access_log.sample);
  key(e, "max_per_second");
  e << l.access_log.max_per_second;
  e << YAML::EndMap << YAML::EndMap;
}

void emit_admin(YAML::Emitter& e, const admin_config& a) {
  key(e, "admin");
  e << YAML::BeginMap;
  key(e, "address");
  text(e, a.address);
  key(e, "port");
  e << a.port;
  if (!a.token_file.empty()) {
    key(e, "token_file");
    text(e, absolute(a.token_file));
  }
  if (!a.token_env.empty()) {
    key(e, "token_env");
    text(e, a.token_env);
  }
  e << YAML::EndMap;
}

// What stands for an inline connection string, which may hold a password.
constexpr const char* conninfo_placeholder = "<set>";

void emit_jobs(YAML::Emitter& e, const jobs_config& j) {
  key(e, "jobs");
  e << YAML::BeginMap;
  key(e, "store");
  e << std::string(name(j.store));
  if (j.store == job_store_kind::sqlite) {
    key(e, "sqlite_path");
    text(e, absolute(j.sqlite_path));
    key(e, "synchronous");
    e << std::string(name(j.synchronous));
    key(e, "group_commit");
    e << us(j.group_commit);
  } else {
    if (!j.conninfo_env.empty()) {
      key(e, "conninfo_env");
      text(e, j.conninfo_env);
    } else {
      key(e, "conninfo");
      text(e, conninfo_placeholder);
      e << YAML::Comment("not printed: it may hold a password");
    }
    key(e, "pool");
    e << j.pool;
  }
  key(e, "consume");
  e << j.consume;
  key(e, "store_threads");
  e << j.store_threads;
  key(e, "max_pending");
  e << j.max_pending;
  key(e, "retention");
  e << secs(j.retention);
  key(e, "prune_interval");
  e << ms(j.prune_interval);
  key(e, "poll_interval");
  e << ms(j.poll_interval);
  key(e, "prefetch");
  if (j.prefetch) {
    e << *j.prefetch;
  } else {
    e << "auto";
  }
  key(e, "rates");
  if (j.rates.empty()) e << YAML::Flow;
  e << YAML::BeginMap;
  for (const auto& [group, rate] : j.rates) {
    e << YAML::Key;
    text(e, group);
    e << YAML::Value << YAML::Flow << YAML::BeginMap;
    key(e, "per_second");
    e << number(rate.per_second);
    key(e, "burst");
    e << number(rate.burst);
    e << YAML::EndMap;
  }
  e << YAML::EndMap;
  e << YAML::EndMap;
}

void emit_accept(YAML::Emitter& e, const accept_config& a) {
  key(e, "accept");
  e << YAML::BeginMap;
  key(e, "max_depth");
  e << a.max_depth;
  key(e, "full_status");
  e << a.full_status;
  key(e, "retry_after");
  e << a.retry_after_s;
  key(e, "keep_headers");
  e << YAML::Flow << YAML::BeginSeq;
  for (const auto& h : a.keep_headers) text(e, h);
  e << YAML::EndSeq;
  if (!a.tenant_header.empty()) {
    key(e, "tenant_header");
    text(e, a.tenant_header);
  }
  key(e, "require_idempotency_key");
  e << a.require_idempotency_key;
  key(e, "idempotency_retention");
  e << secs(a.idempotency_retention);
  key(e, "max_attempts");
  e << a.max_attempts;
  key(e, "backoff_base");
  e << ms(a.backoff_base);
  key(e, "backoff_cap");
  e << ms(a.backoff_cap);
  key(e, "lease");
  e << ms(a.lease);
  e << YAML::EndMap;
}

void emit_group(YAML::Emitter& e, const group_config& g) {
  const limiter_options& l = g.limiter;
  e << YAML::BeginMap;
  key(e, "name");
  text(e, g.name);
  key(e, "max_concurrent");
  e << l.max_concurrent;
  key(e, "max_queue");
  e << l.max_queue;
  key(e, "blocking_threads");
  e << g.blocking_threads;
  if (g.limit) {
    const limit_options& o = *g.limit;
    key(e, "limit");
    e << YAML::BeginMap;
    key(e, "algorithm");
    e << std::string(name(o.kind));
    key(e, "min");
    e << o.min;
    key(e, "max");
    e << o.max;
    key(e, "initial");
    e << o.initial;
    // Only the parameters of its algorithm: the loader refuses the others.
    if (o.kind == limit_kind::aimd) {
      key(e, "backoff_ratio");
      e << number(o.backoff_ratio);
      key(e, "timeout");
      e << ms(o.timeout);
    }
    if (o.kind == limit_kind::gradient2) {
      key(e, "rtt_tolerance");
      e << number(o.rtt_tolerance);
      key(e, "smoothing");
      e << number(o.smoothing);
      key(e, "long_window");
      e << o.long_window;
    }
    if (o.kind == limit_kind::gradient2 || o.kind == limit_kind::vegas) {
      key(e, "probe_interval");
      e << ms(o.probe_interval);
    }
    e << YAML::EndMap;
  }
  key(e, "queue");
  e << YAML::BeginMap;
  key(e, "discipline");
  e << std::string(name(l.discipline));
  if (l.discipline == queue_discipline::codel) {
    key(e, "target");
    e << ms(l.target);
  }
  if (l.discipline != queue_discipline::fifo) {
    key(e, "interval");
    e << ms(l.interval);
  }
  e << YAML::EndMap;
  key(e, "aging_step");
  e << ms(l.aging_step);
  if (l.reserve != 0) {
    key(e, "reserve");
    e << YAML::Flow << YAML::BeginMap;
    key(e, "permits");
    e << l.reserve;
    key(e, "priority");
    e << static_cast<int>(l.reserve_level);
    e << YAML::EndMap;
  }
  key(e, "shadow");
  e << g.shadow;
  e << YAML::EndMap;
}

// Every key of a response, so that a per-reason entry read back inherits nothing.
void emit_fallback_keys(YAML::Emitter& e, const fallback_config& f) {
  key(e, "status");
  e << f.status;
  key(e, "retry_after");
  if (f.retry_after_auto) {
    e << "auto";
  } else if (f.retry_after_s) {
    e << *f.retry_after_s;
  } else {
    e << "none";
  }
  key(e, "headers");
  if (f.headers.empty()) e << YAML::Flow;
  e << YAML::BeginMap;
  for (const auto& [name, value] : f.headers) {
    e << YAML::Key;
    text(e, name);
    e << YAML::Value;
    text(e, value);
  }
  e << YAML::EndMap;
  if (f.file.empty()) {
    key(e, "body");
    text(e, f.body);
  } else {
    key(e, "file");
    text(e, absolute(f.file));
    // The bytes in force, so that the hash changes when the file does.
    e << YAML::Comment(std::to_string(f.body.size()) + " bytes, fnv1a64 " + hex64(fnv1a64(f.body)));
  }
  key(e, "content_type");
  text(e, f.content_type);
}

void emit_route(YAML::Emitter& e, const route_config& r) {
  e << YAML::BeginMap;
  key(e, "name");
  text(e, r.name);
  key(e, "group");
  text(e, r.group);
  key(e, "mode");
  e << std::string(name(r.mode));
  if (r.mode == route_mode::accept) emit_accept(e, r.accept);
  key(e, "max_wait");
  e << ms(r.max_wait);
  if (r.max_exec) {
    key(e, "max_exec");
    e << ms(*r.max_exec);
  }
  key(e, "cost");
  e << r.cost;
  key(e, "predictive_reject");
  e << r.predictive_reject;
  key(e, "deadline");
  e << YAML::BeginMap;
  if (!r.deadline.header.empty()) {
    key(e, "header");
    text(e, r.deadline.header);
  }
  key(e, "grpc_timeout");
  e << r.deadline.grpc_timeout;
  e << YAML::EndMap;
  const priority_config& p = r.priority;
  key(e, "priority");
  e << YAML::BeginMap;
  key(e, "default");
  e << static_cast<int>(p.default_level);
  if (!p.header.empty()) {
    key(e, "header");
    text(e, p.header);
    key(e, "values");
    if (p.values.empty()) e << YAML::Flow;
    e << YAML::BeginMap;
    for (const auto& [value, level] : p.values) {
      e << YAML::Key;
      text(e, value);
      e << YAML::Value << static_cast<int>(level);
    }
    e << YAML::EndMap;
  }
  if (!p.raw_header.empty()) {
    key(e, "raw_header");
    text(e, p.raw_header);
  }
  key(e, "raw_header_trusted");
  e << p.raw_header_trusted;
  e << YAML::EndMap;
  key(e, "fallback");
  e << YAML::BeginMap;
  emit_fallback_keys(e, r.fallback.route);
  for (const auto& row : outcome_table) {
    if (const auto& own = r.fallback.own[index(row.value)]) {
      e << YAML::Key << std::string(row.name) << YAML::Value << YAML::BeginMap;
      emit_fallback_keys(e, *own);
      e << YAML::EndMap;
    }
  }
  e << YAML::EndMap;
  e << YAML::EndMap;
}

}  // namespace

std::string effective_yaml(const app_config& cfg) {
  YAML::Emitter e;
  e << YAML::BeginMap;
  emit_server(e, cfg.server);
  emit_logging(e, cfg.logging);
  if (cfg.admin) emit_admin(e, *cfg.admin);
  if (cfg.jobs) emit_jobs(e, *cfg.jobs);
  key(e, "groups");
  e << YAML::BeginSeq;
  for (const auto& g : cfg.groups) emit_group(e, g);
  e << YAML::EndSeq;
  key(e, "routes");
  e << YAML::BeginSeq;
  for (const auto& r : cfg.routes) emit_route(e, r);
  e << YAML::EndSeq;
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

std::string config_hash(const app_config& cfg) {
  return hex64(fnv1a64(effective_yaml(cfg)));
}

// ---------------------------------------------------------------------------------------------
// Summary

namespace {

// A body on one line, cut at 60 bytes, control and non-ASCII bytes escaped.
std::string preview(const fallback_config& f) {
  if (!f.file.empty()) return "file " + f.file + " (" + std::to_string(f.body.size()) + " bytes)";
  std::string out = "'";
  for (std::size_t i = 0; i < f.body.size() && i < 60; ++i) {
    const auto c = static_cast<unsigned char>(f.body[i]);
    if (c < 0x20 || c >= 0x7f) {
      out += "\\x" + hex64(c).substr(14);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + (f.body.size() > 60 ? "...'" : "'");
}

std::string describe_limit(const group_config& g) {
  if (!g.limit) return "fixed " + std::to_string(g.limiter.max_concurrent);
  const limit_options& o = *g.limit;
  std::string out = "adaptive " + std::string(name(o.kind)) + " " + std::to_string(o.min) + ".." +
                    std::to_string(o.max) + " from " + std::to_string(o.initial);
  if (o.kind == limit_kind::aimd) {
    out += " (backoff_ratio " + number(o.backoff_ratio) + ", timeout " + ms(o.timeout) + ")";
  } else if (o.kind == limit_kind::gradient2) {
    out += " (rtt_tolerance " + number(o.rtt_tolerance) + ", smoothing " + number(o.smoothing) +
           ", long_window " + std::to_string(o.long_window) + ", probe_interval " +
           ms(o.probe_interval) + ")";
  } else if (o.kind == limit_kind::vegas) {
    out += " (probe_interval " + ms(o.probe_interval) + ")";
  }
  return out;
}

std::string describe_queue(const limiter_options& l) {
  std::string out(name(l.discipline));
  if (l.discipline == queue_discipline::codel) {
    out += " (target " + ms(l.target) + ", interval " + ms(l.interval) + ")";
  } else if (l.discipline == queue_discipline::adaptive_lifo) {
    out += " (interval " + ms(l.interval) + ")";
  }
  return out;
}

std::string describe_priority(const priority_config& p) {
  std::string out = "default " + std::to_string(p.default_level);
  if (!p.header.empty()) {
    out += "; header " + p.header + ":";
    if (p.values.empty()) out += " (no values)";
    for (const auto& [value, level] : p.values) {
      out += " " + value + "=" + std::to_string(level);
    }
  }
  if (!p.raw_header.empty()) {
    out += "; raw header " + p.raw_header +
           (p.raw_header_trusted ? " (trusted)" : " (ignored: raw_header_trusted is false)");
  }
  return out;
}

}  // namespace

std::string summary(const app_config& cfg) {
  std::ostringstream o;
  const server_config& s = cfg.server;
  o << "server: " << s.address << ":" << s.port << ", " << s.reactor_threads
    << " reactor thread(s), " << s.fiber_threads << " fiber thread(s), max_pending_jobs "
    << s.max_pending_jobs << ", backlog " << s.backlog << ", max_connections "
    << (s.max_connections == 0 ? std::string("from the descriptor limit")
                               : std::to_string(s.max_connections))
    << "\n  max_request_size " << s.max_request_size << " B, header_timeout "
    << ms(s.header_timeout) << ", body_timeout " << ms(s.body_timeout) << ", keepalive_timeout "
    << ms(s.keepalive_timeout) << ", send_timeout " << ms(s.send_timeout) << ", write_stall "
    << (s.write_stall == std::chrono::milliseconds::zero() ? std::string("off") : ms(s.write_stall))
    << "\n  drain: drain_delay " << ms(s.drain_delay) << ", parked requests "
    << (s.drain_parked == drain_mode::serve ? "served" : "shed") << ", shutdown_grace "
    << ms(s.shutdown_grace) << "\n";
  if (cfg.admin) {
    const admin_config& a = *cfg.admin;
    o << "admin: " << a.address << ":" << a.port << ", token "
      << (!a.token_file.empty()  ? "from file " + a.token_file
          : !a.token_env.empty() ? "from environment variable " + a.token_env
                                 : std::string("none"))
      << "\n";
  } else {
    o << "admin: off\n";
  }
  const logging_config& l = cfg.logging;
  o << "logging: level " << l.level << ", " << name(l.format) << " to " << name(l.sink)
    << ", access log ";
  if (l.access_log.enabled) {
    o << "on (sample " << number(l.access_log.sample) << ", "
      << (l.access_log.max_per_second == 0
              ? std::string("no rate limit")
              : std::to_string(l.access_log.max_per_second) + " lines/s at most")
      << ")\n";
  } else {
    o << "off\n";
  }
  if (cfg.jobs) {
    const jobs_config& j = *cfg.jobs;
    o << "jobs: store " << name(j.store) << " ";
    if (j.store == job_store_kind::sqlite) {
      o << j.sqlite_path << " (synchronous " << name(j.synchronous) << ", group_commit "
        << us(j.group_commit) << ")";
    } else {
      o << (j.conninfo_env.empty() ? std::string("(conninfo in the file)")
                                   : "(conninfo from environment variable " + j.conninfo_env + ")")
        << ", pool " << j.pool;
    }
    o << ", prefetch " << (j.prefetch ? std::to_string(*j.prefetch) : std::string("auto"));
    o << ", " << (j.consume ? "consumers here" : "no consumer here (gateway only)")
      << "\n  store_threads " << j.store_threads << ", max_pending " << j.max_pending
      << ", retention " << secs(j.retention) << " (pruned every " << ms(j.prune_interval)
      << "), poll_interval " << ms(j.poll_interval);
    for (const auto& [group, rate] : j.rates) {
      o << "\n  group " << group << ": at most " << number(rate.per_second) << " jobs/s, burst "
        << number(rate.burst);
    }
    o << "\n";
  } else {
    o << "jobs: off\n";
  }
  std::size_t parked = 0;
  for (const auto& g : cfg.groups) {
    const limiter_options& lim = g.limiter;
    parked += lim.max_queue;
    o << "group " << g.name << ": limit " << describe_limit(g) << ", max_queue " << lim.max_queue
      << ", queue " << describe_queue(lim) << ", aging "
      << (lim.aging_step == duration::zero() ? std::string("off")
                                             : "one level per " + ms(lim.aging_step))
      << ", reserve "
      << (lim.reserve == 0 ? std::string("none")
                           : std::to_string(lim.reserve) +
                                 " for priority >= " + std::to_string(lim.reserve_level))
      << ", blocking_threads "
      << (g.blocking_threads != 0 ? std::to_string(g.blocking_threads)
                                  : std::to_string(g.most_permits()) +
                                        " (0: the most permits "
                                        "the group may grant)")
      << (g.shadow ? ", SHADOW (counts only, lets everything through)" : "") << "\n";
  }
  for (const auto& r : cfg.routes) {
    o << "route " << r.name << " -> group " << r.group
      << (r.mode == route_mode::accept ? " (accept)" : "") << ": max_wait " << ms(r.max_wait)
      << ", max_exec " << (r.max_exec ? ms(*r.max_exec) : std::string("none")) << ", cost "
      << r.cost << ", predictive_reject " << (r.predictive_reject ? "on" : "off") << "\n";
    if (r.mode == route_mode::accept) {
      const accept_config& a = r.accept;
      o << "  accept: 202 + Location /jobs/{id}, Retry-After " << a.retry_after_s << "; at most "
        << a.max_depth << " queued or running, then " << a.full_status << "; keeps content-type";
      for (const auto& h : a.keep_headers) o << ", " << h;
      o << "; Idempotency-Key " << (a.require_idempotency_key ? "required" : "optional")
        << ", kept " << secs(a.idempotency_retention)
        << (a.tenant_header.empty() ? std::string() : ", per " + a.tenant_header)
        << "\n    runs: " << a.max_attempts << " attempt(s), backoff " << ms(a.backoff_base)
        << " doubling up to " << ms(a.backoff_cap) << ", lease " << ms(a.lease) << "\n";
    }
    o << "  priority: " << describe_priority(r.priority) << "\n";
    o << "  deadline: ";
    if (r.deadline.header.empty() && !r.deadline.grpc_timeout) o << "none";
    if (!r.deadline.header.empty()) o << "header " << r.deadline.header;
    if (r.deadline.grpc_timeout) o << (r.deadline.header.empty() ? "" : ", ") << "grpc-timeout";
    o << "\n  fallbacks:\n";
    const auto all = resolve(r.fallback);
    for (const auto& row : outcome_table) {
      if (row.answer == answer_kind::handler) continue;
      const fallback_config& f = all[index(row.value)];
      std::string retry = "none";
      if (f.retry_after_auto) {
        retry = "auto";
      } else if (f.retry_after_s) {
        retry = std::to_string(*f.retry_after_s);
      }
      std::string from = "route-level";
      if (row.answer == answer_kind::internal) {
        from = "fixed";
      } else if (r.fallback.own[index(row.value)]) {
        from = "own entry";
      } else if (row.inherits != row.value && r.fallback.own[index(row.inherits)]) {
        from = "from " + std::string(traits(row.inherits).name);
      }
      std::string pad(row.name.size() < 18 ? 18 - row.name.size() : 1, ' ');
      o << "    " << row.name << pad << f.status << " retry-after " << retry << ", "
        << f.content_type << ", " << preview(f);
      for (const auto& [name, value] : f.headers) o << ", " << name << ": " << value;
      o << " [" << from << "]\n";
    }
  }
  o << "parked requests at most " << parked << " (about " << (parked * 9 + 1023) / 1024
    << " MiB of fiber stacks)\n";
  return o.str();
}

// ---------------------------------------------------------------------------------------------
// Warnings

namespace {

std::string at(const char* list, std::size_t i, std::string_view rest) {
  return std::string(list) + "[" + std::to_string(i) + "]" +
         (rest.empty() ? "" : "." + std::string(rest));
}

// The highest level a request of this route can have: priority rules only (the reserve is
// checked against a request's own level, not its aged claim; limiter.cpp).
priority highest_level(const priority_config& p) {
  priority top = p.default_level;
  for (const auto& [value, level] : p.values) top = std::max(top, level);
  if (!p.raw_header.empty() && p.raw_header_trusted) top = max_priority;
  return top;
}

// Whether a libpq connection string carries a password: a `password=` keyword, or a URI whose
// user part has one (postgresql://user:secret@host/db).
bool holds_password(const std::string& conninfo) {
  std::string lower = conninfo;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower.find("password") != std::string::npos) return true;
  for (const std::string_view scheme : {"postgresql://", "postgres://"}) {
    if (!std::string_view(lower).starts_with(scheme)) continue;
    const std::string_view rest = std::string_view(lower).substr(scheme.size());
    const std::size_t at = rest.find('@');
    const std::size_t end = rest.find_first_of("/?");
    return at != rest.npos && (end == rest.npos || at < end) &&
           rest.substr(0, at).find(':') != rest.npos;
  }
  return false;
}

// Kubernetes' default terminationGracePeriodSeconds: a drain longer than this is cut by
// SIGKILL unless the pod raises it (systemd's DefaultTimeoutStopSec, 90 s, is looser).
constexpr auto supervisor_patience = std::chrono::seconds(30);

}  // namespace

std::vector<config_warning> warnings(const app_config& cfg, const check_facts& facts) {
  struct {
    std::vector<config_warning> out;
    void add(std::string key, int line, std::string message) {
      out.push_back({std::move(key), line, std::move(message)});
    }
  } w;
  const server_config& s = cfg.server;
  const bool public_beyond_loopback = !is_loopback_address(s.address);

  if (s.drain_delay + s.shutdown_grace > supervisor_patience) {
    w.add(
        s.drain_delay > std::chrono::milliseconds::zero() ? "server.drain_delay"
                                                          : "server.shutdown_grace",
        0,
        "a drain may take drain_delay + shutdown_grace = " + ms(s.drain_delay + s.shutdown_grace) +
            ", longer than Kubernetes waits by default (terminationGracePeriodSeconds 30s) "
            "before SIGKILL; raise the supervisor's stop timeout to match (systemd: "
            "TimeoutStopSec, 90s by default)");
  }

  // Nothing else ends Pistache 0.0.5's busy write loop (defect 18) but the client reading.
  if (s.write_stall == std::chrono::milliseconds::zero()) {
    w.add("server.write_stall", 0,
          "0 turns the write-stall watchdog off: one client that does not read a large answer "
          "holds its reactor thread in Pistache's busy write loop, and every other connection "
          "of that reactor waits until the client reads it (README, \"Known limits\")");
  }

  if (cfg.admin && !cfg.admin->token_file.empty()) {
    std::error_code ec;
    const auto perms = fs::status(cfg.admin->token_file, ec).permissions();
    if (!ec && (perms & (fs::perms::group_read | fs::perms::others_read)) != fs::perms::none) {
      w.add("admin.token_file", 0,
            cfg.admin->token_file +
                " is readable by other users: anyone who reads it can reload the config and "
                "read the admin endpoints (chmod 600)");
    }
  }

  if (cfg.jobs) {
    const jobs_config& j = *cfg.jobs;
    if (j.store == job_store_kind::sqlite && j.synchronous == sqlite_sync::normal) {
      w.add("jobs.synchronous", j.line,
            "synchronous normal: a job answered 202 survives a crash of the process, not a "
            "power loss or an operating-system crash, which may lose the last commits (full "
            "waits for the disk on every commit)");
    }
    if (j.store == job_store_kind::postgres && j.conninfo_env.empty() &&
        holds_password(j.conninfo)) {
      w.add("jobs.conninfo", j.line,
            "the connection string holds a password, readable by anyone who reads this file; "
            "pass it through conninfo_env (or a ~/.pgpass file) instead");
    }
    for (const auto& [group, rate] : j.rates) {
      // A named copy: clang 14 cannot capture a structured binding.
      const std::string& wanted = group;
      const bool queued = std::any_of(cfg.routes.begin(), cfg.routes.end(), [&](const auto& r) {
        return r.group == wanted && r.mode == route_mode::accept;
      });
      if (!queued) {
        w.add("jobs.rates." + group, j.line,
              "no route of group '" + group + "' has mode accept: this rate limits nothing");
      }
    }
  }

  for (std::size_t i = 0; i < cfg.groups.size(); ++i) {
    const group_config& g = cfg.groups[i];
    const bool used = std::any_of(cfg.routes.begin(), cfg.routes.end(),
                                  [&](const route_config& r) { return r.group == g.name; });
    if (!used) {
      w.add(at("groups", i, "name"), g.line,
            "no route uses group '" + g.name + "' (a misspelt group in a route?)");
    }
    if (g.shadow) {
      w.add(at("groups", i, "shadow"), g.line,
            "shadow mode: group '" + g.name +
                "' only counts what it would queue or shed and lets every request through, so "
                "it protects nothing");
    }
    // A reserve no request of the group can claim only takes capacity from everyone.
    const limiter_options& l = g.limiter;
    if (l.reserve != 0 && used) {
      priority top = 0;
      for (const auto& r : cfg.routes) {
        if (r.group == g.name) top = std::max(top, highest_level(r.priority));
      }
      if (top < l.reserve_level) {
        w.add(at("groups", i, "reserve.priority"), g.line,
              std::to_string(l.reserve) +
                  " permit(s) are reserved for priority >= " + std::to_string(l.reserve_level) +
                  ", but no route of group '" + g.name + "' gives a request a level above " +
                  std::to_string(top) + ": the reserve is never used and lowers everyone's limit");
      }
    }
  }

  for (std::size_t i = 0; i < cfg.routes.size(); ++i) {
    const route_config& r = cfg.routes[i];
    const group_config* g = cfg.find_group(r.group);
    if (g == nullptr) continue;  // the loader refuses it; code-built configs may not
    const limiter_options& l = g->limiter;

    // A job's lease is heartbeaten while its handler runs: without max_exec a handler that
    // hangs holds the job "running", and a permit, until the process stops; nothing retries it.
    if (r.mode == route_mode::accept && !r.max_exec) {
      w.add(at("routes", i, "max_exec"), r.line,
            "accept route without max_exec: a job whose handler hangs stays running, holding "
            "its lease and a permit of group '" +
                r.group + "', until the process stops (set max_exec to fail and retry it)");
    }

    // Client-controlled priority on a listener others can reach: a client picks its own level.
    if (public_beyond_loopback && !r.priority.raw_header.empty() && r.priority.raw_header_trusted) {
      w.add(at("routes", i, "priority.raw_header_trusted"), r.line,
            "the public listener is bound to " + s.address + " and " + r.priority.raw_header +
                " is trusted: any client reaching it sets its own priority; trust it only "
                "behind a proxy that sets or strips the header");
    }
    priority top_value = 0;
    for (const auto& [value, level] : r.priority.values) top_value = std::max(top_value, level);
    if (public_beyond_loopback && top_value > r.priority.default_level) {
      w.add(at("routes", i, "priority.values"), r.line,
            "the public listener is bound to " + s.address + " and " + r.priority.header +
                " values raise a request's priority: safe only when the values are secrets "
                "(API keys) or a proxy sets the header");
    }

    // max_wait against the group's service time, when it is known (the file has no estimate:
    // it is learnt from served requests). With N permits held for S each, one returns every
    // S / N on average, so within max_wait only about N * max_wait / S waiters are served and
    // the rest of the queue waits in vain; below S the route mostly relies on luck.
    if (auto it = facts.service_time.find(r.group); it != facts.service_time.end()) {
      const auto service = it->second;
      if (service > std::chrono::milliseconds::zero() && r.max_wait < service) {
        const double served = static_cast<double>(l.max_concurrent) *
                              std::chrono::duration<double>(r.max_wait).count() /
                              std::chrono::duration<double>(service).count();
        w.add(at("routes", i, "max_wait"), r.line,
              "max_wait " + ms(r.max_wait) + " is shorter than group '" + r.group +
                  "''s service time " + ms(service) + ": only about " +
                  std::to_string(static_cast<long long>(served)) + " of its " +
                  std::to_string(l.max_queue) + " queue places can be served before they time out");
      }
    }
    // Durations the file itself gives for the group's queue, which act only on a waiter that
    // waits at least that long.
    if (l.discipline == queue_discipline::codel && l.target >= r.max_wait) {
      w.add(at("routes", i, "max_wait"), r.line,
            "max_wait " + ms(r.max_wait) + " is not longer than group '" + r.group +
                "''s codel target " + ms(l.target) +
                ": its waiters time out before CoDel could shed them, so the discipline never "
                "acts on this route");
    }
    if (l.aging_step > duration::zero() && l.aging_step >= r.max_wait) {
      w.add(at("routes", i, "max_wait"), r.line,
            "max_wait " + ms(r.max_wait) + " is not longer than group '" + r.group +
                "''s aging_step " + ms(l.aging_step) +
                ": its waiters never age a level, so the starvation guard cannot help them");
    }

    // Retry-After: 0 on a shed sends clients straight back into the overload that shed them.
    const auto all = resolve(r.fallback);
    std::string immediate;
    for (const auto& row : outcome_table) {
      const fallback_config& f = all[index(row.value)];
      if (row.shed && !f.retry_after_auto && f.retry_after_s == 0) {
        immediate += (immediate.empty() ? "" : ", ") + std::string(row.name);
      }
    }
    if (!immediate.empty()) {
      w.add(at("routes", i, "fallback.retry_after"), r.line,
            "Retry-After: 0 on " + immediate +
                " asks clients to retry at once, into the overload that turned them away (use "
                "a few seconds or auto)");
    }
  }
  return std::move(w.out);
}

std::string format_warning(const app_config& cfg, const config_warning& w) {
  std::string out = cfg.source;
  if (w.line > 0) out += ":" + std::to_string(w.line);
  return out + ": warning: " + w.key + ": " + w.message;
}

}  // namespace qos::config

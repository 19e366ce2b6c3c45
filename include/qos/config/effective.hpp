// The effective configuration, as qos-check, the example's --check and the admin status show
// it: every setting with its default filled in (as YAML that load_config_string reads back to
// the same settings, and as a summary for people), a stable hash of it, and the warnings about
// settings that load but are risky. Pure functions of an app_config; thread-safe.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "qos/config/config.hpp"

namespace qos::config {

// The whole configuration as YAML, defaults filled in, in a fixed key order. Loading it gives
// the same settings as `cfg` (not the same provenance: source and line numbers differ). A
// fallback body read from a file is printed as that file's absolute path (resolved against the
// current directory, like the loader) with a comment holding a hash of the bytes, and so is
// jobs.sqlite_path. The admin token is never printed, only where it comes from; nor is a
// PostgreSQL connection string (it may hold a password): conninfo_env's name is printed, or
// `conninfo: "<set>"` for one written in the file, which therefore does not read back to the
// same setting, and which config_hash does not cover.
std::string effective_yaml(const app_config& cfg);

// FNV-1a 64 of effective_yaml, as 16 lowercase hex digits: equal settings give equal hashes
// whatever the file's layout, comments or key order, and a changed fallback file changes it.
std::string config_hash(const app_config& cfg);

// effective_yaml for people: each group's limit, queue and extras, each route's wait,
// priority rules, deadline, accept settings and the response every outcome gets (resolve()),
// the server, admin, logging and job store settings. For a terminal; the format may change.
std::string summary(const app_config& cfg);

// A setting that loads but is likely to hurt in production.
struct config_warning {
  std::string key;  // YAML path, e.g. "routes[0].max_wait", "server.address"
  int line = 0;     // of the group or route it is about; 0: none (a server or admin key)
  std::string message;
};

// What a running server (or an operator) knows beyond the file.
struct check_facts {
  // Average service time per group (how long a permit is held), e.g. from /qos/status. The
  // file has no estimate of it: the group controller learns it from served requests.
  std::map<std::string, std::chrono::milliseconds, std::less<>> service_time;
};

// The warnings, in the order of the file (server, admin, groups, routes). Each rule and its
// reason is in effective.cpp.
std::vector<config_warning> warnings(const app_config& cfg, const check_facts& facts = {});

// "<file>:<line>: warning: <key>: <message>" (no line when it has none).
std::string format_warning(const app_config& cfg, const config_warning& w);

}  // namespace qos::config

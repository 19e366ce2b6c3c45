#include "qos/log.hpp"

#include <cstdlib>

#include <spdlog/spdlog.h>

namespace qos {

void setup_logging(const std::string& level) {
  std::string wanted = level;
  if (const char* env = std::getenv("QOS_LOG_LEVEL"); env != nullptr && *env != '\0') {
    wanted = env;
  }
  auto lvl = spdlog::level::from_str(wanted);
  // from_str answers "off" for anything it does not know; only "off" itself means off.
  if (lvl == spdlog::level::off && wanted != "off") {
    spdlog::warn("qos: unknown log level '{}', using info", wanted);
    lvl = spdlog::level::info;
  }
  spdlog::set_level(lvl);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
}

void log_startup_summary(const config::app_config& cfg) {
  spdlog::info(
      "qos: config {}: {} group(s), {} route(s); {} reactor thread(s), {} fiber "
      "thread(s)",
      cfg.source, cfg.groups.size(), cfg.routes.size(), cfg.server.reactor_threads,
      cfg.server.fiber_threads);
  for (const auto& g : cfg.groups) {
    spdlog::info("qos: group '{}': max_concurrent={} max_queue={} blocking_threads={}", g.name,
                 g.max_concurrent, g.max_queue,
                 g.blocking_threads != 0 ? g.blocking_threads : g.max_concurrent);
  }
  for (const auto& r : cfg.routes) {
    const auto& p = r.priority;
    std::string prio = "default " + std::to_string(p.default_level);
    if (!p.header.empty()) {
      prio += ", " + p.header + " → " + std::to_string(p.values.size()) + " value(s)";
    }
    if (!p.raw_header.empty()) {
      prio += ", raw " + p.raw_header + (p.raw_header_trusted ? " (trusted)" : " (ignored)");
    }
    spdlog::info("qos: route '{}': group '{}' max_wait={}ms priority [{}] fallback {}", r.name,
                 r.group, r.max_wait.count(), prio, r.fallback.any.status);
  }
}

}  // namespace qos

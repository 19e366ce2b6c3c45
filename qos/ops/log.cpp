#include "qos/ops/log.hpp"

#include <algorithm>
#include <cstdlib>

#include <spdlog/spdlog.h>

namespace qos {

namespace {
long long ms(duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}
}  // namespace

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
  static constexpr const char* disciplines[] = {"fifo", "codel", "adaptive_lifo"};
  static constexpr const char* algorithms[] = {"fixed", "aimd", "gradient2", "vegas"};
  for (const auto& g : cfg.groups) {
    const std::size_t most = g.most_permits();
    std::string limit = std::to_string(g.limiter.max_concurrent);
    if (g.limit) {
      const auto& o = *g.limit;
      limit = std::string(algorithms[static_cast<int>(o.kind)]) + " " + std::to_string(o.min) +
              ".." + std::to_string(o.max) + " from " + std::to_string(o.initial);
    }
    spdlog::info(
        "qos: group '{}': limit {} max_queue={} queue={} aging_step={}ms "
        "blocking_threads={}{}{}",
        g.name, limit, g.limiter.max_queue, disciplines[static_cast<int>(g.limiter.discipline)],
        ms(g.limiter.aging_step), g.blocking_threads != 0 ? g.blocking_threads : most,
        g.limiter.reserve == 0 ? std::string()
                               : " reserve=" + std::to_string(g.limiter.reserve) +
                                     " for priority >= " + std::to_string(g.limiter.reserve_level),
        g.shadow ? " SHADOW (counts only, lets everything through)" : "");
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
    std::string extra;
    if (r.cost != 1) extra += " cost=" + std::to_string(r.cost);
    if (r.max_exec) extra += " max_exec=" + std::to_string(ms(*r.max_exec)) + "ms";
    if (!r.deadline.header.empty()) extra += " deadline_header=" + r.deadline.header;
    if (r.deadline.grpc_timeout) extra += " grpc-timeout";
    if (r.predictive_reject) extra += " predictive_reject";
    spdlog::info("qos: route '{}': group '{}' max_wait={}ms priority [{}] fallback {}{}", r.name,
                 r.group, ms(r.max_wait), prio, r.fallback.route.status, extra);
  }
}

}  // namespace qos

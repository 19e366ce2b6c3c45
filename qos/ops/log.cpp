#include "qos/ops/log.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "qos/ops/detail/log_format.hpp"

namespace qos {

namespace {

long long ms(duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// The logger in use: a raw pointer, so that logger() is one load. Release on store, acquire on
// load: a thread that sees the pointer sees the logger it points to fully built. The object
// is kept alive by logger_state::used.
constinit std::atomic<spdlog::logger*> current_logger{nullptr};

struct logger_state {
  std::mutex mutex;  // serialises installing a logger; guards the members below
  // Every logger qos has written through: a thread that loaded one before it was replaced may
  // still be using it, so none is ever released.
  std::vector<std::shared_ptr<spdlog::logger>> used;
  // The logger qos registered with spdlog itself, if any: the only entry of the registry qos
  // may drop.
  spdlog::logger* registered = nullptr;
};

// Never destroyed: threads may still log while static objects are destroyed at exit.
logger_state& state() {
  static auto* s = new logger_state;
  return *s;
}

// Drops from spdlog's registry the logger qos registered itself, if it is still there.
void unregister_own(logger_state& s) {
  if (s.registered == nullptr) return;
  const std::string name = s.registered->name();
  if (spdlog::get(name).get() == s.registered) spdlog::drop(name);
  s.registered = nullptr;
}

spdlog::logger* publish(logger_state& s, std::shared_ptr<spdlog::logger> l) {
  spdlog::logger* raw = l.get();
  if (std::find(s.used.begin(), s.used.end(), l) == s.used.end()) s.used.push_back(std::move(l));
  current_logger.store(raw, std::memory_order_release);
  return raw;
}

// The logger of first use (see logger()). `s.mutex` held.
spdlog::logger* install_default(logger_state& s) {
  std::shared_ptr<spdlog::logger> l = spdlog::get("qos");
  if (!l) {
    auto made = std::make_shared<spdlog::logger>(
        "qos", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    try {
      // The registry's level, pattern, flush level and error handler; registers it too,
      // unless the application turned automatic registration off.
      spdlog::initialize_logger(made);
      if (spdlog::get("qos") == made) s.registered = made.get();
      l = std::move(made);
    } catch (const spdlog::spdlog_ex&) {
      // The application registered a "qos" meanwhile: use it.
      l = spdlog::get("qos");
      if (!l) l = std::move(made);
    }
  }
  return publish(s, std::move(l));
}

}  // namespace

spdlog::logger* logger() noexcept {
  if (auto* l = current_logger.load(std::memory_order_acquire)) return l;
  logger_state& s = state();
  const std::lock_guard lock(s.mutex);
  if (auto* l = current_logger.load(std::memory_order_acquire)) return l;
  return install_default(s);
}

void set_logger(std::shared_ptr<spdlog::logger> l) {
  logger_state& s = state();
  const std::lock_guard lock(s.mutex);
  unregister_own(s);
  if (!l) {
    install_default(s);
    return;
  }
  publish(s, std::move(l));
}

void setup_logging(const config::logging_config& cfg) {
  std::string wanted = cfg.level;
  if (const char* env = std::getenv("QOS_LOG_LEVEL"); env != nullptr && *env != '\0') {
    wanted = env;
  }
  auto lvl = spdlog::level::from_str(wanted);
  // from_str answers "off" for anything it does not know; only "off" itself means off.
  const bool unknown = lvl == spdlog::level::off && wanted != "off";
  if (unknown) lvl = spdlog::level::info;

  auto l = std::make_shared<spdlog::logger>(
      "qos", detail::make_console_sink(cfg.sink, cfg.format, detail::payload_kind::message));
  l->set_level(lvl);
  {
    logger_state& s = state();
    const std::lock_guard lock(s.mutex);
    unregister_own(s);
    try {
      spdlog::register_logger(l);
      s.registered = l.get();
    } catch (const spdlog::spdlog_ex&) {
      // The application registered a "qos" of its own: leave the registry to it.
    }
    publish(s, l);
  }
  if (unknown) l->warn("qos: unknown log level '{}', using info", wanted);
}

void setup_logging(const std::string& level) {
  config::logging_config cfg;
  cfg.level = level;
  setup_logging(cfg);
}

void log_startup_summary(const config::app_config& cfg) {
  logger()->info(
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
    logger()->info(
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
    logger()->info("qos: route '{}': group '{}' max_wait={}ms priority [{}] fallback {}{}", r.name,
                   r.group, ms(r.max_wait), prio, r.fallback.route.status, extra);
  }
}

}  // namespace qos

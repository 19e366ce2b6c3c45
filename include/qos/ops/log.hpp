// The library's logger (spdlog, named "qos"), the set-up an application may ask qos for, and
// the startup summary. The core never logs; the edges do, through logger(). qos never changes
// spdlog's default logger, global level or pattern. All functions are thread-safe.
#pragma once

#include <memory>
#include <string>

#include <spdlog/logger.h>

#include "qos/config/config.hpp"

namespace qos {

// The logger qos writes through. Until the application sets one, the first call makes it:
// named "qos", on stderr, with spdlog's global level and pattern as the application left them
// (spdlog::set_level, set_pattern), and registered with spdlog (spdlog::get("qos"),
// SPDLOG_LEVEL=qos=debug with spdlog::cfg). If a logger named "qos" is registered already, the
// first call uses that one. After the first call: one atomic load, no lock, no reference count.
spdlog::logger* logger() noexcept;

// qos writes through `l` from now on; nullptr starts over as at first use. spdlog's registry is
// left to the application (a logger qos registered itself is dropped from it). Every logger
// once used is kept until exit, because a thread may still be writing through the previous
// one: meant for set-up, not for each request.
void set_logger(std::shared_ptr<spdlog::logger> l);

// For an application that lets qos set its logging up from the `logging` section: a new "qos"
// logger with `cfg.level` (the QOS_LOG_LEVEL environment variable wins; an unknown value
// means info, with a warning), on `cfg.sink` in `cfg.format`, installed with set_logger() and
// registered with spdlog unless the application registered a "qos" of its own. The access log
// (ops/access_log.hpp) takes the same sink and format from `cfg`. Nothing else changes.
void setup_logging(const config::logging_config& cfg);
// The same with `level` and the defaults for the rest (stderr, text).
void setup_logging(const std::string& level);

// One line per group and per route: limits, waits, priority rules, fallback statuses.
void log_startup_summary(const config::app_config& cfg);

}  // namespace qos

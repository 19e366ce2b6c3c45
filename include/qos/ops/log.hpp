// Logging set-up (spdlog) and the startup summary. The core never logs; the edges do.
// Call setup_logging once, before other threads start.
#pragma once

#include <string>

#include "qos/config/config.hpp"

namespace qos {

// Sets the default logger's level from `level`, unless QOS_LOG_LEVEL is set, which wins.
// Unknown values fall back to info with a warning.
void setup_logging(const std::string& level);

// One line per group and per route: limits, waits, priority rules, fallback statuses.
void log_startup_summary(const config::app_config& cfg);

}  // namespace qos

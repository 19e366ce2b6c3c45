// The config checker's command line (`qos-check`, and the example's `--check`): loads a file
// with the server's loader and reports on it. One implementation, so both say the same thing
// and exit the same way. Thread-safe apart from the streams it writes.
#pragma once

#include <functional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "qos/config/config.hpp"

namespace qos::config {

// Exit statuses, as `nginx -t` and `haproxy -c`: 0 valid, 2 invalid. Warnings alone keep 0
// unless --strict makes them 1.
inline constexpr int check_ok = 0;
inline constexpr int check_warned = 1;
inline constexpr int check_invalid = 2;  // also an unreadable file and a usage error

// args (without the program name): FILE [--strict] [--print-effective]
// [--service-time GROUP=DURATION]... | --version | --help. Writes the summary (or, with
// --print-effective, the effective YAML) to `out`; errors and warnings to `err`, an error as
// the loader words it ("<file>:<line>:<column>: <key>: <message>"). `extra` is the
// application's own check of a loaded config: it throws config_error like the loader.
int check_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
                  std::string_view program = "qos-check",
                  const std::function<void(const app_config&)>& extra = {});

}  // namespace qos::config

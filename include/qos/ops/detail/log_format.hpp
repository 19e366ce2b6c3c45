// The line formats shared by the qos logger and the access log (text, JSON lines) and the
// console sinks they write to. Not for users: ops/log.hpp and ops/access_log.hpp build on it.
// Thread-safety: free functions without state; the formatters are spdlog's (one per sink).
#pragma once

#include <memory>
#include <string_view>

#include <spdlog/common.h>
#include <spdlog/formatter.h>

#include "qos/config/config.hpp"

namespace qos::detail {

// Appends `text` as the inside of a JSON string: quote, backslash and control characters
// escaped, valid UTF-8 copied as it is, and each byte of an invalid UTF-8 sequence replaced by
// U+FFFD, so that any input (a client's path) gives a line every JSON parser accepts.
void append_json_string(spdlog::memory_buf_t& out, std::string_view text);

// What a logger's messages are: a message, or (the access log) a line already laid out:
// space-separated words for text, JSON members ("key":value,...) for json.
enum class payload_kind { message, record };

// text: "<ISO 8601 local time with offset> <level> <message>" (a record: no level);
// json: {"time":"<ISO 8601 UTC>","level":...,"logger":...,"msg":"<message>"} per line (a
// record: its members in place of "msg").
std::unique_ptr<spdlog::formatter> make_formatter(config::log_format format, payload_kind payload);

// A sink on stderr or stdout (colours for text on a terminal) with make_formatter's format.
spdlog::sink_ptr make_console_sink(config::log_sink sink, config::log_format format,
                                   payload_kind payload);

}  // namespace qos::detail

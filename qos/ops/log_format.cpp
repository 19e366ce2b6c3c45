#include "qos/ops/detail/log_format.hpp"

#include <cstdint>
#include <utility>

#include <spdlog/details/log_msg.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>

namespace qos::detail {

namespace {

void append(spdlog::memory_buf_t& out, std::string_view text) {
  out.append(text.data(), text.data() + text.size());
}

// The length of the valid UTF-8 sequence at the start of `s` (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF), or 0 when it is not one.
std::size_t utf8_length(std::string_view s) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto in = [](unsigned char c, unsigned char lo, unsigned char hi) {
    return c >= lo && c <= hi;
  };
  const unsigned char lead = byte(0);
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xbf;  // the range of the second byte
  if (in(lead, 0xc2, 0xdf)) {
    n = 2;
  } else if (in(lead, 0xe0, 0xef)) {
    n = 3;
    if (lead == 0xe0) lo = 0xa0;  // overlong
    if (lead == 0xed) hi = 0x9f;  // surrogates
  } else if (in(lead, 0xf0, 0xf4)) {
    n = 4;
    if (lead == 0xf0) lo = 0x90;  // overlong
    if (lead == 0xf4) hi = 0x8f;  // above U+10FFFF
  } else {
    return 0;
  }
  if (s.size() < n || !in(byte(1), lo, hi)) return 0;
  for (std::size_t i = 2; i < n; ++i) {
    if (!in(byte(i), 0x80, 0xbf)) return 0;
  }
  return n;
}

// %* : the message as the inside of a JSON string.
class json_message_flag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    append_json_string(dest, std::string_view(msg.payload.data(), msg.payload.size()));
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<json_message_flag>();
  }
};

// %& : the logger's name as the inside of a JSON string (an application names its loggers).
class json_name_flag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    append_json_string(dest, std::string_view(msg.logger_name.data(), msg.logger_name.size()));
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<json_name_flag>();
  }
};

}  // namespace

void append_json_string(spdlog::memory_buf_t& out, std::string_view text) {
  static constexpr char hex[] = "0123456789abcdef";
  std::size_t run = 0;  // start of the bytes not yet copied
  std::size_t i = 0;
  const auto flush = [&] { append(out, text.substr(run, i - run)); };
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      if (const std::size_t n = utf8_length(text.substr(i)); n != 0) {
        i += n;
        continue;
      }
    }
    flush();
    switch (c) {
      case '"':
        append(out, "\\\"");
        break;
      case '\\':
        append(out, "\\\\");
        break;
      case '\n':
        append(out, "\\n");
        break;
      case '\r':
        append(out, "\\r");
        break;
      case '\t':
        append(out, "\\t");
        break;
      default:
        if (c < 0x20) {
          const char escaped[] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};
          append(out, std::string_view(escaped, sizeof escaped));
        } else {
          append(out, "\\ufffd");  // a byte of no valid UTF-8 sequence
        }
    }
    run = ++i;
  }
  flush();
}

std::unique_ptr<spdlog::formatter> make_formatter(config::log_format format, payload_kind payload) {
  const bool record = payload == payload_kind::record;
  if (format == config::log_format::text) {
    return std::make_unique<spdlog::pattern_formatter>(record ? "%Y-%m-%dT%H:%M:%S.%e%z %v"
                                                              : "%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  }
  // JSON lines carry UTC: machines read them, and a zone offset per line buys nothing.
  auto f = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  f->add_flag<json_message_flag>('*').add_flag<json_name_flag>('&');
  f->set_pattern(record
                     ? R"({"time":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l","logger":"%&",%v})"
                     : R"({"time":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l","logger":"%&","msg":"%*"})");
  return f;
}

spdlog::sink_ptr make_console_sink(config::log_sink sink, config::log_format format,
                                   payload_kind payload) {
  const bool out = sink == config::log_sink::standard_output;
  spdlog::sink_ptr s;
  if (format == config::log_format::text) {
    // Colours only when the stream is a terminal; on a pipe or file the lines stay plain.
    if (out) {
      s = std::make_shared<spdlog::sinks::stdout_color_sink_mt>();
    } else {
      s = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    }
  } else if (out) {
    s = std::make_shared<spdlog::sinks::stdout_sink_mt>();
  } else {
    s = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  }
  s->set_formatter(make_formatter(format, payload));
  return s;
}

}  // namespace qos::detail

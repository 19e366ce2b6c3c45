#include "qos/ops/access_log.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "qos/ops/detail/log_format.hpp"

namespace qos {

namespace {

constexpr std::int64_t ns_per_second = 1'000'000'000;

std::int64_t to_ns(time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

double to_ms(duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

const config::access_log_config& checked(const config::access_log_config& o) {
  if (!(o.sample > 0 && o.sample <= 1)) {
    throw std::invalid_argument("access_log.sample must be in (0, 1], got " +
                                std::to_string(o.sample));
  }
  return o;
}

// A thread's sample draws: xorshift64*, seeded once per thread from a shared counter (spread by
// splitmix64). Plain thread-local state: drawing writes nothing another thread reads.
std::uint64_t draw() noexcept {
  static std::atomic<std::uint64_t> threads{0};
  thread_local std::uint64_t x = 0;  // constant-initialised: no guard on the hot path
  if (x == 0) {
    std::uint64_t z = (threads.fetch_add(1, std::memory_order_relaxed) + 1) * 0x9e3779b97f4a7c15;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
    x = (z ^ (z >> 31)) | 1;
  }
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  return x * 0x2545f4914f6cdd1d;
}

// A word of the text line: printable ASCII other than backslash as it is, anything else as
// \xHH, so that a client's path can neither split the line nor forge another one.
void append_word(spdlog::memory_buf_t& out, std::string_view text) {
  if (text.empty()) {
    out.push_back('-');
    return;
  }
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c > 0x20 && c < 0x7f && c != '\\') {
      out.push_back(ch);
    } else {
      fmt::format_to(std::back_inserter(out), "\\x{:02x}", c);
    }
  }
}

void append_json(spdlog::memory_buf_t& out, std::string_view key, std::string_view value) {
  fmt::format_to(std::back_inserter(out), "\"{}\":\"", key);
  detail::append_json_string(out, value);
  out.push_back('"');
}

}  // namespace

access_log::access_log(const config::logging_config& cfg)
    : access_log(cfg.access_log, cfg.format,
                 detail::make_console_sink(cfg.sink, cfg.format, detail::payload_kind::record)) {}

access_log::access_log(const config::access_log_config& options, config::log_format format,
                       spdlog::sink_ptr sink)
    : enabled_(checked(options).enabled),
      sample_all_(options.sample >= 1),
      sample_below_(static_cast<std::uint64_t>(std::ldexp(options.sample, 53))),
      // A rate above one line per nanosecond is no limit.
      interval_ns_(options.max_per_second == 0 || options.max_per_second > ns_per_second
                       ? 0
                       : ns_per_second / static_cast<std::int64_t>(options.max_per_second)),
      burst_ns_(interval_ns_ * static_cast<std::int64_t>(options.max_per_second)),
      format_(format),
      logger_(std::make_shared<spdlog::logger>("qos.access", std::move(sink))) {
  logger_->set_formatter(detail::make_formatter(format, detail::payload_kind::record));
  // Lines are written at info and never filtered by level: `enabled` alone decides.
  logger_->set_level(spdlog::level::info);
}

access_log::~access_log() {
  flush();
}

bool access_log::admit(time_point now) noexcept {
  if (!enabled_) return false;
  if (!sample_all_ && (draw() >> 11) >= sample_below_) return false;
  const std::int64_t now_ns = to_ns(now);
  if (interval_ns_ != 0) {
    // Take a token: the schedule moves one interval on from now or from where it stands; a
    // schedule more than a bucket ahead of now means the bucket is empty.
    std::int64_t full_at = full_at_ns_.load(std::memory_order_relaxed);
    std::int64_t next = 0;
    do {
      next = std::max(full_at, now_ns) + interval_ns_;
      if (next - now_ns > burst_ns_) {
        count_drop(now_ns);
        return false;
      }
    } while (!full_at_ns_.compare_exchange_weak(full_at, next, std::memory_order_relaxed));
    if (dropped_.load(std::memory_order_relaxed) != 0) maybe_report(now_ns);
  }
  return true;
}

void access_log::count_drop(std::int64_t now_ns) noexcept {
  // The first drop after a report opens a window: its report is due a second later, so a
  // burst is reported as one count, not as "1 dropped" and then the rest.
  if (dropped_.fetch_add(1, std::memory_order_relaxed) == 0) {
    report_due_ns_.store(now_ns + ns_per_second, std::memory_order_relaxed);
  } else {
    maybe_report(now_ns);
  }
}

void access_log::maybe_report(std::int64_t now_ns) noexcept {
  std::int64_t due = report_due_ns_.load(std::memory_order_relaxed);
  if (now_ns < due) return;
  // One thread wins the report; the others see the new due time.
  if (!report_due_ns_.compare_exchange_strong(due, now_ns + ns_per_second,
                                              std::memory_order_relaxed)) {
    return;
  }
  if (const std::uint64_t n = dropped_.exchange(0, std::memory_order_relaxed); n != 0) report(n);
}

void access_log::flush() noexcept {
  if (const std::uint64_t n = dropped_.exchange(0, std::memory_order_relaxed); n != 0) report(n);
}

void access_log::report(std::uint64_t dropped) noexcept {
  try {
    if (format_ == config::log_format::json) {
      logger_->info("\"msg\":\"{} access log lines dropped\",\"dropped\":{}", dropped, dropped);
    } else {
      logger_->info("{} access log lines dropped", dropped);
    }
  } catch (...) {
  }
}

void access_log::write(const access_record& r) noexcept {
  try {
    spdlog::memory_buf_t out;
    auto it = std::back_inserter(out);
    if (format_ == config::log_format::json) {
      append_json(out, "method", r.method);
      out.push_back(',');
      append_json(out, "path", r.path);
      fmt::format_to(it, ",\"status\":{},\"outcome\":\"{}\",", r.status, to_string(r.result));
      append_json(out, "route", r.route);
      fmt::format_to(it,
                     ",\"priority\":{},\"waited_ms\":{:.3f},\"handled_ms\":{:.3f},\"bytes\":{},",
                     r.level, to_ms(r.waited), to_ms(r.handled), r.bytes);
      append_json(out, "peer", r.peer);
    } else {
      append_word(out, r.method);
      out.push_back(' ');
      append_word(out, r.path);
      fmt::format_to(it, " {} {} route=", r.status, to_string(r.result));
      append_word(out, r.route);
      fmt::format_to(it, " priority={} waited_ms={:.3f} handled_ms={:.3f} bytes={} peer=", r.level,
                     to_ms(r.waited), to_ms(r.handled), r.bytes);
      append_word(out, r.peer);
    }
    logger_->log(spdlog::level::info, spdlog::string_view_t(out.data(), out.size()));
  } catch (...) {
    // A line that cannot be written (no memory) is not worth failing the request for.
  }
}

}  // namespace qos

#include "qos/http/detail/client_headers.hpp"

#include <charconv>
#include <cstdint>
#include <string>

#include "qos/config/config.hpp"

namespace qos::detail {

namespace {

template <class D>
duration saturated(D d) {
  if (d > max_client_budget) return std::chrono::duration_cast<duration>(max_client_budget);
  return std::chrono::duration_cast<duration>(d);
}

}  // namespace

std::optional<duration> parse_timeout_header(std::string_view text) noexcept {
  try {
    return saturated(config::parse_duration(std::string(text)));
  } catch (...) {
    return std::nullopt;
  }
}

std::optional<duration> parse_grpc_timeout(std::string_view v) noexcept {
  if (v.size() < 2 || v.size() > 9) return std::nullopt;
  std::int64_t n = 0;  // at most 8 digits: no overflow
  for (std::size_t i = 0; i + 1 < v.size(); ++i) {
    if (v[i] < '0' || v[i] > '9') return std::nullopt;
    n = n * 10 + (v[i] - '0');
  }
  using namespace std::chrono;
  switch (v.back()) {
    case 'H':
      return saturated(hours(n));
    case 'M':
      return saturated(minutes(n));
    case 'S':
      return saturated(seconds(n));
    case 'm':
      return saturated(milliseconds(n));
    case 'u':
      return saturated(microseconds(n));
    case 'n':
      return saturated(nanoseconds(n));
    default:
      return std::nullopt;
  }
}

std::optional<priority> parse_priority_level(std::string_view v) noexcept {
  // Unsigned: std::from_chars then takes digits only. Into an int it reads a sign, and "-0" is
  // a valid int that would pass the range check.
  unsigned level = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), level);
  if (ec != std::errc{} || end != v.data() + v.size() || level > max_priority) {
    return std::nullopt;
  }
  return static_cast<priority>(level);
}

}  // namespace qos::detail

// libFuzzer harness of the client header parsers (deadline, grpc-timeout, raw priority). They
// are noexcept, so a throw inside terminates; beyond that: every value they return is within
// its bounds, and values they return read back the same when written out again.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "qos/http/detail/client_headers.hpp"

namespace {

using namespace std::chrono_literals;
using qos::duration;
using qos::detail::max_client_budget;

void require(bool ok, const char* what, std::string_view input) {
  if (ok) return;
  std::fprintf(stderr, "headers_fuzz: %s for input '%.*s'\n", what, static_cast<int>(input.size()),
               input.data());
  std::abort();
}

bool in_budget(duration d) {
  return d >= duration::zero() && d <= max_client_budget;
}

// The deadline header's value: whole milliseconds (finer inputs round down, a positive value
// below 1 ms reads 1 ms), and "<n>ms" reads back as itself.
void timeout_header(std::string_view text) {
  const std::optional<duration> d = qos::detail::parse_timeout_header(text);
  if (!d) return;
  require(in_budget(*d), "timeout header out of [0, max_client_budget]", text);
  require(*d % 1ms == duration::zero(), "timeout header not whole milliseconds", text);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*d).count();
  require(qos::detail::parse_timeout_header(std::to_string(ms) + "ms") == d,
          "timeout header does not read back", text);
  require(qos::detail::parse_timeout_header(std::to_string(ms)) == d,
          "a bare number is not milliseconds", text);
}

// grpc-timeout: written back with the coarsest unit that holds it exactly in 8 digits, it
// reads the same; below the cap, "<n>m" means what the deadline header's "<n>" means.
void grpc_timeout(std::string_view text) {
  const std::optional<duration> d = qos::detail::parse_grpc_timeout(text);
  if (!d) return;
  require(in_budget(*d), "grpc-timeout out of [0, max_client_budget]", text);
  struct unit {
    duration size;
    char letter;
  };
  constexpr unit units[] = {{1h, 'H'}, {1min, 'M'}, {1s, 'S'}, {1ms, 'm'}, {1us, 'u'}, {1ns, 'n'}};
  for (const unit& u : units) {
    if (*d % u.size != duration::zero() || *d / u.size > 99'999'999) continue;
    const std::string again = std::to_string(*d / u.size) + u.letter;
    require(qos::detail::parse_grpc_timeout(again) == d, "grpc-timeout does not read back", text);
    break;
  }
  if (text.size() >= 2 && text.back() == 'm') {
    require(qos::detail::parse_timeout_header(text.substr(0, text.size() - 1)) == d,
            "grpc-timeout 'm' disagrees with the deadline header's milliseconds", text);
  }
}

// The raw priority: a level in [0, max_priority] whose decimal form reads back as itself.
void priority_level(std::string_view text) {
  const auto level = qos::detail::parse_priority_level(text);
  if (!level) return;
  require(*level <= qos::max_priority, "priority above max_priority", text);
  require(qos::detail::parse_priority_level(std::to_string(*level)) == level,
          "priority does not read back", text);
  require(!text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos,
          "priority accepted a non-digit", text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  timeout_header(text);
  grpc_timeout(text);
  priority_level(text);
  return 0;
}

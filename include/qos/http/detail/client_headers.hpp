// Parsers of the request headers a client uses to ask something of the gate: its deadline
// (a duration header, gRPC's grpc-timeout) and a raw priority level. Pure functions on the
// header's text: malformed input gives nullopt, never an exception, and no value overflows.
#pragma once

#include <chrono>
#include <optional>
#include <string_view>

#include "qos/core/clock.hpp"
#include "qos/core/priority.hpp"

namespace qos::detail {

// A client budget longer than this is read as this: far past any wait the gate allows, and
// `now + budget` stays representable.
inline constexpr std::chrono::hours max_client_budget{24 * 365};

// "800ms", "2s", "1.5s", a bare number of milliseconds (the config's duration syntax).
std::optional<duration> parse_timeout_header(std::string_view text) noexcept;

// gRPC's timeout: 1 to 8 digits and a unit (H M S m u n).
std::optional<duration> parse_grpc_timeout(std::string_view text) noexcept;

// A decimal level in [0, max_priority], nothing else.
std::optional<priority> parse_priority_level(std::string_view text) noexcept;

}  // namespace qos::detail

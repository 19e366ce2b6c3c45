// Priority levels: 0 is the lowest; a higher number is served first. Plain value type.
#pragma once

#include <cstdint>

namespace qos {

using priority = std::uint8_t;

// Levels are 0..max_priority; the limiter keeps one FIFO per level.
inline constexpr priority max_priority = 15;
inline constexpr int priority_levels = max_priority + 1;

}  // namespace qos

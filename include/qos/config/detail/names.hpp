// The words of the config's enumerations, one table per enumeration: the loader reads them,
// the effective-config printer and the reload plan write them, so a word cannot differ
// between reading and writing.
#pragma once

#include <string_view>

#include "qos/config/config.hpp"

namespace qos::config::detail {

template <typename T>
struct named {
  std::string_view name;
  T value;
};

inline constexpr named<drain_mode> drain_modes[] = {{"shed", drain_mode::shed},
                                                    {"serve", drain_mode::serve}};
inline constexpr named<log_format> log_formats[] = {{"text", log_format::text},
                                                    {"json", log_format::json}};
inline constexpr named<log_sink> log_sinks[] = {{"stderr", log_sink::standard_error},
                                                {"stdout", log_sink::standard_output}};
inline constexpr named<limit_kind> limit_algorithms[] = {{"fixed", limit_kind::fixed},
                                                         {"aimd", limit_kind::aimd},
                                                         {"gradient2", limit_kind::gradient2},
                                                         {"vegas", limit_kind::vegas}};
inline constexpr named<queue_discipline> queue_disciplines[] = {
    {"fifo", queue_discipline::fifo},
    {"codel", queue_discipline::codel},
    {"adaptive_lifo", queue_discipline::adaptive_lifo}};
inline constexpr named<route_mode> route_modes[] = {{"guard", route_mode::guard},
                                                    {"accept", route_mode::accept}};
inline constexpr named<job_store_kind> job_stores[] = {{"sqlite", job_store_kind::sqlite},
                                                       {"postgres", job_store_kind::postgres}};
inline constexpr named<sqlite_sync> sqlite_syncs[] = {{"full", sqlite_sync::full},
                                                      {"normal", sqlite_sync::normal}};

template <typename T, std::size_t N>
constexpr std::string_view name_of(const named<T> (&choices)[N], T value) {
  for (const auto& choice : choices) {
    if (choice.value == value) return choice.name;
  }
  return "?";
}

constexpr std::string_view name(drain_mode v) {
  return name_of(drain_modes, v);
}
constexpr std::string_view name(log_format v) {
  return name_of(log_formats, v);
}
constexpr std::string_view name(log_sink v) {
  return name_of(log_sinks, v);
}
constexpr std::string_view name(limit_kind v) {
  return name_of(limit_algorithms, v);
}
constexpr std::string_view name(queue_discipline v) {
  return name_of(queue_disciplines, v);
}
constexpr std::string_view name(route_mode v) {
  return name_of(route_modes, v);
}
constexpr std::string_view name(job_store_kind v) {
  return name_of(job_stores, v);
}
constexpr std::string_view name(sqlite_sync v) {
  return name_of(sqlite_syncs, v);
}

}  // namespace qos::config::detail

// Header lists as one blob, the form both job stores keep them in (a BLOB in SQLite, a bytea in
// PostgreSQL): for each pair, a 4-byte little-endian length and the bytes of the name, then of
// the value. Any bytes round-trip (HTTP does not promise UTF-8).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qos::jobs::detail {

std::string encode_headers(const std::vector<std::pair<std::string, std::string>>& headers);
// Throws store_error for a blob that is not one encode_headers made (never reads past it).
std::vector<std::pair<std::string, std::string>> decode_headers(std::string_view blob);

}  // namespace qos::jobs::detail

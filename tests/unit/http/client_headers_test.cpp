// The client header parsers: malformed input is absent, never an exception; nothing overflows.
#include "qos/http/detail/client_headers.hpp"

#include <gtest/gtest.h>

namespace qos::detail {
namespace {

using namespace std::chrono_literals;

TEST(client_headers_test, grpc_timeout_reads_every_unit) {
  EXPECT_EQ(parse_grpc_timeout("2H"), std::optional<duration>(2h));
  EXPECT_EQ(parse_grpc_timeout("3M"), std::optional<duration>(3min));
  EXPECT_EQ(parse_grpc_timeout("4S"), std::optional<duration>(4s));
  EXPECT_EQ(parse_grpc_timeout("100m"), std::optional<duration>(100ms));
  EXPECT_EQ(parse_grpc_timeout("7u"), std::optional<duration>(7us));
  EXPECT_EQ(parse_grpc_timeout("9n"), std::optional<duration>(9ns));
}

TEST(client_headers_test, grpc_timeout_saturates_instead_of_overflowing) {
  const duration far = max_client_budget;
  EXPECT_EQ(parse_grpc_timeout("99999999H"), std::optional<duration>(far));
  EXPECT_EQ(parse_grpc_timeout("99999999M"), std::optional<duration>(far));
  EXPECT_EQ(parse_grpc_timeout("99999999S"), std::optional<duration>(far));
  EXPECT_EQ(parse_grpc_timeout("99999999m"), std::optional<duration>(99999999ms));
  // And `now + budget` stays representable.
  EXPECT_GT(clock::now() + *parse_grpc_timeout("99999999H"), clock::now());
}

TEST(client_headers_test, grpc_timeout_refuses_malformed_values) {
  for (const char* bad : {"", "H", "1", "123456789S", "1x", "-1S", "1.5S", " 1S", "1S "}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(parse_grpc_timeout(bad), std::nullopt);
  }
}

TEST(client_headers_test, timeout_header_reads_durations_and_saturates) {
  EXPECT_EQ(parse_timeout_header("800ms"), std::optional<duration>(800ms));
  EXPECT_EQ(parse_timeout_header("2"), std::optional<duration>(2ms));
  // Longer than a year: a year. Beyond what nanoseconds hold: refused, as if not sent.
  EXPECT_EQ(parse_timeout_header("100000h"), std::optional<duration>(max_client_budget));
  EXPECT_EQ(parse_timeout_header("9223372036854775807ms"), std::nullopt);
  EXPECT_EQ(parse_timeout_header("-5ms"), std::nullopt);
  EXPECT_EQ(parse_timeout_header("soon"), std::nullopt);
}

TEST(client_headers_test, priority_level_is_a_plain_decimal_in_range) {
  EXPECT_EQ(parse_priority_level("0"), std::optional<priority>(0));
  EXPECT_EQ(parse_priority_level("15"), std::optional<priority>(15));
  // A sign is not a digit, not even in front of a zero.
  for (const char* bad :
       {"16", "-1", "-0", "-00", "+0", "+1", "", "-", "3 ", " 3", "0x3", "99999999999999999999"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(parse_priority_level(bad), std::nullopt);
  }
}

}  // namespace
}  // namespace qos::detail

namespace qos::detail {
namespace {

// Found by tests/fuzz/headers_fuzz under UBSan: the whole milliseconds fit in int64
// nanoseconds, the fraction added to them overflowed.
TEST(client_headers_test, a_fraction_past_the_range_is_refused_not_overflowed) {
  EXPECT_EQ(parse_timeout_header("9223372036854.9"), std::nullopt);
  EXPECT_EQ(parse_timeout_header("9223372036.9s"), std::nullopt);
  EXPECT_EQ(parse_timeout_header("9223372036.8s"), std::optional<duration>(max_client_budget));
}

}  // namespace
}  // namespace qos::detail

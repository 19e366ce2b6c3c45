// The retry schedule and job ids shared by the stores: pure functions, no store.
#include "qos/jobs/backoff.hpp"

#include <gtest/gtest.h>

#include <set>

#include "qos/jobs/job_id.hpp"

namespace qos::jobs {
namespace {

using std::chrono::milliseconds;

constexpr retry_policy policy{
    .max_attempts = 10, .base = milliseconds(1000), .cap = milliseconds(5000), .jitter = 0.2};

TEST(retry_delay, doubles_from_base_up_to_the_cap_without_jitter_at_the_midpoint) {
  EXPECT_EQ(retry_delay(policy, 1, 0.5), milliseconds(1000));
  EXPECT_EQ(retry_delay(policy, 2, 0.5), milliseconds(2000));
  EXPECT_EQ(retry_delay(policy, 3, 0.5), milliseconds(4000));
  EXPECT_EQ(retry_delay(policy, 4, 0.5), milliseconds(5000));
  EXPECT_EQ(retry_delay(policy, 5, 0.5), milliseconds(5000));
}

TEST(retry_delay, jitter_spreads_plus_or_minus_its_fraction) {
  EXPECT_EQ(retry_delay(policy, 1, 0.0), milliseconds(800));
  EXPECT_EQ(retry_delay(policy, 1, 1.0), milliseconds(1200));
  EXPECT_EQ(retry_delay(policy, 4, 0.0), milliseconds(4000));  // jitter applies to the cap too
  EXPECT_EQ(retry_delay(policy, 4, 0.75), milliseconds(5500));
}

TEST(retry_delay, a_huge_attempt_count_saturates_at_the_cap) {
  EXPECT_EQ(retry_delay(policy, 1000000, 0.5), milliseconds(5000));
  EXPECT_EQ(retry_delay(policy, 0, 0.5), milliseconds(1000));  // as the first
}

TEST(retry_delay, no_jitter_and_no_base_are_allowed) {
  EXPECT_EQ(retry_delay({.base = milliseconds(100), .jitter = 0.0}, 2, 0.99), milliseconds(200));
  EXPECT_EQ(retry_delay({.base = milliseconds(0)}, 3, 0.3), milliseconds(0));
}

TEST(default_unit_random, draws_in_the_unit_interval_and_varies) {
  auto draw = default_unit_random();
  std::set<double> seen;
  for (int i = 0; i < 1000; ++i) {
    const double u = draw();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    seen.insert(u);
  }
  EXPECT_GT(seen.size(), 990U);
}

TEST(job_id, is_32_lowercase_hex_digits_and_unique) {
  std::set<job_id> ids;
  for (int i = 0; i < 10000; ++i) {
    job_id id = new_job_id();
    ASSERT_TRUE(is_job_id(id)) << id;
    ids.insert(std::move(id));
  }
  EXPECT_EQ(ids.size(), 10000U);
}

TEST(job_id, the_shape_check_refuses_anything_else) {
  EXPECT_FALSE(is_job_id(""));
  EXPECT_FALSE(is_job_id("0123456789abcdef0123456789abcde"));    // 31
  EXPECT_FALSE(is_job_id("0123456789abcdef0123456789abcdef0"));  // 33
  EXPECT_FALSE(is_job_id("0123456789ABCDEF0123456789abcdef"));   // upper case
  EXPECT_FALSE(is_job_id("../../../../etc/passwd/xxxxxxxxxxx"));
  EXPECT_TRUE(is_job_id("0123456789abcdef0123456789abcdef"));
}

}  // namespace
}  // namespace qos::jobs

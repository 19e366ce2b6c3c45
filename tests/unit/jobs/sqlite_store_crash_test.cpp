// Crash safety of the SQLite job store with real processes (tests/unit/jobs/
// sqlite_store_child.cpp), no network: a writer killed -9 mid-stream loses no job whose id it
// printed (no 202 without a commit); a consumer killed -9 holding a lease has its job re-run
// after the lease with attempts + 1 and its token void; a failing disk (writes past a file size
// limit) makes enqueue unavailable with nothing stored; a live owner's file is refused.
#include <gtest/gtest.h>

#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "job_test_support.hpp"
#include "qos/jobs/job_id.hpp"
#include "qos/jobs/sqlite_store.hpp"
#include "support/line_process.hpp"

namespace qos::jobs {
namespace {

using namespace std::chrono_literals;
using kind = enqueue_result::kind;
using test::status_only;

// The child process (sqlite_store_child) in `mode` on the database at `path`.
struct child : qos::test::line_process {
  child(const std::string& mode, const std::string& path)
      : line_process(SQLITE_STORE_CHILD, {mode, path}) {}
};

TEST(sqlite_store_crash, a_writer_killed_mid_stream_loses_no_acknowledged_job) {
  test::temp_dir dir;
  const std::string path = dir.file("jobs.db");
  std::vector<job_id> acknowledged;
  {
    child writer("enqueue", path);
    while (acknowledged.size() < 300) {
      auto l = writer.line();
      ASSERT_TRUE(l) << "the writer stopped after " << acknowledged.size() << " jobs";
      ASSERT_TRUE(is_job_id(*l)) << *l;
      acknowledged.push_back(*l);
    }
    ASSERT_TRUE(writer.kill9());  // while its four threads have batches in flight
    // Whatever it printed before dying was acknowledged too.
    while (auto l = writer.line()) {
      if (is_job_id(*l)) acknowledged.push_back(*l);
    }
  }
  sqlite_store store({.path = path});  // the dead owner's lock is gone with it
  std::size_t missing = 0;
  for (const auto& id : acknowledged) {
    const auto s = store.status(id);
    if (!s || s->state != job_state::queued) ++missing;
  }
  EXPECT_EQ(missing, 0U) << "of " << acknowledged.size() << " acknowledged jobs";
  EXPECT_GE(store.depth("orders"), acknowledged.size());
}

TEST(sqlite_store_crash, a_consumer_killed_holding_a_lease_has_its_job_rerun_after_the_lease) {
  test::temp_dir dir;
  const std::string path = dir.file("jobs.db");
  job_id id;
  {
    sqlite_store store({.path = path});
    job_request job = test::order("pay me");
    const auto r = store.enqueue(job, {});
    ASSERT_EQ(r.result, kind::created) << r.error;
    id = r.id;
  }
  std::uint64_t dead_fence = 0;
  {
    child consumer("claim", path);
    const auto l = consumer.line();
    ASSERT_TRUE(l);
    std::istringstream in(*l);
    std::string claimed_id;
    int attempt = 0;
    in >> claimed_id >> dead_fence >> attempt;
    ASSERT_EQ(claimed_id, id) << *l;
    ASSERT_EQ(attempt, 1);
    // While the consumer lives it owns the file: this process is refused.
    EXPECT_THROW(sqlite_store({.path = path}), store_error);
    ASSERT_TRUE(consumer.kill9());
  }
  // The child leased for 60 s of real time; this store's clock starts 61 s later.
  test::manual_clock clock(wall_clock::now() + 61s);
  sqlite_store store({.path = path, .now = clock.fn()});
  auto s = store.status(id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::running);  // stuck until someone requeues it
  EXPECT_EQ(store.requeue_expired({}), 1U);
  const auto rerun = store.claim("db", 1, 1, 30s);
  ASSERT_EQ(rerun.size(), 1U);
  EXPECT_EQ(rerun[0].id, id);
  EXPECT_EQ(rerun[0].attempt, 2);
  EXPECT_GT(rerun[0].fence, dead_fence);
  EXPECT_EQ(rerun[0].request.body, "pay me");
  EXPECT_FALSE(store.complete(id, dead_fence, status_only(200)));
  ASSERT_TRUE(store.complete(id, rerun[0].fence, status_only(204)));
  s = store.status(id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::succeeded);
  EXPECT_EQ(s->attempts, 2);
}

TEST(sqlite_store_crash, a_failing_disk_makes_enqueue_unavailable_with_nothing_stored) {
  test::temp_dir dir;
  const std::string path = dir.file("jobs.db");
  std::string first_id;
  {
    child writer("efbig", path);
    const auto first = writer.line();
    ASSERT_TRUE(first);
    std::istringstream in(*first);
    std::string word, result;
    in >> word >> result >> first_id;
    ASSERT_EQ(word + " " + result, "first created") << *first;
    int unavailable = 0;
    for (int i = 0; i < 8; ++i) {
      const auto l = writer.line();
      ASSERT_TRUE(l);
      EXPECT_EQ(*l, "unavailable");
      unavailable += *l == "unavailable" ? 1 : 0;
    }
    EXPECT_EQ(unavailable, 8);
    EXPECT_EQ(writer.wait_exit(), 0);
  }
  sqlite_store store({.path = path});
  EXPECT_EQ(store.depth("orders"), 1U);  // the first job only
  const auto s = store.status(first_id);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->state, job_state::queued);
  // None of the refused keys was kept: each makes a new job now.
  for (int t = 1; t <= 8; ++t) {
    job_request job = test::order("later", "k" + std::to_string(t));
    job.payload_hash = "hash:later";
    EXPECT_EQ(store.enqueue(job, {}).result, kind::created);
  }
}

}  // namespace
}  // namespace qos::jobs
